"""README.md and docs/ stay true: the methods table is the registry's, every recipe command parses, the README's
test command is CI's."""

import shlex
import subprocess

import pytest

from hf_distill.methods import DistillationObjective
from hf_distill.methods.table import markdown
from hf_distill.run.config import parse_args
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
#: the README and every page of docs/ (whose commands are tested as the README's)
PAGES = {"README.md": README} | {
    f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md"))
}


def test_methods_table_is_generated_from_the_registry():
    start = README.index("<!-- methods-table:start -->\n") + len("<!-- methods-table:start -->\n")
    end = README.index("<!-- methods-table:end -->")
    assert README[start:end] == markdown(), "README is stale: run `python scripts/make_docs.py`"


def _distill_commands(text: str) -> list[str]:
    """Every ``python recipes/distill.py`` command of a page, its backslash-continued lines joined."""
    out: list[str] = []
    lines = iter(ln.strip() for ln in text.splitlines())
    for ln in lines:
        if ln.startswith("python recipes/distill.py"):
            while ln.endswith("\\"):
                ln = ln[:-1] + " " + next(lines, "")
            out.append(ln)
    return out


def test_recipe_commands_in_the_readme_parse():
    assert len(_distill_commands(README)) >= 5  # the quick start
    cmds = [(page, cmd) for page, text in PAGES.items() for cmd in _distill_commands(text)]
    for page, cmd in cmds:
        argv = shlex.split(cmd.split("#")[0])[2:]
        # a --config names a committed file or a CIFAR-100 benchmark config built in memory; parse_args refuses
        # any other path
        try:
            model_args, data_args, distill_args, training_args, kwargs = parse_args(argv)
        except ValueError as e:
            pytest.fail(f"{page}: {cmd}: {e}")
        DistillationObjective.from_names(
            distill_args.method, distill_args.weights(), distill_args.ce_weight, kwargs
        )


def test_ci_runs_the_readme_test_command():
    marker = "<!-- ci-test-command -->"
    lines = README[README.index(marker) :].splitlines()
    assert lines[1].startswith("```") and "pytest" in lines[2]
    extracted = subprocess.run(
        ["awk", "/<!-- ci-test-command -->/{getline; getline; print; exit}", str(REPO / "README.md")],
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert extracted == lines[2]
    assert "README.md" in (REPO / ".ci" / "run").read_text()

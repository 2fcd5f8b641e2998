"""README.md stays true: its methods table is the registry's, its commands parse, its test command is CI's."""

import shlex
import subprocess

from hf_distill.config import parse_args
from hf_distill.losses import DistillationObjective
from hf_distill.losses.table import markdown
from tests.conftest import REPO

README = (REPO / "README.md").read_text()


def test_methods_table_is_generated_from_the_registry():
    start = README.index("<!-- methods-table:start -->\n") + len("<!-- methods-table:start -->\n")
    end = README.index("<!-- methods-table:end -->")
    assert README[start:end] == markdown(), (
        "README is stale: paste `python -m hf_distill.losses.table` into it"
    )


def test_recipe_commands_in_the_readme_parse():
    cmds = [ln.strip() for ln in README.splitlines() if ln.strip().startswith("python recipes/distill.py")]
    assert len(cmds) >= 5
    for cmd in cmds:
        argv = shlex.split(cmd.split("#")[0])[2:]
        if "--config" in argv:
            assert (REPO / argv[argv.index("--config") + 1]).exists(), cmd
        model_args, data_args, distill_args, training_args, kwargs = parse_args(argv)
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

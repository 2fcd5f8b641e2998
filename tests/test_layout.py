"""The package's shape: models never import losses, the shared types live in one neutral module, no library file is
long without saying why, and ``import hf_distill`` makes the zoo available to timm and the Auto classes."""

import ast
import subprocess
import sys

from tests.conftest import REPO, repository_changes

PACKAGE = REPO / "hf_distill"


def _imported_modules(path) -> list[str]:
    """Absolute names of every module a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [base] + [f"{base}.{a.name}" for a in node.names]
    return out


def test_the_import_scanner_sees_relative_and_absolute_imports(tmp_path):
    probe = PACKAGE / "models" / "taps.py"
    assert "hf_distill.features" in _imported_modules(probe)  # `from ..features import ...`


def test_models_never_import_losses():
    offenders = {
        str(p.relative_to(REPO)): m
        for p in sorted((PACKAGE / "models").rglob("*.py"))
        for m in _imported_modules(p)
        if m == "hf_distill.losses" or m.startswith("hf_distill.losses.")
    }
    assert not offenders, offenders


MAX_LINES = 500


def _first_paragraph(path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return " ".join(doc.split("\n\n")[0].split())


def test_a_long_library_file_states_why_in_its_first_paragraph():
    """A file of the package over :data:`MAX_LINES` lines says so ("longer than 500 lines because ...") in the first
    paragraph of its module docstring, so a long file is a decision, not an accident."""
    unexplained = {
        str(p.relative_to(REPO)): n
        for p in sorted(PACKAGE.rglob("*.py"))
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
        and f"longer than {MAX_LINES} lines because" not in _first_paragraph(p)
    }
    assert not unexplained, f"files over {MAX_LINES} lines without a reason at their top: {unexplained}"


def test_the_length_rule_reads_only_the_first_paragraph(tmp_path):
    f = tmp_path / "long.py"
    f.write_text('"""Short summary.\n\nIt is longer than 500 lines because reasons."""\n')
    assert "because" not in _first_paragraph(f)
    f.write_text('"""Short summary, longer than 500 lines because it is one class.\n\nMore."""\n')
    assert f"longer than {MAX_LINES} lines because" in _first_paragraph(f)


def test_shared_types_have_one_home_and_the_old_imports_still_work():
    from hf_distill import features
    from hf_distill.losses import FeatureNeeds, Features, FeatureSpec
    from hf_distill.losses.base import Features as BaseFeatures
    from hf_distill.models import taps

    assert (Features, FeatureSpec, FeatureNeeds) == (
        features.Features,
        features.FeatureSpec,
        features.FeatureNeeds,
    )
    assert (
        BaseFeatures is features.Features and taps.FeatureNeeds is features.FeatureNeeds
    )  # one request type
    assert not hasattr(taps, "TapRequest")  # no second name for it


def test_import_hf_distill_registers_the_zoo_with_timm_and_the_auto_classes():
    code = (
        "import sys, hf_distill, timm\n"
        "from transformers import AutoConfig, AutoModelForImageClassification\n"
        "m = timm.create_model('cifar_resnet20', num_classes=10)\n"
        "cfg = AutoConfig.for_model('hf_distill_cifar', architecture='resnet20', num_labels=10)\n"
        "hf = AutoModelForImageClassification.from_config(cfg)\n"
        "from hf_distill.models.cifar_common import CifarBackbone\n"
        "print(isinstance(m, CifarBackbone), type(hf).__name__, 'hf_distill.models.timm_cifar' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "CifarForImageClassification", "True"]


def test_the_repository_guard_sees_new_files_but_not_the_runs_own(tmp_path):
    """The session guard of ``tests/conftest.py``: a file written into a checkout is reported (ignored or not),
    bytecode and caches are not, and a tree without git is no error."""
    assert repository_changes(tmp_path) is None  # not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("outputs/\n")
    before = repository_changes(tmp_path)
    for run_file in ("__pycache__/m.pyc", ".pytest_cache/v", "pkg/__pycache__/m.pyc", ".venv-ci/bin/python"):
        (tmp_path / run_file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / run_file).write_text("x")
    assert repository_changes(tmp_path) == before
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "model.safetensors").write_text("x")
    (tmp_path / "card.md").write_text("x")
    assert repository_changes(tmp_path) - before == {"!! outputs/model.safetensors", "?? card.md"}

"""--help shows the product: our arguments first and grouped, the methods listed, and each method's hyperparameters
with --help_method NAME (or --method NAME --help)."""

import subprocess
import sys

from hf_distill.methods import METHODS, PRESETS
from hf_distill.run.method_help import documented_arguments, method_help
from tests.conftest import REPO


def _recipe(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "recipes" / "distill.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_groups_our_arguments_first_and_lists_every_method():
    p = _recipe("--help")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    groups = [out.index(t) for t in ("teacher and student (hf_distill):", "data (hf_distill):",
                                     "distillation (hf_distill):", "training (transformers.TrainingArguments")]  # fmt: skip
    assert groups == sorted(groups)
    start = out.index("  --method METHOD")
    listed = out[start : out.index("  --method_weights", start)]
    assert all(name in " ".join(listed.split()) for name in [*METHODS, *PRESETS])


def test_help_method_prints_each_hyperparameter_with_its_default_and_meaning():
    p = _recipe("--help_method", "dkd")
    assert p.returncode == 0, p.stderr
    assert "--dkd-beta (default 8.0): weight of NCKD." in p.stdout
    assert "--dkd-temperature (default None)" in p.stdout
    both = _recipe("--method", "dkd", "--help").stdout
    assert "--dkd-beta (default 8.0)" in both and "training (transformers.TrainingArguments" in both


def test_help_method_of_an_unknown_name_is_one_line():
    p = _recipe("--help_method", "kdd")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error: Unknown distillation method 'kdd'")


def test_every_method_documents_every_hyperparameter():
    """The meanings come from each method's ``Args:`` docstring: a hyperparameter without one is a gap in --help."""
    missing = {
        name: sorted(set(cls.hyperparameters()) - set(documented_arguments(cls)))
        for name, cls in METHODS.items()
        if set(cls.hyperparameters()) - set(documented_arguments(cls))
    }
    assert not missing, missing
    assert "crd (weight 0.8)" in method_help("crd_kd")

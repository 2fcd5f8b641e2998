"""The CIFAR-100 benchmark configs: generated (never hand-edited), and every one parses into a valid run."""

import subprocess
import sys

import pytest

from hf_distill.methods import DistillationObjective
from hf_distill.run.config import parse_args
from tests.conftest import REPO

CONFIGS = sorted((REPO / "recipes" / "configs" / "cifar100").rglob("*.yaml"))


def test_committed_configs_equal_the_generator_output():
    p = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "configs" / "make_cifar100_configs.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_every_method_and_preset_has_configs():
    from hf_distill.methods import METHODS, PRESETS
    from hf_distill.training.mutual import MUTUAL

    folders = {c.parent.name for c in CONFIGS}
    # mutual learning has no teacher->student pair to reproduce
    assert (set(METHODS) | set(PRESETS)) - MUTUAL | {"none", "teachers"} <= folders
    assert not MUTUAL & folders
    assert len(CONFIGS) > 200


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_parses_into_a_valid_objective(path):
    model_args, data_args, distill_args, training_args, kwargs = parse_args(["--config", str(path)])
    assert data_args.dataset == "uoft-cs/cifar100" and data_args.label_column == "fine_label"
    assert training_args.num_train_epochs == 240 and distill_args.milestones() == [150, 180, 210]
    assert training_args.weight_decay == 5e-4 and training_args.per_device_train_batch_size == 64
    small = any(s in model_args.student for s in ("mobilenet", "shufflenet"))
    assert training_args.learning_rate == (0.01 if small else 0.05)
    objective = DistillationObjective.from_names(
        distill_args.method, distill_args.weights(), distill_args.ce_weight, kwargs
    )
    assert (model_args.teacher is None) == (distill_args.method == "none") == (not objective.needs_teacher)

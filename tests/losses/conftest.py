"""Module-scoped real-data fixtures of the method tests (built on the session's ``subset_train``)."""

import subprocess

import pytest

from hf_distill.data import collate
from tests.conftest import REPO
from tests.losses._common import cifar_batch, train_split

_CACHES = ("__pycache__", ".pytest_cache", ".ruff_cache")


def _repository_changes() -> set[str]:
    """Files of the repository that git sees as new or changed (caches aside); empty outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {line for line in out.splitlines() if not any(c in line for c in _CACHES)}


@pytest.fixture(scope="session", autouse=True)
def repository_left_unchanged():
    """The method tests write only under ``tmp_path``: nothing appears or changes in the repository tree."""
    before = _repository_changes()
    yield
    written = sorted(_repository_changes() - before)
    assert not written, f"tests/losses wrote into the repository: {written}"


@pytest.fixture(scope="module")
def batch(subset_train):
    """The first 16 training rows, prepared without augmentation."""
    return cifar_batch(subset_train, 16)


@pytest.fixture(scope="module")
def tiny(subset_train):
    """The first 64 training rows, prepared for training (a dataset for short trainer runs)."""
    return train_split(subset_train, 64)


@pytest.fixture(scope="module")
def train_batch(tiny):
    """The first 16 rows of :func:`tiny`, with the training augmentation of epoch 0."""
    return collate([tiny.dataset[i] for i in range(16)])

"""Shared fixtures: paths of the committed assets and small real datasets."""

from __future__ import annotations

import os
import random
import subprocess
import zlib
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
SUBSET = ASSETS / "cifar10-subset"
TEACHER_DIR = ASSETS / "teachers" / "cifar10-resnet56"  # the akamaster weights, converted unchanged
JPEG_TEACHER_DIR = (
    ASSETS / "teachers" / "cifar10-resnet56-jpeg"
)  # the default teacher: adapted to the JPEG images
STUDENT_INIT_DIR = ASSETS / "students" / "cifar10-resnet20"  # the akamaster resnet20, converted unchanged
SHARED = REPO.parent / "shared"

#: what a test run itself creates in the tree (bytecode, pytest's and ruff's caches, CI's environment)
_RUN_FILES = ("__pycache__", ".pytest_cache", ".ruff_cache", ".venv-ci")


def repository_changes(repo: Path = REPO) -> set[str] | None:
    """The entries ``git status`` reports in ``repo``: changed, untracked and ignored (the run's own files aside),
    or None when ``repo`` is not a git checkout or git is missing."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all", "--ignored"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line for line in out.splitlines() if not set(line[3:].split("/")) & set(_RUN_FILES)}


#: the marks of the tests that take tens of seconds (end-to-end runs, multi-process launches)
LONG_MARKS = ("slow", "multiprocess")


def long_tests_first(items: list) -> list:
    """``items`` with the long tests (marked with one of LONG_MARKS) moved to the front, each group in its own order.

    With ``-n 2`` (the README's test command) pytest-xdist hands tests out in collection order; a long test collected
    last leaves one core idle for its whole run (measured: the 195 s noisy-labels run alone at the end of a 15:45
    suite). Longest first is the classic fix for that tail; the tests do not depend on their order (each reseeds)."""
    return sorted(items, key=lambda item: not any(item.get_closest_marker(m) for m in LONG_MARKS))


def pytest_collection_modifyitems(config, items):
    items[:] = long_tests_first(items)


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each of xdist's workers is one of the busy processes docs/speed_threads.md measures: two workers with torch's
    # default of one thread per core each ask for twice the cores there are, and OpenMP's waiting threads then spin
    # against each other. One intra-op thread per worker; the processes the tests launch set their own.
    import torch

    torch.set_num_threads(1)


#: where every test's own randomness starts (torch, ``random``, numpy), whatever ran before it
TEST_SEED = 0


def seed_everything(seed: int) -> None:
    """Seed torch's, Python's and numpy's global generators."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):
    """Seed before every fixture is built, from the fixture's name: what a module- or session-scoped fixture
    draws (random weights, augmentations) is then the same whichever test happens to build it first, in any order."""
    seed_everything(zlib.crc32(fixturedef.argname.encode()))
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Seed right before every test body (after its fixtures): a test's random draws do not depend on the tests
    that ran before it. (pytest-randomly, when installed, then reseeds ``random`` and numpy from its own seed, per
    test too; torch keeps this seed.)"""
    seed_everything(TEST_SEED)
    return (yield)


@pytest.fixture(scope="session", autouse=True)
def teacher_cache_key(tmp_path_factory):
    """The teacher cache's signing key of the session, in a temporary folder (inherited by the runs the tests launch),
    never the user's own ``~/.cache/hf_distill/cache.key``."""
    from hf_distill.training.teacher_cache_shards import KEY_ENV

    before = os.environ.get(KEY_ENV)
    path = tmp_path_factory.mktemp("teacher-cache-key") / "cache.key"
    os.environ[KEY_ENV] = str(path)
    yield path
    if before is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = before


@pytest.fixture(scope="session", autouse=True)
def repository_left_unchanged():
    """No test writes into the repository tree (tests write under ``tmp_path``): after the session, nothing new or
    changed appears in ``git status`` that was not there before it. Skipped outside a git checkout."""
    before = repository_changes()
    yield
    after = repository_changes()
    if before is not None and after is not None:
        written = sorted(after - before)
        assert not written, f"the tests wrote into the repository: {written}"


@pytest.fixture(scope="module")
def probe_methods():
    """Register the test-only methods ``test_probe`` / ``test_init_probe`` for the module of the tests that use them
    (module-scoped fixtures build trainers with them too); the library never registers them."""
    from tests.helpers import PROBES, registered_methods

    with registered_methods(PROBES):
        yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: small nets on a shared CPU run several times faster than with two threads
    waiting on each other."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def subset_train():
    from hf_distill.data.datasets import load_image_dataset

    return load_image_dataset(str(SUBSET), "train")


@pytest.fixture(scope="session")
def subset_test():
    from hf_distill.data.datasets import load_image_dataset

    return load_image_dataset(str(SUBSET), "test")

"""Shared fixtures: paths of the committed assets and small real datasets."""

from __future__ import annotations

import os
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


@pytest.fixture
def probe_methods():
    """Register the test-only methods ``test_probe`` / ``test_init_probe`` for one test (never in the library)."""
    from tests.helpers import PROBES, registered_methods

    with registered_methods(PROBES):
        yield


@pytest.fixture(scope="session")
def subset_train():
    from hf_distill.data import load_image_dataset

    return load_image_dataset(str(SUBSET), "train")


@pytest.fixture(scope="session")
def subset_test():
    from hf_distill.data import load_image_dataset

    return load_image_dataset(str(SUBSET), "test")

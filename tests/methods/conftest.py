"""Module-scoped real-data fixtures of the method tests (built on the session's ``subset_train``)."""

import pytest

from hf_distill.data.datasets import collate
from tests.methods._common import cifar_batch, train_split


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

"""Fixtures of the model-zoo tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def images(request) -> torch.Tensor:
    """Seeded random 32x32 RGB images, ``IMAGES_BATCH`` of them (a module-level constant of the test module,
    default 2)."""
    batch = getattr(request.module, "IMAGES_BATCH", 2)
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))

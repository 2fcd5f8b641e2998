"""Process lifetime under a multi-process launch.

A process that ends with its gloo process group still alive can abort at interpreter shutdown: gloo's worker
threads still hold tensors when Python tears down, and the process dies with ``terminate called without an active
exception`` (SIGABRT) after training finished and every file was written (seen in a 2-process CPU run; the same
failure is discussed upstream, pytorch/pytorch#179291). Destroying the group while the interpreter is still whole
avoids it, so every process that builds a trainer registers that once.
"""

from __future__ import annotations

import atexit

import torch.distributed as dist

_registered = False


def destroy_process_group_if_alive() -> None:
    """Destroy the default process group if one is initialized (idempotent; a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def destroy_process_group_at_exit() -> None:
    """Register :func:`destroy_process_group_if_alive` to run at interpreter exit, once per process."""
    global _registered
    if not _registered:
        atexit.register(destroy_process_group_if_alive)
        _registered = True


__all__ = ["destroy_process_group_at_exit", "destroy_process_group_if_alive"]

"""The process group is destroyed before interpreter shutdown (a live gloo group can abort the process there)."""

import torch.distributed as dist

from hf_distill.training import process_group as processes


def test_destroy_process_group_if_alive_destroys_the_group_and_is_idempotent(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    processes.destroy_process_group_if_alive()
    assert not dist.is_initialized()
    processes.destroy_process_group_if_alive()  # nothing left: a no-op, not an error


def test_the_teardown_is_registered_once_per_process(monkeypatch):
    registered = []
    monkeypatch.setattr(processes, "_registered", False)
    monkeypatch.setattr(processes.atexit, "register", registered.append)
    processes.destroy_process_group_at_exit()
    processes.destroy_process_group_at_exit()
    assert registered == [processes.destroy_process_group_if_alive]

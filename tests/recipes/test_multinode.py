"""Multi-node, rehearsed on one machine: two `accelerate launch` "machines" on localhost (one process each, gloo,
rendezvous at 127.0.0.1) train the same weights as one process with the same global batch (docs/multi_node.md), from
a map-style split and from a stream (docs/streaming.md)."""

import os
import shutil
import socket
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from tests.conftest import REPO
from tests.data.test_streaming import write_shards
from tests.training.test_scale import _run_args, _single_process

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_machines(script_args: list[str], out, timeout: int = 600) -> None:
    """Start machine 0 and machine 1 as two `accelerate launch` commands, as on two hosts, and wait for both."""
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    machines = []
    for rank in (0, 1):
        cmd = [
            accelerate, "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
            "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            "--mixed_precision", "no", "--dynamo_backend", "no",
            str(REPO / "tests" / "scripts" / "ddp_run.py"), str(out),
        ] + script_args  # fmt: skip
        machines.append(
            subprocess.Popen(
                cmd, cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = []
    try:
        for machine in machines:
            outputs.append(machine.communicate(timeout=timeout)[0])
    finally:
        for machine in machines:
            if machine.poll() is None:
                machine.kill()
    for rank, (machine, output) in enumerate(zip(machines, outputs)):
        assert machine.returncode == 0, f"machine {rank}:\n{output[-4000:]}"


def test_two_machines_equal_one_process_with_the_same_global_batch(tmp_path):
    two = tmp_path / "two"
    two.mkdir()
    launch_two_machines(_run_args(two, "kd", 8), two)
    reports = [__import__("json").loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in reports] == [2, 2] and [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["state"] == reports[1]["state"]  # both machines hold the same weights
    machines = safetensors.torch.load_file(str(two / "final_state.safetensors"))
    one = _single_process(tmp_path / "one", _run_args(tmp_path / "one", "kd", 16))
    assert one.keys() == machines.keys()
    for k in one:  # the tolerance of the two-process test (tests/training/test_scale.py)
        torch.testing.assert_close(machines[k].float(), one[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def _stream_args(out, shards, batch):
    """The map-style case's run on a stream: 8 steps of 16 rows from 40 cross three passes."""
    args = _run_args(
        out, "kd", batch, ["--streaming", "--streaming_shuffle_buffer", "16", "--max_steps", "8"]
    )
    i = args.index("--dataset")
    args[i + 1] = shards
    j = args.index("--max_train_samples")
    del args[j : j + 2]  # a stream is bounded by --max_steps
    return args


def test_two_machines_reading_a_stream_equal_one_process_with_the_same_global_batch(tmp_path):
    """With a shard count that is not a multiple of the machines (3 shards, 2 machines), datasets' split gives every
    machine one row in two of the same seeded stream, so a global batch of 2 x 8 holds the rows of one process's
    batch of 16: the same weights (the map-style test's tolerance). With a multiple (4 shards) each machine reads its
    own shards instead, the global batches are other rows, and equality with one process cannot hold; what holds
    there (each row once per pass across the machines) is tests/data/test_streaming.py's."""
    shards = write_shards(tmp_path / "shards", 40, 3, test_rows=16)
    two = tmp_path / "two"
    two.mkdir()
    launch_two_machines(_stream_args(two, shards, 8), two)
    reports = [__import__("json").loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["global_step"] for r in reports] == [8, 8] and reports[0]["state"] == reports[1]["state"]
    machines = safetensors.torch.load_file(str(two / "final_state.safetensors"))
    one = _single_process(tmp_path / "one", _stream_args(tmp_path / "one", shards, 16))
    assert one.keys() == machines.keys()
    for k in one:
        torch.testing.assert_close(machines[k].float(), one[k].float(), rtol=1e-4, atol=1e-5, msg=k)

"""The thread policy (hf_distill/run/threads.py) on mocked cores and loads, and benchmarks/threads.py at a tiny size."""

import json

import pytest
import torch

from benchmarks import threads as threads_benchmark
from hf_distill.run import threads


@pytest.fixture
def machine(monkeypatch):
    """A 2-core CPU machine whose busy cores the test sets; torch at its default of 2 threads; no thread variable."""
    state = {"busy": 0.0, "threads": 2, "set": []}
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1])
    monkeypatch.setattr(threads, "default_thread_counts", lambda cpus: {2})
    monkeypatch.setattr(threads, "busy_cores", lambda cpus, seconds: state["busy"])
    monkeypatch.setattr(threads.torch, "get_num_threads", lambda: state["threads"])
    monkeypatch.setattr(threads.torch, "set_num_threads", state["set"].append)
    for var in (*threads.THREAD_ENV_VARS, "OMP_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    return state


@pytest.mark.parametrize(
    "cpus, busy, expected",
    [
        (2, 0.0, 2),
        (2, 0.4, 2),
        (2, 0.6, 1),
        (2, 1.0, 1),
        (2, 2.0, 1),
        (2, 7.5, 1),
        (16, 3.2, 13),
        (1, 0.0, 1),
    ],
)
def test_threads_are_the_free_cores_rounded_at_least_one(cpus, busy, expected):
    assert threads.threads_for(cpus, busy) == expected


@pytest.mark.parametrize("busy, expected", [(0.0, 2), (0.9, 1), (2.0, 1)])
def test_the_policy_takes_the_free_cores_and_applies_them(machine, busy, expected):
    machine["busy"] = busy
    policy = threads.apply_thread_policy(device="cpu")
    assert (policy.threads, policy.previous, policy.cpus, policy.source) == (expected, 2, 2, "free cores")
    assert machine["set"] == ([] if expected == 2 else [expected])
    assert policy.describe() == (
        f"torch threads: {expected} (was 2; free cores, {busy:.1f} of 2 cores busy; OMP_WAIT_POLICY default)"
    )


def test_with_passive_waiting_torchs_count_stays(machine, monkeypatch):
    machine["busy"] = 1.0
    monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
    policy = threads.apply_thread_policy(device="cpu")
    assert (policy.threads, policy.source, policy.wait_policy) == (2, "passive waiting", "PASSIVE")
    assert machine["set"] == []


def test_the_policy_never_raises_torchs_default(machine, monkeypatch):
    # torch defaults to the physical cores (2) of a machine with 4 logical ones, all idle: 2 stays
    monkeypatch.setattr(threads, "allowed_cpus", lambda: [0, 1, 2, 3])
    assert threads.choose_thread_policy(device="cpu").threads == 2


def test_an_explicit_choice_is_kept(machine, monkeypatch):
    machine["busy"] = 2.0
    policy = threads.apply_thread_policy(requested=2, device="cpu")
    assert (policy.threads, policy.source, policy.busy) == (2, "argument", None) and machine["set"] == []
    with pytest.raises(ValueError, match="requested threads must be >= 1"):
        threads.choose_thread_policy(requested=0, device="cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.choose_thread_policy(device="cpu").source == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    machine["threads"] = 3  # torch.set_num_threads(3) earlier in the process: none of torch's defaults
    policy = threads.apply_thread_policy(device="cpu")
    assert (policy.threads, policy.source) == (3, "set_num_threads") and machine["set"] == []


def test_a_gpu_run_is_left_alone(machine):
    machine["busy"] = 2.0
    for device in ("cuda", torch.device("cuda", 0)):
        policy = threads.apply_thread_policy(device=device)
        assert (policy.threads, policy.source) == (2, "gpu")
    assert machine["set"] == []


def test_busy_cores_from_the_cpu_times_or_the_load_average(monkeypatch):
    ticks = iter([(100, 1000), (150, 1100)])  # 50 idle ticks of 100 on 2 cores: one core's worth busy
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: next(ticks))
    monkeypatch.setattr(threads.time, "sleep", lambda s: None)
    assert threads.busy_cores([0, 1], 0.1) == pytest.approx(1.0)
    monkeypatch.setattr(threads, "_cpu_times", lambda cpus: None)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (5.3, 1.0, 1.0))
    assert threads.busy_cores([0, 1], 0.1) == 2.0  # at most the cores there are


def test_the_real_machine_is_read():
    cpus = threads.allowed_cpus()
    assert cpus and len(cpus) in threads.default_thread_counts(cpus)
    assert 0.0 <= threads.busy_cores(cpus, 0.05) <= len(cpus) + 1e-9
    before = torch.get_num_threads()
    try:
        policy = threads.apply_thread_policy(requested=1, device="cpu")
        assert torch.get_num_threads() == 1 and policy.previous == before
    finally:
        torch.set_num_threads(before)


def test_the_benchmark_runs_beside_a_busy_process_at_a_tiny_size(tmp_path):
    out = tmp_path / "threads.json"
    argv = ["--pair", "cifar_resnet8:cifar_resnet8", "--batch_size", "4", "--steps", "2", "--warmup", "1"]
    result = threads_benchmark.main(argv + ["--busy", "1", "--wait_policies", "default", "--out", str(out)])
    (row,) = result["rows"]
    assert (
        row["busy_processes"] == 1
        and row["wait_policy"] == "default"
        and row["policy"]["source"] == "free cores"
    )
    assert set(row["step_s"]) >= {"1", str(row["before_threads"]), str(row["after_threads"])}
    assert row["before_over_after"] == pytest.approx(row["before_s"] / row["after_s"], rel=1e-2)
    assert row["step_s"][str(row["after_threads"])] == row["after_s"] > 0
    assert json.loads(out.read_text()) == result
    md = threads_benchmark.markdown(result)
    assert "| 1 | default |" in md and f"{row['before_over_after']:.2f}x" in md

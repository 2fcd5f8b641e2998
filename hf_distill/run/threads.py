"""How many CPU threads torch should use for a run on a machine that other processes share.

torch's CPU kernels run in OpenMP parallel regions (GNU OpenMP in the PyPI wheels), one thread per core by default,
each region ending in a barrier: the step waits for the slowest thread, thousands of times a step. GNU OpenMP's
waiting threads spin first (``OMP_WAIT_POLICY`` unset), which pays when every thread has a core to itself. Beside
busy processes they do not: the spinning thread takes the time slice that the thread it waits for needs, so a step
crawls. Two ways out, measured by ``benchmarks/threads.py`` (``docs/speed_threads.md``): fewer threads (1 thread has
no barrier), or ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep), which OpenMP reads once, when torch is imported:
it must be in the environment before that (the shell, or the first lines of a script). The policy here: with passive
waiting, torch's count; otherwise as many threads as cores are free at the start of the run (at least 1, at most
torch's default); a count the user chose wins.

    from hf_distill.run.threads import apply_thread_policy

    policy = apply_thread_policy()  # at the start of a CPU run, before the first step
    print(policy.describe())
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

#: environment variables through which a user chooses the thread count (respected as given)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: the /proc/cpuinfo fields that name a physical core
CORE_ID_FIELDS = ("physical id", "core id")
#: how long the probe watches the allowed cores (seconds); short next to a run, long enough to see a busy process
PROBE_SECONDS = 0.3


@dataclass(frozen=True)
class ThreadPolicy:
    """A decision on torch's intra-op thread count.

    Attributes:
        threads: the thread count to use.
        previous: torch's thread count before the decision.
        cpus: the cores this process may run on (its affinity).
        busy: how many of those cores other processes kept busy (``None`` where nothing was measured).
        source: what decided: ``"argument"``, an environment variable's name, ``"set_num_threads"`` (the count was
            already changed in this process), ``"gpu"`` (a GPU run: left alone), ``"passive waiting"`` or
            ``"free cores"``.
        wait_policy: ``OMP_WAIT_POLICY`` as this process's environment gives it (``"default"``: unset).
    """

    threads: int
    previous: int
    cpus: int
    busy: float | None
    source: str
    wait_policy: str = "default"

    def describe(self) -> str:
        """One line for the run's log."""
        busy = "" if self.busy is None else f", {self.busy:.1f} of {self.cpus} cores busy"
        return (
            f"torch threads: {self.threads} (was {self.previous}; {self.source}{busy}; "
            f"OMP_WAIT_POLICY {self.wait_policy})"
        )


def allowed_cpus() -> list[int]:
    """The cores this process may run on (``sched_getaffinity``; every core where the platform has no affinity)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_thread_counts(cpus: list[int]) -> set[int]:
    """The counts torch may pick by itself: one per physical core of the machine (ignoring affinity), per logical
    core, or per allowed core. A count outside them was set by the user (``torch.set_num_threads``)."""
    counts = {len(cpus), os.cpu_count() or len(cpus)}
    try:
        cores = {  # (physical id, core id) pairs of /proc/cpuinfo
            tuple(
                line.split(":")[1].strip()
                for line in block.splitlines()
                if line.split(":")[0].strip() in CORE_ID_FIELDS
            )
            for block in Path("/proc/cpuinfo").read_text().split("\n\n")
            if "core id" in block
        }
        counts.add(len(cores) or len(cpus))
    except OSError:
        pass
    return counts


def _cpu_times(cpus: list[int]) -> tuple[int, int] | None:
    """(idle, total) clock ticks of ``cpus`` so far, from ``/proc/stat``; ``None`` where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{i}" for i in cpus}
    idle = total = 0
    for line in lines:
        name, *ticks = line.split()
        if name in wanted:
            values = [int(t) for t in ticks[:8]]  # user nice system idle iowait irq softirq steal
            idle += values[3] + values[4]
            total += sum(values)
    return (idle, total) if total else None


def busy_cores(cpus: list[int], seconds: float = PROBE_SECONDS) -> float:
    """How many of ``cpus`` other processes keep busy: the non-idle share of their time over ``seconds`` (this
    process sleeps meanwhile), or the 1-minute load average where ``/proc/stat`` cannot be read."""
    before = _cpu_times(cpus)
    if before is None:
        return min(float(len(cpus)), os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0.0
    time.sleep(seconds)
    after = _cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return 0.0
    idle, total = after[0] - before[0], after[1] - before[1]
    return len(cpus) * (1.0 - idle / total)


def threads_for(cpus: int, busy: float) -> int:
    """Threads for ``cpus`` cores of which ``busy`` are taken: the free ones, rounded to the nearest, at least 1.

    A core counts as free when others use less than half of it, so a thread is never placed beside a process that
    holds most of its core.
    """
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def choose_thread_policy(
    requested: int | None = None,
    device: str | torch.device | None = None,
    probe_seconds: float = PROBE_SECONDS,
) -> ThreadPolicy:
    """Decide torch's intra-op thread count for a run, without applying it.

    In order: a GPU run keeps torch's count; an explicit ``requested`` count wins; then one set in the environment
    (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``) or already set in this process (torch's count is none of its
    defaults, :func:`default_thread_counts`); with ``OMP_WAIT_POLICY=PASSIVE`` (set before torch was imported: idle
    threads sleep instead of spinning) torch's count stays; otherwise the cores left free by other processes
    (:func:`busy_cores`, :func:`threads_for`), at most torch's count.

    Args:
        requested: a thread count chosen by the user (``None``: decide).
        device: the run's device (``None``: CUDA when available, else CPU).
        probe_seconds: how long to watch the cores.

    Returns:
        The decision.
    """
    previous = torch.get_num_threads()
    cpus = allowed_cpus()
    wait_policy = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() or "default"
    decided = ThreadPolicy(previous, previous, len(cpus), busy=None, source="", wait_policy=wait_policy)
    device_type = torch.device(device).type if device is not None else None
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type != "cpu":
        return _with(decided, source="gpu")
    if requested is not None:
        if requested < 1:
            raise ValueError(f"requested threads must be >= 1, got {requested}")
        return _with(decided, threads=requested, source="argument")
    for var in THREAD_ENV_VARS:
        if os.environ.get(var, "").strip():
            return _with(decided, source=var)
    if previous not in default_thread_counts(cpus):
        return _with(decided, source="set_num_threads")
    if wait_policy == "PASSIVE":
        return _with(decided, source="passive waiting")
    busy = busy_cores(cpus, probe_seconds)
    threads = min(previous, threads_for(len(cpus), busy))
    return _with(decided, threads=threads, busy=busy, source="free cores")


def _with(policy: ThreadPolicy, **changes) -> ThreadPolicy:
    return ThreadPolicy(**{**policy.__dict__, **changes})


def apply_thread_policy(
    requested: int | None = None,
    device: str | torch.device | None = None,
    probe_seconds: float = PROBE_SECONDS,
) -> ThreadPolicy:
    """:func:`choose_thread_policy`, then ``torch.set_num_threads`` with its count (a no-op on GPU runs).

    Call it once at the start of a run, before the first step; its :meth:`ThreadPolicy.describe` is a line for the
    log.
    """
    policy = choose_thread_policy(requested, device, probe_seconds)
    if policy.threads != torch.get_num_threads():
        torch.set_num_threads(policy.threads)
    return policy


__all__ = [
    "PROBE_SECONDS",
    "THREAD_ENV_VARS",
    "ThreadPolicy",
    "allowed_cpus",
    "apply_thread_policy",
    "busy_cores",
    "choose_thread_policy",
    "default_thread_counts",
    "threads_for",
]

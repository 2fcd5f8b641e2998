"""benchmarks/gpu_check.py's CPU dry path: every part runs at tiny sizes and writes the JSON a GPU run writes."""

import json

from benchmarks import gpu_check


def test_the_dry_run_writes_every_part(tmp_path):
    summary = gpu_check.main([str(tmp_path), "--dry_run"])
    assert summary["dry_run"] is True and summary["device"] == "cpu"
    assert {name: part["status"] for name, part in summary["parts"].items()} == dict.fromkeys(
        gpu_check.PARTS, "ok"
    )
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    parts = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in gpu_check.PARTS}
    assert all(part["dry_run"] is True for part in parts.values())

    runs = parts["precision"]["runs"]
    assert set(runs) == {f"{d}/{m}" for d in ("bf16", "fp16") for m in gpu_check.PRECISION_METHODS}
    for key, run in runs.items():  # fp16 autocast needs CUDA: recorded as skipped on the CPU
        assert (
            run == {"skipped": "fp16 mixed precision needs CUDA"} if key.startswith("fp16") else run["finite"]
        )

    configs = parts["throughput"]
    assert set(configs) == {"dry_run", *gpu_check.THROUGHPUT_OPTIONS}
    assert [r["method"] for r in configs["plain"]["rows"]] == list(gpu_check.METHODS)
    assert all(r["ratio"] > 0 for r in configs["plain"]["rows"])
    assert "skipped" in configs["channels_last_compile"]

    run = parts["cifar10"]
    assert run["dataset"].endswith("cifar10-subset") and run["sanity"] is None
    assert 0.0 <= run["results"]["eval_accuracy"] <= 1.0

    peaks = summary["memory_peaks_mb"]
    assert {f"throughput/plain/{m}" for m in gpu_check.METHODS} <= set(peaks) and all(
        v > 0 for v in peaks.values()
    )

"""benchmarks/teacher_cache_speed.py runs on a tiny pair: the warm epoch never runs the teacher, the ratios are consistent."""

import importlib.util
import json

import pytest

from tests.conftest import REPO


def _ratio_tolerance(r: dict, num: str, den: str, ratio_rounding: float) -> float:
    """The ratios are computed from unrounded times but the times are stored to 3 decimals: allow exactly the error
    that rounding both times (half a millisecond each) and the ratio itself can introduce."""
    half_ms = 0.0005
    ratio = r[num] / r[den]
    return ratio * (half_ms / r[num] + half_ms / (r[den] - half_ms)) + ratio_rounding + 1e-9


def test_cache_benchmark_reports_speedup_ceiling_and_warm_over_alone(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "cache_bench", REPO / "benchmarks" / "teacher_cache_speed.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "c.json"
    argv = ["--pairs", "cifar_resnet20:cifar_resnet8", "--rows", "128", "--repeats", "1", "--threads", "1"]
    (r,) = bench.main(argv + ["--json", str(out)])
    # (the benchmark itself asserts that the warm epoch computed no teacher row)
    assert r["pair"] == "cifar_resnet20 -> cifar_resnet8" and r["rows"] == 128
    assert r["speedup"] == pytest.approx(
        r["uncached_s"] / r["warm_s"], abs=_ratio_tolerance(r, "uncached_s", "warm_s", 0.005)
    )
    assert r["ceiling"] == pytest.approx(
        r["uncached_s"] / r["alone_s"], abs=_ratio_tolerance(r, "uncached_s", "alone_s", 0.005)
    )
    assert r["warm_over_alone"] == pytest.approx(
        r["warm_s"] / r["alone_s"], abs=_ratio_tolerance(r, "warm_s", "alone_s", 0.0005)
    )
    # logits of 10 classes in float32 per row, plus the file's own framing
    assert r["cache_bytes_per_row"] >= 40
    assert json.loads(out.read_text())["results"] == [r]
    assert "| cifar_resnet20 -> cifar_resnet8 |" in capsys.readouterr().out


def test_speed_doc_cache_table_is_the_committed_run():
    """docs/speed.md's teacher-cache table (written by scripts/make_docs.py) holds every row of the committed run,
    formatted here independently of that script."""
    result = json.loads((REPO / "benchmarks" / "results" / "teacher_cache.json").read_text())
    doc = (REPO / "docs" / "speed.md").read_text()
    for r in result["results"]:
        pair = r["pair"].replace("cifar_", "")
        row = (
            f"| {pair} | {r['uncached_s']:.2f} s | {r['warm_s']:.2f} s | {r['speedup']:.2f}x | {r['alone_s']:.2f} s "
            f"| {r['ceiling']:.2f}x | {r['warm_over_alone']:.2f} |"
        )
        assert row in doc, row

"""benchmarks/throughput.py runs on a tiny pair and writes consistent JSON and markdown; docs/speed.md's table is it."""

import importlib.util
import json
import sys

import pytest
import torch

from tests.conftest import REPO

RESULT = REPO / "benchmarks" / "results" / "throughput.json"


def _bench():
    spec = importlib.util.spec_from_file_location("throughput", REPO / "benchmarks" / "throughput.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["throughput"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_runs_on_a_tiny_pair_and_writes_json_and_markdown(tmp_path):
    bench = _bench()
    out = tmp_path / "t.json"
    argv = ["--pairs", "cifar_resnet8:cifar_resnet8", "--methods", "kd,crd", "--steps", "3", "--warmup", "1"]
    bench.main(argv + ["--batch_size", "8", "--rows", "300", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["rows_in_training_set"] == 300
    kd, crd = result["rows"]
    assert (kd["method"], kd["kind"], crd["method"], crd["kind"]) == ("kd", "logit", "crd", "feature")
    for r in (kd, crd):
        assert r["steps"] == 3
        assert r["ratio"] == pytest.approx(r["limit_img_s"] / r["trainer_img_s"])
        assert min(r["limit_before_img_s"], r["limit_after_img_s"]) > 0 and r["peak_mb"] > 0
    assert kd["state_mb"] == 0
    # CRD's bank: two (300, 128) float32 tables, plus both heads
    assert crd["state_mb"] * 2**20 > 2 * 300 * 128 * 4
    md = out.with_suffix(".md").read_text()
    assert md == bench.markdown(result)
    assert "| kd |" in md and "| crd |" in md and "cifar_resnet8:cifar_resnet8" in md


def test_a_method_that_does_not_apply_to_a_pair_is_listed_and_the_run_goes_on(tmp_path):
    bench = _bench()
    out = tmp_path / "t.json"
    argv = ["--pairs", "timm-resnet18-mobilenetv3", "--methods", "ab,kd", "--steps", "2", "--warmup", "0"]
    bench.main(argv + ["--batch_size", "4", "--rows", "50", "--out", str(out)])
    ab, kd = json.loads(out.read_text())["rows"]
    assert "pre-activation" in ab["skipped"] and "ratio" not in ab  # fmt: skip
    assert kd["method"] == "kd" and kd["ratio"] > 0
    assert "| ab | not applicable: The student (MobileNetV3, a timm model) cannot give pre-activation" in (
        out.with_suffix(".md").read_text()
    )


def test_unknown_pair_or_method_is_one_clear_error(capsys):
    bench = _bench()
    for argv, word in ((["--pairs", "nope"], "unknown pair"), (["--methods", "kd,nope"], "unknown method")):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert word in capsys.readouterr().err


def test_speed_doc_table_is_the_committed_benchmark_output():
    doc = (REPO / "docs" / "speed.md").read_text()
    start = doc.index("<!-- speed-table:start -->\n") + len("<!-- speed-table:start -->\n")
    end = doc.index("<!-- speed-table:end -->")
    assert doc[start:end] == _bench().markdown(json.loads(RESULT.read_text())), (
        "docs/speed.md is stale: run `python scripts/make_docs.py`"
    )


def test_the_random_teacher_gets_batchnorm_statistics_of_its_data():
    """A random resnet56 in eval mode with fresh statistics amplifies its logits to thousands (CC's gradient then
    overflows); calibrated on the synthetic images, its logits are of order one."""
    bench = _bench()
    torch.manual_seed(0)
    teacher = bench.load_model("cifar_resnet56", num_labels=100, role="teacher").eval()
    images = bench.SyntheticRows(rows=256).images
    with torch.no_grad():
        assert teacher(images[:64]).logits.abs().max() > 100
        bench.calibrate_batchnorm(teacher, images)
        assert teacher.eval()(images[:64]).logits.abs().max() < 20


@pytest.mark.parametrize(
    "script,argv",
    [
        ("crd_reference.py", []),
        ("ft_reference.py", ["--method", "ft"]),
        ("ft_reference.py", ["--method", "iekd"]),
        ("kdsvd_reference.py", []),
        ("reviewkd_reference.py", []),
    ],
)
def test_reference_scripts_time_three_steps_on_the_same_batches(tmp_path, script, argv):
    """Each reference script times the limit, the reference's step and the trainer's in turn and reports their
    ratios (a dry run: 2 steps on a CIFAR pair; the figures come from the full runs)."""
    _bench()  # the scripts import benchmarks.throughput, whose dataclasses need their module registered
    spec = importlib.util.spec_from_file_location(script[:-3], REPO / "benchmarks" / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    small = [
        "--pair",
        "resnet56-resnet20",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--batch_size",
        "8",
        "--rows",
        "300",
    ]
    result = mod.main(argv + small + ["--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert min(result["limit_s"], result["reference_s"]) > 0
    assert result["reference_over_limit"] == pytest.approx(
        result["reference_s"] / result["limit_s"], rel=0.01
    )

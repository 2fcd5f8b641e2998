"""benchmarks/speed_options.py compares a step with and without an option, interleaved, and says what it shows."""

import json

import pytest

from benchmarks import speed_options


def test_options_are_compared_on_a_tiny_pair_and_written(tmp_path):
    out = tmp_path / "o.json"
    argv = ["--pairs", "cifar_resnet8:cifar_resnet8", "--options", "channels_last,teacher_bf16"]
    result = speed_options.main(
        argv + ["--steps", "3", "--warmup", "1", "--batch_size", "8", "--out", str(out)]
    )
    assert [r["option"] for r in result["rows"]] == ["channels_last", "teacher_bf16"]
    for r in result["rows"]:
        assert r["steps"] == 3 and r["plain_s"] > 0 and r["option_s"] > 0
        assert r["speedup"] == pytest.approx(r["plain_s"] / r["option_s"])
        assert len(r["load"]) == 2
    assert json.loads(out.read_text()) == result
    md = out.with_suffix(".md").read_text()
    assert md == speed_options.markdown(result) and "| cifar_resnet8:cifar_resnet8 | teacher_bf16 |" in md


def test_verdict_needs_a_change_beyond_the_spread():
    row = {
        "pair": "p",
        "plain_s": 1.0,
        "steps": 20,
        "plain_iqr": 0.05,
        "option_iqr": 0.04,
        "load": [1.0, 1.2],
    }
    env = {"device": "cpu", "torch": "x", "load_before": 0.0}

    def verdict(speedup):
        r = dict(row, option="channels_last", option_s=1 / speedup, speedup=speedup)
        md = speed_options.markdown(
            {"batch_size": 64, "steps": 20, "warmup": 3, "environment": env, "rows": [r]}
        )
        return md.strip().splitlines()[-1].split("|")[-2].strip()

    assert (verdict(1.2), verdict(1.03), verdict(0.97), verdict(0.8)) == (
        "helps",
        "no clear change",
        "no clear change",
        "slower",
    )


def test_an_unknown_option_is_one_clear_error(capsys):
    with pytest.raises(SystemExit):
        speed_options.main(["--options", "fp8"])
    assert (
        "unknown option(s) fp8: choose from channels_last, teacher_bf16, compile" in capsys.readouterr().err
    )


def test_speed_doc_options_table_is_the_committed_run():
    from tests.conftest import REPO

    result = json.loads((REPO / "benchmarks" / "results" / "speed_options.json").read_text())
    doc = (REPO / "docs" / "speed.md").read_text()
    block = doc.split("<!-- speed-options:start -->\n")[1].split("<!-- speed-options:end -->")[0]
    assert block == speed_options.markdown(result), (
        "docs/speed.md is stale: run `python scripts/make_docs.py`"
    )

"""benchmarks/mdistiller_reviewkd.py times mdistiller's own ReviewKD distiller beside ours.

mdistiller's code is never part of this repository: the benchmark imports it from a path given on the command line.
The run test needs a local snapshot of megvii-research/mdistiller at MIRROR (a bare git clone, as this project's
development machines have) and yacs; CI has neither, so it is skipped there. The bad-path tests always run.
"""

import json
from pathlib import Path

import pytest

from benchmarks import mdistiller_reviewkd

MIRROR = Path("/work/.mirror/megvii-research+mdistiller/repo")


@pytest.mark.parametrize("kind", ["missing", "not_mdistiller"])
def test_a_bad_path_is_one_line_and_exit_2(tmp_path, capsys, kind):
    path = tmp_path / "nowhere" if kind == "missing" else tmp_path
    with pytest.raises(SystemExit) as e:
        mdistiller_reviewkd.main(["--mdistiller", str(path), "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("mdistiller_reviewkd.py: error: --mdistiller") and str(path) in err
    assert ("no such directory" if kind == "missing" else "not an mdistiller checkout") in err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(not MIRROR.is_dir(), reason=f"no local mdistiller snapshot at {MIRROR} (CI has none)")
def test_one_step_run_writes_both_columns(tmp_path):
    pytest.importorskip("yacs", reason="mdistiller's cfg needs yacs (pip install yacs)")
    out = tmp_path / "r.json"
    argv = ["--mdistiller", str(MIRROR), "--pairs", "resnet56-resnet20", "--out", str(out)]
    result = mdistiller_reviewkd.main(
        argv + ["--steps", "1", "--warmup", "0", "--batch_size", "8", "--threads", "1"]
    )
    assert json.loads(out.read_text()) == result
    assert len(result["mdistiller"]["commit"]) == 40 and result["threads"] == 1
    assert len(result["load"]["before"]) == 3 and len(result["load"]["after"]) == 3
    (run,) = result["runs"]
    assert run["pair"] == "resnet56-resnet20" and run["steps"] == 1
    for k in ("limit", "mdistiller", "ours"):
        assert run[f"{k}_s"] > 0 and run[f"{k}_img_s"] == pytest.approx(8 / run[f"{k}_s"], rel=1e-2)
    assert run["ours_over_mdistiller"] == pytest.approx(run["ours_s"] / run["mdistiller_s"], rel=1e-2)
    # the two compute the same thing: levels, fusion modules, loss and gradients (float64, same weights)
    check = run["check"]
    assert check["same_computation"] and check["levels_equal"] and check["fusions_equal"]
    assert check["mid_channels"] == {"ours": 64, "mdistiller": 64}
    assert check["loss"]["rel_diff"] < 1e-9 and check["grads_max_rel_diff"] < 1e-9
    assert result["notes"]

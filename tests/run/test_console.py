"""A quiet console: one progress bar per phase, no foreign INFO lines, and --log_level error silences the rest."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

TINY = ["--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
        "--per_device_train_batch_size", "32", "--eval_strategy", "steps", "--eval_steps", "1",
        "--save_strategy", "no"]  # fmt: skip


def _run(tmp_path, *extra: str) -> str:
    p = subprocess.run(
        [
            sys.executable,
            str(REPO / "recipes" / "distill.py"),
            *TINY,
            "--output_dir",
            str(tmp_path / "o"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stderr.replace("\r", "\n")


@pytest.mark.slow
def test_the_default_run_shows_one_bar_per_phase_and_no_foreign_info(tmp_path):
    err = _run(tmp_path)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert not [ln for ln in lines if re.search(r" INFO (?!hf_distill)", ln)], "foreign INFO lines"
    assert not [ln for ln in lines if "Loading weights" in ln or "Writing model shards" in ln]
    # a bar without a total ("2it [...]") is one that was opened and never closed (the teacher's evaluation did)
    assert not [ln for ln in lines if re.match(r"\s*\d+it \[", ln)]
    assert any("INFO hf_distill" in ln for ln in lines)  # our own lines stay


@pytest.mark.slow
def test_log_level_error_silences_info_lines(tmp_path):
    err = _run(tmp_path, "--log_level", "error", "--disable_tqdm", "true")
    assert not [ln for ln in err.splitlines() if " INFO " in ln or " WARNING " in ln], err[-2000:]

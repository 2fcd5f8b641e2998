"""benchmarks/accuracy.py: protocol, resumable results file, and the tables of docs/results.md generated from it."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import accuracy
from benchmarks.accuracy_report import END, START, render_table, results_block, write_report
from hf_distill.methods import METHODS, PRESETS
from hf_distill.run.config import parse_args
from tests.conftest import REPO

RESULTS_DOC = REPO / "docs" / "results.md"


def test_results_table_is_generated_from_the_results_file():
    text = RESULTS_DOC.read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    expected = results_block(accuracy.RESULTS / "cifar10.jsonl", accuracy.Cifar10Protocol())
    assert text[start:end] == expected, "docs/results.md is stale: run `python scripts/make_docs.py`"


def _row(method, seed, top1, version=None, protocol="p1", **kw):
    return {
        "method": method, "seed": seed, "protocol": "cifar10-cpu", "protocol_hash": protocol,
        "code_version": version or accuracy.code_version(), "data": "d", "top1": top1, "top5": 0.99,
        "train_seconds": 60.0, "init_stage_seconds": 0.0, **kw,
    }  # fmt: skip


def test_table_keeps_other_versions_and_partial_lines_apart(tmp_path):
    rows = [_row("none", s, 0.70 + 0.001 * s) for s in range(3)]
    rows += [_row("kd", s, 0.72 + 0.001 * s) for s in range(3)]
    rows += [_row("dkd", 0, 0.69)]
    rows += [_row("kd", 0, 0.951, version="0.0.1+bench0"), _row("kd", 1, 0.952, protocol="p2")]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"method": "kd", "seed": 2, "top')
    rows_read, bad = accuracy.read_rows(path)
    assert len(rows_read) == len(rows) and bad == 1  # the truncated last line is no row
    table = render_table(rows_read, "p1", accuracy.code_version(), bad)
    assert "95.10" not in table and "95.20" not in table  # foreign rows never enter the table
    assert "2 rows of other protocols" in table and "1 unreadable lines" in table
    kd = next(ln for ln in table.splitlines() if ln.startswith("| `kd`"))
    assert "| 3 | 72.10 ± 0.10 | +2.00 | **ahead** |" in kd
    dkd = next(ln for ln in table.splitlines() if ln.startswith("| `dkd`"))
    assert "| 1 | 69.00 | -1.10 | 1 seed: behind (unresolved) |" in dkd  # 1.10 > 2 x 0.1 x sqrt(4/3)
    close = render_table([*rows_read[:6], _row("dkd", 0, 0.7005)], "p1", accuracy.code_version(), 0)
    assert "| 1 | 70.05 | -0.05 | 1 seed: within noise (unresolved) |" in close  # 0.05 < 2 x 0.1 x sqrt(4/3)
    assert "Ahead of the baseline: `kd`; single seed so far: `dkd`." in table


def test_report_refuses_a_file_of_another_version(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_row("kd", 0, 0.7, version="0.0.1+bench0")) + "\n")
    doc = tmp_path / "results.md"
    doc.write_text(f"x\n{START}{END}\n")
    with pytest.raises(ValueError, match="no row of protocol .* with code version"):
        write_report(path, doc, tmp_path / "c.png", accuracy.Cifar10Protocol())
    assert doc.read_text() == f"x\n{START}{END}\n"


def test_report_writes_table_and_chart(tmp_path):
    protocol = accuracy.Cifar10Protocol()
    rows = [_row(m, s, 0.7 + 0.01 * i + 0.001 * s, protocol=protocol.hash()) for i, m in enumerate(["none", "kd"])
            for s in range(2)]  # fmt: skip
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    doc = tmp_path / "results.md"
    doc.write_text(f"head\n{START}old\n{END}\ntail\n")
    write_report(path, doc, tmp_path / "c.png", protocol)
    text = doc.read_text()
    assert text.startswith(f"head\n{START}") and text.endswith(f"{END}\ntail\n") and "old" not in text
    assert "| `kd` | 2 | 71.05 ± 0.07 | +1.00 |" in text
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_skips_finished_keys_and_a_failed_run_writes_nothing(tmp_path, monkeypatch):
    job = accuracy.Job(accuracy.Cifar10Protocol(), None, tmp_path / "r.jsonl", threads=1)
    calls = []

    def fake_run(job, method, seed):
        calls.append((method, seed))
        if method == "dkd":
            raise RuntimeError("interrupted")
        return {**job.base_row(method, seed), "top1": 0.5, "train_seconds": 1.0, "init_stage_seconds": 0.0}

    monkeypatch.setattr(accuracy, "run_one", fake_run)
    order = [("none", 0), ("kd", 0), ("dkd", 0)]
    accuracy.run_job(job, order)
    accuracy.run_job(job, order + [("kd", 1)])
    assert calls == [("none", 0), ("kd", 0), ("dkd", 0), ("dkd", 0), ("kd", 1)]
    rows, bad = accuracy.read_rows(job.results)
    assert sorted((r["method"], r["seed"]) for r in rows) == [("kd", 0), ("kd", 1), ("none", 0)] and bad == 0


def test_every_method_and_preset_is_run_and_epoch_hyperparameters_scale():
    names = accuracy.all_methods()
    assert names[:2] == ["none", "kd"] and set(names) == {"none", *METHODS, *PRESETS}
    p = accuracy.Cifar10Protocol(epochs=30)
    assert p.method_args("kd") == {} and p.method_args("none") == {}
    assert p.method_args("ab") == {"ab": {"init_epochs": 3.75}}  # 30 of 240 epochs
    assert p.method_args("dkd") == {"dkd": {"warmup_epochs": 2.5}}
    assert p.method_args("iekd_kd") == {"iekd": {"init_epochs": 3.75}}
    assert p.hash() != accuracy.Cifar10Protocol(epochs=20).hash()
    assert p.hash() == accuracy.Cifar10Protocol(epochs=30.0).hash()
    order = accuracy.plan(["none", "kd", "at", "dkd"], [0, 1], [0])
    assert order == [("none", 0), ("none", 1), ("kd", 0), ("kd", 1), ("teacher", 0), ("dkd", 0), ("dkd", 1),
                     ("at", 0), ("at", 1)]  # fmt: skip


def test_class_balanced_subset(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    labels = [0, 1, 0, 0, 1, 2, 1, 2]
    pq.write_table(pa.table({"img": list(range(8)), "label": labels}), src / "train.parquet")
    pq.write_table(pa.table({"img": [0], "label": [0]}), src / "test.parquet")
    out = accuracy.class_balanced_subset(src, tmp_path / "out", per_class=2)
    assert pq.read_table(out / "train.parquet").column("img").to_pylist() == [0, 1, 2, 4, 5, 7]
    assert (out / "test.parquet").resolve() == (src / "test.parquet").resolve()


def test_unknown_method_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        accuracy.main(["--methods", "kd,nosuch", "--dataset", "/nonexistent"])
    assert e.value.code == 2
    assert "nosuch" in capsys.readouterr().err


def test_method_variants_run_by_name():
    assert accuracy._split("none,kd[temperature=2,ce_weight_x=1],dkd") == [
        "none",
        "kd[temperature=2,ce_weight_x=1]",
        "dkd",
    ]
    assert accuracy.split_variant("kd[temperature=2]") == ("kd", {"temperature": "2"})
    assert accuracy.variant_flags("crd_kd[temperature=2]") == ["--kd-temperature", "2"]
    argv = accuracy.Cifar10Protocol().argv("kd[temperature=2]", 0, "d", "o")
    assert argv[argv.index("--method") + 1] == "kd" and argv[-2:] == ["--kd-temperature", "2"]
    assert parse_args(argv, {})[4] == {"kd": {"temperature": 2.0}}
    with pytest.raises(ValueError, match="has a hyperparameter 'nosuch'"):
        accuracy.variant_flags("kd[nosuch=1]")
    with pytest.raises(ValueError, match="Bad method variant"):
        accuracy.split_variant("kd[temperature]")


def test_mutual_learning_runs_unclipped_in_both_modes():
    for protocol in (accuracy.Cifar10Protocol(), accuracy.Cifar100Protocol(teacher="outputs/t")):
        for method in ("dml", "dml_ie", "dml[teacher_weight=1]"):
            assert parse_args(protocol.argv(method, 0, "d", "o"), {})[3].max_grad_norm == 0
        assert parse_args(protocol.argv("kd", 0, "d", "o"), {})[3].max_grad_norm == 1


def test_cifar100_mode_parses_every_method():
    protocol = accuracy.Cifar100Protocol(teacher="outputs/t")
    for method in accuracy.all_methods() + ["kd[temperature=2]"]:
        model_args, data_args, distill_args, training_args, kwargs = parse_args(
            protocol.argv(method, 1, None, "o"), {}
        )
        assert distill_args.method == accuracy.split_variant(method)[0] and training_args.seed == 1
        assert data_args.dataset == "uoft-cs/cifar100" and training_args.eval_strategy == "no"
        assert (model_args.teacher or None) == ("outputs/t" if method != "none" else None)  # none: teacher ""
    with pytest.raises(ValueError, match="No CIFAR-100 config for the pair"):
        accuracy.Cifar100Protocol(pair="nosuch").argv("newmethod", 0, None, "o")


def test_runs_share_the_teacher_cache_for_small_outputs_only(tmp_path):
    """KD and DKD of one seed ask the teacher for logits only: the second run reads them all and trains the same
    student as without the cache; AT takes maps (~110 KB an image for resnet56) and runs its teacher."""
    data = accuracy.class_balanced_subset(REPO / "assets" / "cifar10-subset", tmp_path / "data", per_class=3)
    protocol = accuracy.Cifar10Protocol(epochs=1, per_class=3)
    cached = accuracy.Job(
        protocol, str(data), tmp_path / "r.jsonl", 1, tmp_path / "w", str(tmp_path / "cache")
    )
    uncached = accuracy.Job(protocol, str(data), tmp_path / "u.jsonl", 1, tmp_path / "u", None)
    kd = accuracy.run_one(cached, "kd", 0)
    dkd = accuracy.run_one(cached, "dkd", 0)
    assert (kd["teacher_cache_read_rows"], kd["teacher_cache_computed_rows"]) == (0, 30)
    assert (dkd["teacher_cache_read_rows"], dkd["teacher_cache_computed_rows"]) == (30, 0)
    plain = accuracy.run_one(uncached, "dkd", 0)
    assert plain["teacher_cache_read_rows"] is None
    assert (plain["top1"], plain["top5"]) == (dkd["top1"], dkd["top5"])
    assert accuracy.row_key(plain) == accuracy.row_key(dkd)  # the cache is exact: not part of the key
    at = accuracy.run_one(cached, "at", 0)
    assert at["teacher_cache_read_rows"] is None


def test_default_run_figures_are_the_committed_short_runs():
    """docs/results.md's table of the default configuration (1,000 images, 30 and 60 epochs) is computed from
    benchmarks/results/cifar10-short.jsonl: means and spreads over seeds, and the gain paired by seed (computed
    here independently of the renderer, benchmarks/accuracy_report.py's default_run_table)."""
    import statistics

    rows, bad = accuracy.read_rows(REPO / "benchmarks" / "results" / "cifar10-short.jsonl")
    assert not bad
    doc = RESULTS_DOC.read_text()
    for epochs in (60.0, 30.0):
        top1 = {
            m: {
                r["seed"]: 100 * r["top1"]
                for r in rows
                if r["method"] == m and r["definition"]["epochs"] == epochs
            }
            for m in ("none", "kd")
        }
        assert sorted(top1["none"]) == sorted(top1["kd"]) == [0, 1, 2]
        assert all(r["definition"]["per_class"] == 100 for r in rows)
        gains = [top1["kd"][s] - top1["none"][s] for s in top1["none"]]
        cells = [
            f"{statistics.mean(v.values()):.2f} ± {statistics.stdev(v.values()):.2f}%" for v in top1.values()
        ]
        cells.append(f"{statistics.mean(gains):+.2f} ± {statistics.stdev(gains):.2f} points")
        assert all(c in doc for c in cells), cells


def test_student_and_teacher_are_protocol_fields(tmp_path):
    """--student and --teacher replace the pair in CIFAR-10 mode; both enter the protocol hash (rows of another pair
    never mix with the default one's) and reach the run's arguments."""

    def job(*extra):
        argv = [
            "--per_class",
            "2",
            "--dataset",
            str(REPO / "assets" / "cifar10-subset"),
            "--cache_dir",
            str(tmp_path),
        ]
        return accuracy.make_job(accuracy.build_parser().parse_args(argv + list(extra)))

    default = job().protocol
    assert default == accuracy.Cifar10Protocol(per_class=2)
    hetero = job("--student", "cifar_mobilenetv2").protocol
    assert hetero.student == "cifar_mobilenetv2" and hetero.hash() != default.hash()
    assert hetero.definition()["student"] == "cifar_mobilenetv2"
    model_args = parse_args(hetero.argv("kd", 0, "d", "o"), {})[0]
    assert model_args.student == "cifar_mobilenetv2" and model_args.teacher == str(REPO / default.teacher)
    other = job("--teacher", str(REPO / "assets" / "teachers" / "cifar10-resnet56")).protocol
    assert (
        other.teacher == "assets/teachers/cifar10-resnet56"
    )  # repository-relative: the hash is the checkout's
    assert other.hash() not in (default.hash(), hetero.hash())
    assert other.definition()["teacher_weights"] != default.definition()["teacher_weights"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--student", "nosuch"], "--student 'nosuch' is neither a CIFAR-zoo name"),
        (["--teacher", "/nonexistent"], "--teacher /nonexistent is not a model folder"),
        (["--mode", "cifar100", "--student", "cifar_mobilenetv2"], "--student is for --mode cifar10"),
    ],
)
def test_bad_pair_is_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        accuracy.main(["--methods", "none", "--dataset", "/nonexistent", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_hetero_table_shows_its_pair_only_and_the_default_student_beside_it(tmp_path):
    from benchmarks.accuracy_report import hetero_block

    hetero = accuracy.Cifar10Protocol(epochs=30, per_class=100, student="cifar_mobilenetv2")
    same = accuracy.Cifar10Protocol(epochs=30, per_class=100)
    rows = [_row("none", 0, 0.40, protocol=hetero.hash()), _row("kd", 0, 0.45, protocol=hetero.hash()),
            _row("kd", 0, 0.77, protocol=same.hash())]  # fmt: skip
    reference = [_row("none", s, 0.43 + 0.01 * s, protocol=same.hash()) for s in range(2)]
    reference += [_row("dist", 0, 0.5, protocol=same.hash()), _row("kd", 0, 0.88, protocol=hetero.hash())]
    path, ref = tmp_path / "hetero.jsonl", tmp_path / "ref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ref.write_text("".join(json.dumps(r) + "\n" for r in reference))
    block = hetero_block(path, hetero, ref)
    assert f"Protocol `{hetero.hash()}`" in block and "published" not in block
    assert "| `kd` | 1 | 45.00 | +5.00 |" in block and "77.00" not in block  # the resnet20 row is kept apart
    assert "1 rows of other protocols" in block
    assert f"student `cifar_resnet20` (protocol `{same.hash()}`, rows of `{ref}`)" in block
    assert (
        "`none` 43.50 ± 0.71% (2 seeds)." in block
    )  # dist: not run with the hetero student; kd: another pair

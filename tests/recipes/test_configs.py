"""The CIFAR-100 benchmark configs (hf_distill.run.benchmark_configs): built from the registry, never committed. Every
registered method and preset that distills from a teacher has one per benchmark pair, each parses into a valid run
through the real parser from a path that does not exist (a fresh clone), and the generator writes the same files."""

import logging

import pytest
import yaml

from hf_distill.methods import METHODS, PRESETS, DistillationObjective
from hf_distill.run.benchmark_configs import (
    FSP_NA,
    PAIRS,
    PUBLISHED,
    TEACHER_TOP1,
    benchmark_config,
    benchmark_names,
)
from hf_distill.run.config import parse_args
from recipes.configs import make_cifar100_configs
from recipes.distill import DEFAULTS
from recipes.distill import main as distill_main
from tests.helpers import PROBES, registered_methods

NAMES = benchmark_names()
#: the documented path of a config; the folder is not committed, so on a clone no file is there
DOCUMENTED = "recipes/configs/cifar100/{}.yaml"


@pytest.fixture
def fresh_clone(tmp_path, monkeypatch):
    """Run from a folder without recipes/configs/cifar100/, as on a fresh clone (or a wheel install)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_method_and_preset_that_needs_a_teacher_has_a_config_per_pair():
    teacher_free = {n for n in [*METHODS, *PRESETS] if not DistillationObjective.from_names(n).needs_teacher}
    assert "dml" in teacher_free  # mutual learning: no teacher -> student pair to reproduce
    for method in sorted(set(METHODS) | set(PRESETS) | {"none"}):
        fsp_na = FSP_NA if method == "fsp" else set()  # N/A in the benchmark table: unequal channel counts
        expected = {
            f"{method}/{t}_{s}" for t, s in PAIRS if method not in teacher_free and (t, s) not in fsp_na
        }
        assert {n for n in NAMES if n.split("/")[0] == method} == expected, method
    assert {n.split("/")[1] for n in NAMES if n.startswith("teachers/")} == {t for t, _ in PAIRS}


def test_a_method_registered_later_gets_its_configs_with_no_other_edit(fresh_clone):
    with registered_methods(PROBES):
        assert "test_probe/resnet56_resnet20" in benchmark_names()
        model_args, _, distill_args, _, _ = parse_args(["--config", "cifar100/test_probe/resnet56_resnet20"])
    assert distill_args.method == "test_probe" and model_args.teacher == "outputs/cifar100/teachers/resnet56"
    assert "test_probe/resnet56_resnet20" not in benchmark_names()


@pytest.mark.parametrize("name", NAMES)
def test_config_parses_into_a_valid_run(name, fresh_clone):
    # with the recipe's defaults, as `recipes/distill.py --config` parses it: a config without a teacher must say
    # so (teacher ''), or the embedded CIFAR-10 default teacher comes in
    model_args, data_args, distill_args, training_args, kwargs = parse_args(
        ["--config", DOCUMENTED.format(name)], DEFAULTS
    )
    assert data_args.dataset == "uoft-cs/cifar100" and data_args.label_column == "fine_label"
    assert training_args.num_train_epochs == 240 and distill_args.milestones() == [150, 180, 210]
    assert training_args.weight_decay == 5e-4 and training_args.per_device_train_batch_size == 64
    small = any(s in model_args.student for s in ("mobilenet", "shufflenet"))
    assert training_args.learning_rate == (0.01 if small else 0.05)
    objective = DistillationObjective.from_names(
        distill_args.method, distill_args.weights(), distill_args.ce_weight, kwargs
    )
    assert (not model_args.teacher) == (distill_args.method == "none") == (not objective.needs_teacher)
    assert not model_args.teacher or model_args.teacher.startswith("outputs/cifar100/teachers/")
    assert training_args.output_dir.endswith(f"outputs/cifar100/{name}")


def test_per_pair_hyperparameters_reach_the_methods(fresh_clone):
    """The authors' per-pair settings (mdistiller's DKD beta, ReviewKD weight, Sun et al.'s temperature)."""
    kwargs = parse_args(["--config", "cifar100/dkd/resnet56_resnet20"])[4]
    assert kwargs["dkd"]["beta"] == 2.0
    _, _, distill_args, _, _ = parse_args(["--config", "cifar100/reviewkd/resnet32x4_resnet8x4"])
    assert distill_args.weights() == [5.0]
    assert parse_args(["--config", "cifar100/kd_ls/vgg13_vgg8.yaml"])[4]["kd"]["temperature"] == 3.0


def test_the_command_line_overrides_a_generated_config(fresh_clone):
    model_args, _, _, training_args, _ = parse_args(
        ["--config", "cifar100/kd/vgg13_vgg8", "--num_train_epochs", "3", "--teacher", "my/teacher"]
    )
    assert training_args.num_train_epochs == 3 and model_args.teacher == "my/teacher"


def test_a_built_config_is_said_in_one_log_line(fresh_clone, caplog):
    with caplog.at_level(logging.INFO, logger="hf_distill"):
        parse_args(["--config", DOCUMENTED.format("crd/resnet32x4_resnet8x4")])
    lines = [r.getMessage() for r in caplog.records if "built in memory" in r.getMessage()]
    assert len(lines) == 1 and "crd/resnet32x4_resnet8x4" in lines[0]


def test_an_existing_file_wins_over_the_built_config(fresh_clone):
    path = fresh_clone / "cifar100" / "kd" / "resnet56_resnet20.yaml"
    path.parent.mkdir(parents=True)
    cfg = {**benchmark_config("kd", "resnet56_resnet20")[1], "num_train_epochs": 7}
    path.write_text(yaml.safe_dump(cfg))
    assert parse_args(["--config", str(path)])[3].num_train_epochs == 7


@pytest.mark.parametrize(
    "config, nearest",
    [
        ("recipes/configs/cifar100/kdd/resnet56_resnet20.yaml", "nearest: kd/resnet56_resnet20"),
        ("cifar100/kd/resnet56_resnet21", "nearest: kd/resnet56_resnet20"),
        ("cifar100/teachers/resnet57", "nearest: teachers/resnet56"),
        ("cifar100/dml/resnet56_resnet20", "dml needs no teacher"),
        ("cifar100/fsp/wrn_40_2_wrn_40_1", "N/A for this pair"),
    ],
)
def test_a_wrong_name_is_one_line_with_the_nearest_names(config, nearest, fresh_clone, capsys):
    with pytest.raises(SystemExit) as exit_info:
        distill_main(["--config", config])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: Config file {config!r} does not exist.") and nearest in err


def test_a_missing_file_elsewhere_is_still_a_missing_file(fresh_clone):
    with pytest.raises(ValueError, match=r"^Config file 'mine/kd\.yaml' does not exist\.$"):
        parse_args(["--config", "mine/kd.yaml"])


def test_the_generator_writes_every_config_and_checks_them(tmp_path, capsys):
    out = tmp_path / "cifar100"
    assert make_cifar100_configs.main(["--out", str(out)]) == 0
    written = sorted(p.relative_to(out).with_suffix("").as_posix() for p in out.rglob("*.yaml"))
    assert written == sorted(NAMES)
    for name in ("kd/resnet56_resnet20", "none/vgg13_mobilenetv2", "teachers/wrn_40_2"):
        header, cfg = benchmark_config(*name.split("/"))
        text = (out / f"{name}.yaml").read_text()
        assert yaml.safe_load(text) == cfg and text.startswith(f"# {header.splitlines()[0]}\n")
    assert make_cifar100_configs.main(["--out", str(out), "--check"]) == 0
    (out / "kd" / "resnet56_resnet20.yaml").write_text("method: kd\n")
    (out / "kd" / "left_over.yaml").write_text("method: kd\n")
    capsys.readouterr()
    assert make_cifar100_configs.main(["--out", str(out), "--check"]) == 1
    assert capsys.readouterr().out.split() == [
        "out", "of", "date:", "kd/resnet56_resnet20.yaml", "out", "of", "date:", "kd/left_over.yaml"
    ]  # fmt: skip


def test_the_published_figure_is_in_the_header():
    header = benchmark_config("crd", "resnet32x4_resnet8x4")[0]
    published = PUBLISHED["crd"][("resnet32x4", "resnet8x4")]
    assert f"Published top-1: {published} " in header and f"teacher {TEACHER_TOP1['resnet32x4']}" in header
    assert "not published for this pair" in benchmark_config("kdsvd", "resnet56_resnet20")[0]

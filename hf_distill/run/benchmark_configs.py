"""The CIFAR-100 benchmark configs, built from the registry: one run per (method, teacher -> student pair) of the
benchmarks of CRD (Tian et al. 2020, RepDistiller) and DKD (mdistiller), plus one per teacher to train it first.

Nothing is committed: ``--config recipes/configs/cifar100/<method>/<pair>.yaml`` (or the short
``--config cifar100/<method>/<pair>``) is built here in memory when no such file exists
(:func:`hf_distill.run.config.parse_args`), and ``python recipes/configs/make_cifar100_configs.py`` writes the files
for whoever wants them. A method registered anywhere (``@register_method``) has its configs at once.

The schedule is the benchmarks': 240 epochs, SGD momentum 0.9, weight decay 5e-4, batch 64, lr 0.05 (0.01 for
MobileNetV2/ShuffleNet students), x0.1 at epochs 150/180/210. Published top-1 numbers are quoted in each config's
header (RepDistiller README / CRD paper, mdistiller README, the DKD paper, Sun et al.'s README, the DIST authors'
README) so a run can be compared with them.

Python API::

    header, cfg = benchmark_config("crd", "resnet32x4_resnet8x4")   # the header lines and the YAML mapping
    benchmark_names()                                                 # ["ab/resnet110_resnet20", ...]
"""

from __future__ import annotations

import difflib
from pathlib import PurePath
from typing import Any

import yaml

#: the folder name that marks a benchmark config path (``recipes/configs/cifar100/<method>/<pair>.yaml``)
BENCHMARK = "cifar100"
#: the folder of the teachers' own configs (cross-entropy only), beside the methods' folders
TEACHERS = "teachers"

# (teacher, student); ResNet50 (the ImageNet-style CIFAR ResNet-50 of RepDistiller) is not in the zoo, so its
# pairs (ResNet50->MobileNetV2, ResNet50->vgg8) are left out.
SAME = [
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("vgg13", "vgg8"),
]
CROSS = [
    ("vgg13", "mobilenetv2"),
    ("resnet32x4", "shufflenetv1"),
    ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
]
PAIRS = SAME + CROSS
TEACHER_TOP1 = {"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31, "resnet32x4": 79.42, "vgg13": 74.64}

# Published CIFAR-100 top-1 (RepDistiller README / CRD paper; DKD from mdistiller; ICD from the authors' README).
PUBLISHED: dict[str, dict[tuple[str, str], float]] = {
    "none": {("resnet56", "resnet20"): 69.06, ("resnet110", "resnet20"): 69.06, ("resnet110", "resnet32"): 71.14,
             ("resnet32x4", "resnet8x4"): 72.50, ("wrn_40_2", "wrn_16_2"): 73.26, ("wrn_40_2", "wrn_40_1"): 71.98,
             ("vgg13", "vgg8"): 70.36, ("vgg13", "mobilenetv2"): 64.60, ("resnet32x4", "shufflenetv1"): 70.50,
             ("resnet32x4", "shufflenetv2"): 71.82, ("wrn_40_2", "shufflenetv1"): 70.50},
    "kd": {("resnet56", "resnet20"): 70.66, ("resnet110", "resnet20"): 70.67, ("resnet110", "resnet32"): 73.08,
           ("resnet32x4", "resnet8x4"): 73.33, ("wrn_40_2", "wrn_16_2"): 74.92, ("wrn_40_2", "wrn_40_1"): 73.54,
           ("vgg13", "vgg8"): 72.98, ("vgg13", "mobilenetv2"): 67.37, ("resnet32x4", "shufflenetv1"): 74.07,
           ("resnet32x4", "shufflenetv2"): 74.45, ("wrn_40_2", "shufflenetv1"): 74.83},
    "crd": {("resnet56", "resnet20"): 71.16, ("resnet110", "resnet20"): 71.46, ("resnet110", "resnet32"): 73.48,
            ("resnet32x4", "resnet8x4"): 75.51, ("wrn_40_2", "wrn_16_2"): 75.48, ("wrn_40_2", "wrn_40_1"): 74.14,
            ("vgg13", "vgg8"): 73.94, ("vgg13", "mobilenetv2"): 69.73, ("resnet32x4", "shufflenetv1"): 75.11,
            ("resnet32x4", "shufflenetv2"): 75.65, ("wrn_40_2", "shufflenetv1"): 76.05},
    "crd_kd": {("resnet56", "resnet20"): 71.63, ("resnet110", "resnet20"): 71.56, ("resnet110", "resnet32"): 73.75,
               ("resnet32x4", "resnet8x4"): 75.46, ("wrn_40_2", "wrn_16_2"): 75.64, ("wrn_40_2", "wrn_40_1"): 74.38,
               ("vgg13", "vgg8"): 74.29, ("vgg13", "mobilenetv2"): 69.94, ("resnet32x4", "shufflenetv1"): 75.12,
               ("resnet32x4", "shufflenetv2"): 76.05, ("wrn_40_2", "shufflenetv1"): 76.27},
    "dkd": {("resnet56", "resnet20"): 71.97, ("resnet110", "resnet32"): 74.11, ("resnet32x4", "resnet8x4"): 76.32,
            ("wrn_40_2", "wrn_16_2"): 76.23, ("wrn_40_2", "wrn_40_1"): 74.81, ("vgg13", "vgg8"): 74.68,
            ("resnet32x4", "shufflenetv1"): 76.45, ("wrn_40_2", "shufflenetv1"): 76.70,
            ("vgg13", "mobilenetv2"): 69.71, ("resnet32x4", "shufflenetv2"): 77.07},
    "icd": {("wrn_40_2", "wrn_16_2"): 74.99, ("wrn_40_2", "wrn_40_1"): 73.69, ("resnet56", "resnet20"): 71.18,
            ("resnet110", "resnet20"): 71.00, ("resnet110", "resnet32"): 73.12, ("resnet32x4", "resnet8x4"): 74.23,
            ("vgg13", "vgg8"): 73.22, ("vgg13", "mobilenetv2"): 68.35, ("resnet32x4", "shufflenetv1"): 74.26,
            ("resnet32x4", "shufflenetv2"): 75.26, ("wrn_40_2", "shufflenetv1"): 74.98},
    "icd_kd": {("wrn_40_2", "wrn_16_2"): 76.06, ("wrn_40_2", "wrn_40_1"): 74.76, ("resnet56", "resnet20"): 71.81,
               ("resnet110", "resnet20"): 72.03, ("resnet110", "resnet32"): 73.62, ("resnet32x4", "resnet8x4"): 75.09,
               ("vgg13", "vgg8"): 73.95, ("vgg13", "mobilenetv2"): 69.55, ("resnet32x4", "shufflenetv1"): 75.27,
               ("resnet32x4", "shufflenetv2"): 76.58, ("wrn_40_2", "shufflenetv1"): 76.51},
}  # fmt: skip
# RepDistiller's table for the other 11 benchmark methods, same-architecture pairs in SAME order, then CROSS.
# ReviewKD and OFD from the ReviewKD paper's CIFAR-100 tables (Chen et al., CVPR 2021, Tables 1-2, OFD re-run
# there: OFD's own paper has none of these pairs), the figures the DKD paper repeats (Zhao et al., CVPR 2022,
# Tables 1-2; mdistiller's README has only its KD and DKD rows); neither paper has resnet110->resnet20. KD with
# logit standardization ("KD+Ours") from Sun et al.'s README (CVPR 2024), which has neither ShuffleV1 pair.
# KDSVD has no published CIFAR-100 top-1 for these pairs (not in RepDistiller's or the DKD paper's tables).
_TABLE = {
    "fitnet": [69.21, 68.99, 71.06, 73.50, 73.58, 72.24, 71.02, 64.14, 73.59, 73.54, 73.73],
    "at": [70.55, 70.22, 72.31, 73.44, 74.08, 72.77, 71.43, 59.40, 71.73, 72.73, 73.32],
    "sp": [69.67, 70.04, 72.69, 72.94, 73.83, 72.43, 72.68, 66.30, 73.48, 74.56, 74.52],
    "cc": [69.63, 69.48, 71.48, 72.97, 73.56, 72.21, 70.71, 64.86, 71.14, 71.29, 71.38],
    "vid": [70.38, 70.16, 72.61, 73.09, 74.11, 73.30, 71.23, 65.56, 73.38, 73.40, 73.61],
    "rkd": [69.61, 69.25, 71.82, 71.90, 73.35, 72.22, 71.48, 64.52, 72.28, 73.21, 72.21],
    "pkt": [70.34, 70.25, 72.61, 73.64, 74.54, 73.45, 72.88, 67.13, 74.10, 74.69, 73.89],
    "ab": [69.47, 69.53, 70.98, 73.17, 72.50, 72.38, 70.94, 66.06, 73.55, 74.31, 73.34],
    "ft": [69.84, 70.22, 72.37, 72.86, 73.25, 71.59, 70.58, 61.78, 71.75, 72.50, 72.03],
    "fsp": [69.95, 70.11, 71.89, 72.62, 72.91, None, 70.23, None, None, None, None],
    "nst": [69.60, 69.53, 71.96, 73.30, 73.68, 72.24, 71.53, 58.16, 74.12, 74.68, 74.89],
    "ofd": [70.98, None, 73.23, 74.95, 75.24, 74.33, 73.95, 69.48, 75.98, 76.82, 75.85],
    "reviewkd": [71.89, None, 73.89, 75.63, 76.12, 75.09, 74.84, 70.37, 77.45, 77.78, 77.14],
    "kd_ls": [71.43, 71.48, 74.17, 76.62, 76.11, 74.37, 74.36, 68.61, None, 75.56, None],
}
for _method, _values in _TABLE.items():
    PUBLISHED[_method] = {pair: v for pair, v in zip(PAIRS, _values) if v is not None}
# DIST from the authors' README (hunto/DIST_KD, CIFAR-100 table, mean of their runs; their own recipe, configs/
# strategies/distill/dist_cifar.yaml, which may differ from this schedule). Its other pair, ResNet50 -> MobileNetV2,
# is not in the zoo. OFA-KD publishes no CIFAR-100 figure for these pairs (its CIFAR-100 table is heterogeneous
# ImageNet-style pairs), so its configs say "not published".
PUBLISHED["dist"] = {
    ("wrn_40_2", "wrn_40_1"): 74.43,
    ("resnet56", "resnet20"): 71.75,
    ("resnet32x4", "resnet8x4"): 76.31,
    ("resnet32x4", "shufflenetv1"): 76.34,
    ("resnet32x4", "shufflenetv2"): 77.35,
}

# mdistiller's per-pair DKD beta (CFG.DKD.BETA overrides); the others keep 8.0.
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
}
# mdistiller's ReviewKD loss weight on its one CIFAR-100 config (configs/cifar100/reviewkd.yaml); default 1.0.
REVIEWKD_WEIGHT = {("resnet32x4", "resnet8x4"): 5.0}
# Sun et al.'s base temperature and KD weight where their logged run ("kd,<teacher>,<student>,<T>,<weight>.txt",
# linked from the published number) is not the preset's 2 and 9.
KD_LS_TEMPERATURE = {("vgg13", "vgg8"): 3.0, ("vgg13", "mobilenetv2"): 3.0, ("resnet110", "resnet20"): 4.0}
KD_LS_WEIGHT = {("resnet110", "resnet20"): 12.0}
SMALL_LR_STUDENTS = {"mobilenetv2", "shufflenetv1", "shufflenetv2"}
# FSP pairs layers of equal channel counts only: not applicable to these pairs (N/A in the benchmark table).
FSP_NA = {("wrn_40_2", "wrn_40_1")} | set(CROSS)


def pair_name(teacher: str, student: str) -> str:
    """``resnet56_resnet20``: the file name (without ``.yaml``) of a pair's config."""
    return f"{teacher}_{student}"


_PAIR_BY_NAME = {pair_name(t, s): (t, s) for t, s in PAIRS}


def benchmark_methods() -> list[str]:
    """Every registered method and preset that distills from a teacher, then the baseline ``none``.

    Read from the registry at each call, so a method registered later has configs too. Mutual learning (``dml``)
    trains the student with peers and needs no teacher: there is no teacher -> student pair to reproduce for it.
    """
    from ..methods import METHODS, PRESETS
    from ..methods.registry import BASELINE

    return [
        *sorted(n for n, entry in [*METHODS.items(), *PRESETS.items()] if _needs_teacher(n, entry)),
        BASELINE,
    ]


#: name -> (registry entry, whether its objective needs a teacher): building every objective again for each of the
#: 300 configs would take seconds; a name registered again with another entry is looked at again
_NEEDS_TEACHER: dict[str, tuple[object, bool]] = {}


def _needs_teacher(name: str, entry: object) -> bool:
    from ..methods import DistillationObjective

    seen = _NEEDS_TEACHER.get(name)
    if seen is None or seen[0] is not entry:
        seen = _NEEDS_TEACHER[name] = (entry, DistillationObjective.from_names(name).needs_teacher)
    return seen[1]


def schedule(student: str) -> dict[str, Any]:
    """The benchmarks' optimizer, schedule and bookkeeping (lr 0.01 for the small students, 0.05 otherwise)."""
    return {
        "num_train_epochs": 240,
        "per_device_train_batch_size": 64,
        "per_device_eval_batch_size": 256,
        "learning_rate": 0.01 if student in SMALL_LR_STUDENTS else 0.05,
        "optim": "sgd",
        "optim_args": "momentum=0.9",
        "weight_decay": 5e-4,
        "lr_scheduler_type": "constant",
        "lr_milestones": "150,180,210",
        "lr_decay_rate": 0.1,
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "logging_steps": 100,
        "dataloader_num_workers": 8,
        "report_to": "none",
        "seed": 0,
    }


def dataset() -> dict[str, str]:
    return {
        "dataset": "uoft-cs/cifar100",
        "label_column": "fine_label",
        "train_split": "train",
        "eval_split": "test",
    }


def _config_path(method: str, name: str) -> str:
    return f"recipes/configs/{BENCHMARK}/{method}/{name}.yaml"


def teacher_config(arch: str) -> tuple[str, dict[str, Any]]:
    """The config that trains the teacher ``arch`` with cross-entropy alone."""
    header = (
        f"Train the CIFAR-100 teacher cifar_{arch} with cross-entropy only (the benchmarks' teachers: "
        f"published top-1 {TEACHER_TOP1.get(arch, 'n/a')}).\n"
        f"accelerate launch recipes/distill.py --config {_config_path(TEACHERS, arch)}"
    )
    cfg = {
        **dataset(),
        "teacher": "",  # none (without the key, the recipe's embedded CIFAR-10 teacher would be loaded)
        "student": f"cifar_{arch}",
        "method": "none",
        **schedule(arch),
        "output_dir": f"outputs/{BENCHMARK}/{TEACHERS}/{arch}",
    }
    return header, cfg


def _method_settings(method: str, pair: tuple[str, str]) -> dict[str, Any]:
    """The per-pair hyperparameters the authors' own configs set (see the tables above)."""
    cfg: dict[str, Any] = {}
    if method == "dkd" and pair in DKD_BETA:
        cfg["method_args"] = {"dkd": {"beta": DKD_BETA[pair]}}
    if method == "reviewkd" and pair in REVIEWKD_WEIGHT:
        cfg["method_weights"] = str(REVIEWKD_WEIGHT[pair])
    if method == "kd_ls" and pair in KD_LS_TEMPERATURE:
        cfg["method_args"] = {"kd": {"temperature": KD_LS_TEMPERATURE[pair]}}
    if method == "kd_ls" and pair in KD_LS_WEIGHT:
        cfg["method_weights"] = str(KD_LS_WEIGHT[pair])
    return cfg


def distill_config(method: str, teacher: str, student: str) -> tuple[str, dict[str, Any]]:
    """The config of ``method`` on one pair (``none``: the student trained alone, the baseline)."""
    pair = (teacher, student)
    name = pair_name(teacher, student)
    pub = PUBLISHED.get(method, {}).get(pair)
    header = (
        f"{method}: cifar_{teacher} -> cifar_{student} on CIFAR-100, the benchmark schedule.\n"
        f"Published top-1: {pub if pub is not None else 'not published for this pair'} "
        f"(teacher {TEACHER_TOP1.get(teacher)}, student trained alone {PUBLISHED['none'].get(pair)}).\n"
    )
    # the baseline has no teacher ('': without the key, the recipe's embedded CIFAR-10 teacher would be loaded)
    cfg: dict[str, Any] = {**dataset(), "teacher": ""}
    if method != "none":
        header += f"First train the teacher: {_config_path(TEACHERS, teacher)}\n"
        cfg["teacher"] = f"outputs/{BENCHMARK}/{TEACHERS}/{teacher}"
    header += f"accelerate launch recipes/distill.py --config {_config_path(method, name)}"
    cfg.update({"student": f"cifar_{student}", "method": method})
    cfg.update(_method_settings(method, pair))
    cfg.update(schedule(student))
    cfg["output_dir"] = f"outputs/{BENCHMARK}/{method}/{name}"
    return header, cfg


def _applies(method: str, pair: tuple[str, str]) -> bool:
    return not (method == "fsp" and pair in FSP_NA)


def benchmark_names() -> list[str]:
    """Every config as ``<method>/<pair>`` (``teachers/<arch>`` for the teachers), the layout of the files."""
    teachers = sorted({t for t, _ in PAIRS})
    return [f"{TEACHERS}/{a}" for a in teachers] + [
        f"{m}/{pair_name(*p)}" for m in benchmark_methods() for p in PAIRS if _applies(m, p)
    ]


def benchmark_config(method: str, pair: str) -> tuple[str, dict[str, Any]]:
    """The header (lines, without ``#``) and the arguments of one config.

    Args:
        method: a method or preset name, ``none``, or ``teachers``.
        pair: ``<teacher>_<student>`` (e.g. ``resnet56_resnet20``), or the architecture for ``teachers``.

    Raises:
        ValueError: no such config (one line naming the nearest valid names).
    """
    if method == TEACHERS and pair in {t for t, _ in PAIRS}:
        return teacher_config(pair)
    if pair in _PAIR_BY_NAME and _applies(method, _PAIR_BY_NAME[pair]) and method in benchmark_methods():
        return distill_config(method, *_PAIR_BY_NAME[pair])
    raise ValueError(_unknown_message(method, pair))


def _unknown_message(method: str, pair: str) -> str:
    """One line: why ``method/pair`` has no config, and the nearest names that do."""
    methods = [TEACHERS, *benchmark_methods()]
    pairs = sorted({t for t, _ in PAIRS}) if method == TEACHERS else list(_PAIR_BY_NAME)
    if method in methods:  # the pair is wrong (or the method does not apply to it)
        near = [f"{method}/{p}" for p in difflib.get_close_matches(pair, pairs, n=4, cutoff=0.5)]
    elif pair in pairs:  # the method is wrong
        near = [f"{m}/{pair}" for m in difflib.get_close_matches(method, methods, n=4, cutoff=0.5)]
    else:
        near = difflib.get_close_matches(f"{method}/{pair}", benchmark_names(), n=4, cutoff=0.6)
    valid = set(benchmark_names())
    near = [n for n in near if n in valid]  # fsp has no config for some pairs
    why = ""
    if pair in _PAIR_BY_NAME and not _applies(method, _PAIR_BY_NAME[pair]):
        why = f" ({method} pairs layers of equal channel counts: N/A for this pair in the benchmark table)"
    elif method in _registry_names() and method not in methods:
        why = f" ({method} needs no teacher, so there is no teacher -> student pair to reproduce)"
    listed = [f"methods: {', '.join(methods)}"] * (method not in methods)
    listed += [f"pairs: {', '.join(pairs)}"] * (pair not in pairs)
    parts = [f"nearest: {', '.join(near)}"] * bool(near) + listed
    return (
        f"No CIFAR-100 benchmark config {method}/{pair}{why}; {'; '.join(parts) or 'see benchmark_names()'} "
        f"(recipes/configs/{BENCHMARK}/<method>/<pair>.yaml)."
    )


def _registry_names() -> list[str]:
    from ..methods.registry import known_names

    return known_names()


def render(header: str, cfg: dict[str, Any]) -> str:
    """The YAML text of a config: the header as ``#`` comment lines, then the arguments in order."""
    lines = "".join(f"# {h}\n" for h in header.splitlines())
    return lines + yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def benchmark_files() -> dict[str, str]:
    """Every config's YAML text by its path under the ``cifar100`` folder (``kd/resnet56_resnet20.yaml``)."""
    return {f"{n}.yaml": render(*benchmark_config(*n.split("/"))) for n in benchmark_names()}


def benchmark_name_of(path: str) -> tuple[str, str] | None:
    """``(method, pair)`` when ``path`` names a config of the benchmark folder (``.../cifar100/<method>/<pair>``,
    with ``.yaml``, ``.yml`` or no suffix), else None."""
    parts = PurePath(path).parts
    if len(parts) < 3 or parts[-3] != BENCHMARK:
        return None
    last = PurePath(parts[-1])
    if last.suffix not in ("", ".yaml", ".yml"):
        return None
    return parts[-2], last.stem if last.suffix else last.name


def generated_config(path: str) -> dict[str, Any] | None:
    """The arguments of the benchmark config that ``path`` names, built in memory; None when ``path`` is not under
    a ``cifar100/`` configs folder.

    Raises:
        ValueError: ``path`` is under such a folder but names no config (one line with the nearest names).
    """
    name = benchmark_name_of(path)
    if name is None:
        return None
    try:
        return benchmark_config(*name)[1]
    except ValueError as e:
        raise ValueError(f"Config file {path!r} does not exist. {e}") from None


__all__ = [
    "BENCHMARK",
    "PAIRS",
    "PUBLISHED",
    "benchmark_config",
    "benchmark_files",
    "benchmark_methods",
    "benchmark_name_of",
    "benchmark_names",
    "generated_config",
    "render",
    "schedule",
]

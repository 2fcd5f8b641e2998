"""Dataclass arguments of a distillation run, parsed with ``HfArgumentParser`` (next to ``TrainingArguments``).

Method hyperparameters need no dataclass field each: every keyword argument of a method's ``__init__`` is
accepted as ``--<method>-<name> VALUE`` (e.g. ``--kd-temperature 2``, ``--crd-nce-k 4096``), in YAML/JSON configs as
``method_args: {kd: {temperature: 2}}``, or as ``--method_args '{"kd": {"temperature": 2}}'``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..data.datasets import LABEL_COLUMNS
from ..data.streaming import DEFAULT_SHUFFLE_BUFFER
from ..methods import METHODS, PRESETS, canonical, resolve_objective
from .benchmark_configs import generated_config
from .method_help import method_help, methods_line

logger = logging.getLogger(__name__)


def number_list(value: str | None, flag: str) -> list[float] | None:
    """A comma list of numbers (``"1.0,0.8"``), or None when not given.

    Raises:
        ValueError: an entry is not a number (one line naming ``flag``).
    """
    if value in (None, ""):
        return None
    try:
        return [float(w) for w in str(value).split(",")]
    except ValueError as e:
        raise ValueError(f"{flag} must be a comma list of numbers, got {value!r}") from e


@dataclass
class ModelArguments:
    """Which teacher and student."""

    _argument_group_name = "teacher and student (hf_distill)"  # --help groups the arguments per dataclass

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Teacher: model folder, CIFAR-zoo name (cifar_resnet56), timm name or Hub id. Repeat --teacher "
            "(or give a comma list) to distill an ensemble of teachers."
        },
    )
    teacher_weights: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint file to load into the teacher architecture (.safetensors/.pt/.th); with an "
            "ensemble, a comma list with one entry per teacher (empty: none)."
        },
    )
    ensemble_weights: str | None = field(
        default=None,
        metadata={"help": "Teacher ensemble: comma list of the teachers' weights (default: equal)."},
    )
    ensemble_mode: str = field(
        default="distribution",
        metadata={
            "help": "Teacher ensemble: logit methods distill the teachers' weighted average distribution "
            "('distribution') or average their per-teacher losses ('loss')."
        },
    )
    student: str = field(
        default="cifar_resnet20",
        metadata={
            "help": "Student: CIFAR-zoo name, timm name, model folder or Hub id (initialization checkpoint)."
        },
    )
    student_weights: str | None = field(
        default=None, metadata={"help": "Checkpoint file to initialize the student."}
    )
    allow_untrained_teacher: bool = field(
        default=False,
        metadata={
            "help": "Accept a teacher built from an architecture name without --teacher_weights (random weights)."
        },
    )

    def teachers(self) -> list[str]:
        """The teachers named by ``--teacher``: one, or the entries of a comma list (an existing path is one)."""
        if not self.teacher:
            return []
        if os.path.exists(self.teacher):
            return [self.teacher]
        return [t.strip() for t in str(self.teacher).split(",") if t.strip()]

    def teacher_weight_files(self) -> list[str | None]:
        """``--teacher_weights`` per teacher (None: the teacher's own weights).

        Raises:
            ValueError: an ensemble with another number of entries than teachers.
        """
        n = len(self.teachers())
        if n <= 1 or self.teacher_weights is None:
            return [self.teacher_weights] * max(n, 1)
        files = [f.strip() or None for f in str(self.teacher_weights).split(",")]
        if len(files) != n:
            raise ValueError(
                f"--teacher_weights has {len(files)} entries for {n} teachers: give one per teacher, comma "
                "separated and in the teachers' order (leave an entry empty for a teacher with its own weights)."
            )
        return files

    def ensemble_weight_list(self) -> list[float] | None:
        return number_list(self.ensemble_weights, "--ensemble_weights")


@dataclass
class DataArguments:
    """Which dataset and how to read it."""

    _argument_group_name = "data (hf_distill)"  # --help groups the arguments per dataclass

    dataset: str | None = field(
        default=None,
        metadata={"help": "Local dataset folder, parquet file or Hub id (e.g. uoft-cs/cifar100)."},
    )
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str | None = field(
        default="test", metadata={"help": "Split used for evaluation (empty: none)."}
    )
    image_column: str | None = field(
        default=None, metadata={"help": "Image column (default: detect img/image)."}
    )
    label_column: str | None = field(
        default=None, metadata={"help": f"Label column (default: the first of {', '.join(LABEL_COLUMNS)})."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N evaluation rows."}
    )
    image_size: int | None = field(default=None, metadata={"help": "Input size (default: the student's)."})
    validation_split_size: float = field(
        default=0.1,
        metadata={
            "help": "When the dataset has no --eval_split (a single folder or parquet file): the fraction of the "
            "training rows held out, class by class and seeded, for evaluation (0: evaluate nothing)."
        },
    )
    strict_images: bool = field(
        default=False,
        metadata={"help": "Fail on an image that cannot be decoded instead of skipping it with a warning."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training split as a stream (datasets' streaming=True; a Hub id, a folder of parquet or "
            "arrow shards, or one file) instead of loading it: for datasets larger than memory or disk. Needs "
            "--max_steps; each process reads its own shards; resume is exact (docs/streaming.md)."
        },
    )
    streaming_shuffle_buffer: int = field(
        default=DEFAULT_SHUFFLE_BUFFER,
        metadata={
            "help": "With --streaming: rows in the seeded shuffle buffer (0: shard order only, rows in file order)."
        },
    )
    # The student's own preprocessing (hf_distill/data/transforms.py, docs/preprocessing.md).
    train_transform: str = field(
        default="auto",
        metadata={
            "help": "Image pipeline: 'cifar' (padded random crop + flip; auto for the CIFAR zoo), 'timm' (the "
            "model's timm data config: RandomResizedCrop, flip, crop_pct at eval; auto for timm models), "
            "'processor' (a transformers model's image processor), or 'auto'."
        },
    )
    crop_pct: float | None = field(
        default=None,
        metadata={
            "help": "Eval crop fraction (timm/processor pipelines): resize to size/crop_pct, center crop."
        },
    )


@dataclass
class DistillArguments:
    """Which distillation objective, and how the recipe guards its output folder."""

    _argument_group_name = "distillation (hf_distill)"  # --help groups the arguments per dataclass

    method: str = field(
        default="kd",
        metadata={"help": "Method name, preset (crd_kd) or comma list (kd,crd); 'none' = no distillation."},
    )
    method_weights: str | None = field(
        default=None, metadata={"help": "Comma list of weights, one per method (default: each method's own)."}
    )
    ce_weight: float | None = field(
        default=None, metadata={"help": "Cross-entropy weight (RepDistiller's -r)."}
    )
    method_args: str | None = field(
        default=None,
        metadata={"help": 'JSON: {"method": {"hyperparameter": value}}; or use --<method>-<name>.'},
    )
    lr_milestones: str | None = field(
        default=None,
        metadata={
            "help": "Epochs at which the learning rate is multiplied by lr_decay_rate, e.g. 150,180,210."
        },
    )
    lr_decay_rate: float = field(
        default=0.1, metadata={"help": "Factor of each step decay at lr_milestones."}
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Channels-last memory format for both networks (faster on recent GPUs)."},
    )
    teacher_precision: str = field(
        default="same",
        metadata={
            "help": "Precision of the teacher's forward: 'same' (the run's: float32, or bf16/fp16 autocast with "
            "--bf16/--fp16), 'bf16' or 'fp16' (autocast of the teacher alone: faster where the hardware has fast "
            "half precision; its outputs change slightly, and a teacher cache keys them apart)."
        },
    )
    teacher_cache: str | None = field(
        default=None,
        metadata={
            "help": "Directory of the exact teacher-output cache: runs with the same teacher, data and seed "
            "read the teacher's outputs instead of running it."
        },
    )
    teacher_cache_topk: int | None = field(
        default=None,
        metadata={
            "help": "With --teacher_cache: store only the K largest teacher logits of each row and spread the rest "
            "of the probability uniformly (ImageNet size: ~50 bytes a row at K=5 instead of 4 KB); logit methods "
            "only, and a lossy cache: every run trains on the reconstructed logits. Default: exact."
        },
    )
    baseline: bool = field(
        default=False,
        metadata={"help": "Also train the student without distillation (no teacher) and report the gain."},
    )
    config: str | None = field(default=None, metadata={"help": "YAML/JSON file with any of these arguments."})
    # How the run treats its output folder and its own failures (recipes/distill.py; see README "Reliability").
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output folder that already holds files (the HF examples' flag)."},
    )
    resume_ignore_changes: bool = field(
        default=False,
        metadata={"help": "Resume even when the checkpoint was written with other defining arguments."},
    )
    traceback: bool = field(
        default=False,
        metadata={"help": "On a bad-input error, print the full traceback after the one-line message."},
    )

    def weights(self) -> list[float] | None:
        return number_list(self.method_weights, "--method_weights")

    def milestones(self) -> list[float]:
        if not self.lr_milestones:
            return []
        return [float(m) for m in str(self.lr_milestones).split(",") if m.strip()]

    def kwargs(self) -> dict[str, dict[str, Any]]:
        if not self.method_args:
            return {}
        if isinstance(self.method_args, dict):
            return self.method_args
        try:
            out = json.loads(self.method_args)
        except json.JSONDecodeError as e:
            raise ValueError(
                f'--method_args must be JSON like \'{{"kd": {{"temperature": 2}}}}\': {e}'
            ) from e
        if not isinstance(out, dict) or not all(isinstance(v, dict) for v in out.values()):
            raise ValueError('--method_args must map method names to dicts, e.g. {"kd": {"temperature": 2}}')
        return out


ALL_ARGS = (ModelArguments, DataArguments, DistillArguments, TrainingArguments)


def _convert(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        if value.lower() in ("1", "true", "yes", "y"):
            return True
        if value.lower() in ("0", "false", "no", "n"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_method_flags(extra: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    """Turn leftover ``--<method>-<name> VALUE`` flags into per-method keyword arguments.

    Raises:
        ValueError: an unknown flag (with the method's valid hyperparameters), or a flag of a method not selected.
    """
    out: dict[str, dict[str, Any]] = {}
    i = 0
    known = sorted(METHODS, key=len, reverse=True)
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            raise ValueError(f"Unexpected argument {tok!r}.")
        body, _, inline = tok[2:].partition("=")
        body_n = canonical(body)
        method = next((m for m in known if body_n.startswith(m + "_")), None)
        if method is None:
            raise ValueError(
                f"Unknown argument {tok!r}. Method hyperparameters are given as --<method>-<name> "
                f"(methods: {', '.join(sorted(METHODS))}); see --help for the other arguments."
            )
        name = body_n[len(method) + 1 :]
        params = METHODS[method].hyperparameters()
        renamed = METHODS[
            method
        ].renamed_hyperparameters  # deprecated names: the method warns when it is built
        if name not in params and name not in renamed:
            raise ValueError(
                f"Method {method!r} has no hyperparameter {name!r} (from {tok!r}). Its hyperparameters: "
                f"{', '.join(f'{k}={v!r}' for k, v in params.items()) or 'none'}."
            )
        if inline:
            value = inline
            i += 1
        else:
            if i + 1 >= len(extra):
                raise ValueError(f"{tok} needs a value.")
            value = extra[i + 1]
            i += 2
        if method not in methods:
            raise ValueError(
                f"{tok} was given but method {method!r} is not selected (--method {','.join(methods)})."
            )
        try:
            out.setdefault(method, {})[name] = _convert(value, params[renamed.get(name, name)])
        except ValueError as e:
            raise ValueError(f"Bad value for {tok}: {e}") from e
    return out


def parse_args(
    argv: list[str] | None = None, defaults: dict[str, Any] | None = None
) -> tuple[ModelArguments, DataArguments, DistillArguments, TrainingArguments, dict[str, dict[str, Any]]]:
    """Parse a command line (and an optional ``--config`` file) into the four dataclasses plus method kwargs.

    Precedence: command line > config file > ``defaults`` (the recipe's) > dataclass defaults.
    """
    argv = _repeated_teacher(_bare_resume_flag(list(sys.argv[1:] if argv is None else argv)))
    help_method = _pop_help_method(argv)
    if help_method is not None:
        print(method_help(help_method))
        raise SystemExit(0)
    parser = _parser(argv)
    merged: dict[str, Any] = dict(defaults or {})
    cfg_path = _pop_config(argv)
    if cfg_path is not None:
        merged.update(_read_config(cfg_path))
    file_method_args = merged.pop("method_args", None)
    if isinstance(file_method_args, dict):
        merged["method_args"] = json.dumps(file_method_args)
    elif file_method_args is not None:
        merged["method_args"] = file_method_args
    known_dests = {a.dest for a in parser._actions}
    unknown = sorted(k for k in merged if k not in known_dests)
    if unknown:
        raise ValueError(f"Unknown keys in {cfg_path or 'defaults'}: {', '.join(unknown)}.")
    parser.set_defaults(
        **{
            k: (",".join(map(str, v)) if isinstance(v, list) and k in _LIST_AS_STR else v)
            for k, v in merged.items()
        }
    )
    model_args, data_args, distill_args, training_args, extra = parser.parse_args_into_dataclasses(
        args=argv, return_remaining_strings=True
    )
    distill_args.config = cfg_path
    spec = resolve_objective(distill_args.method, distill_args.weights(), distill_args.ce_weight)
    kwargs = distill_args.kwargs()
    for m, kw in parse_method_flags(extra, list(spec.methods)).items():
        kwargs.setdefault(m, {}).update(kw)
    return model_args, data_args, distill_args, training_args, kwargs


def _parser(argv: list[str]) -> HfArgumentParser:
    """The parser, its --help grouped per dataclass: ours first, ``TrainingArguments`` last; ``--method``'s help
    lists the methods, and ``--method NAME --help`` adds that method's hyperparameters."""
    parser = HfArgumentParser(ALL_ARGS, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.allow_abbrev = False  # --kd-temperature must never be read as an abbreviation of another option
    for action in parser._actions:
        if action.dest == "method":
            action.help = f"{action.help} {methods_line()}. --help_method NAME prints one's hyperparameters."
    # argparse prints groups in creation order; TrainingArguments went into the default group, created first
    default = next(g for g in parser._action_groups if g.title in ("options", "optional arguments"))
    default.title = "training (transformers.TrainingArguments; method hyperparameters: --<method>-<name>)"
    parser._action_groups.remove(default)
    parser._action_groups.append(default)
    if any(a in ("-h", "--help") for a in argv) and "--method" in argv[:-1]:
        names = argv[argv.index("--method") + 1].split(",")
        parser.epilog = "\n".join(method_help(n) for n in names if canonical(n) != "none")
    return parser


def _pop_help_method(argv: list[str]) -> str | None:
    """``--help_method NAME`` (taken out of ``argv``), or None."""
    for i, tok in enumerate(argv):
        if tok == "--help_method" or tok.startswith("--help_method="):
            value = tok.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            if not value:
                raise ValueError("--help_method needs a method or preset name, e.g. --help_method kd.")
            return value
    return None


_LIST_AS_STR = {"method_weights", "lr_milestones", "method", "teacher", "teacher_weights", "ensemble_weights"}
RESUME_FLAG = "--resume_from_checkpoint"


def _repeated_teacher(argv: list[str]) -> list[str]:
    """``--teacher a --teacher b`` (an ensemble) becomes ``--teacher a,b``; a single ``--teacher`` is left as is."""
    values = [argv[i + 1] for i, tok in enumerate(argv[:-1]) if tok == "--teacher"]
    values += [tok.split("=", 1)[1] for tok in argv if tok.startswith("--teacher=")]
    if len(values) < 2:
        return argv
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
        elif tok == "--teacher":
            skip = True
        elif not tok.startswith("--teacher="):
            out.append(tok)
    return out + ["--teacher", ",".join(values)]


def _bare_resume_flag(argv: list[str]) -> list[str]:
    """``--resume_from_checkpoint`` without a value (last, or followed by another option) means ``true``."""
    out = []
    for i, tok in enumerate(argv):
        out.append(tok)
        if tok == RESUME_FLAG and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out.append("true")
    return out


def _pop_config(argv: list[str]) -> str | None:
    for i, tok in enumerate(argv):
        if tok == "--config":
            if i + 1 >= len(argv):
                raise ValueError("--config needs a file path")
            path = argv[i + 1]
            del argv[i : i + 2]
            return path
        if tok.startswith("--config="):
            del argv[i]
            return tok.split("=", 1)[1]
    if len(argv) >= 1 and argv[0].endswith((".yaml", ".yml", ".json")) and os.path.isfile(argv[0]):
        return argv.pop(0)
    return None


def _read_config(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        # the CIFAR-100 benchmark configs are not committed: ``.../cifar100/<method>/<pair>[.yaml]`` is built here
        generated = generated_config(path)
        if generated is None:
            raise ValueError(f"Config file {path!r} does not exist.")
        logger.info(
            "%s is not a file: using the CIFAR-100 benchmark config of that name, built in memory.", path
        )
        return generated
    with open(path) as f:
        data = json.load(f) if path.endswith(".json") else yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"Config file {path!r} must hold a mapping of argument names to values.")
    return data


def describe_presets() -> dict[str, str]:
    return {k: p.description for k, p in PRESETS.items()}

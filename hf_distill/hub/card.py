"""Model cards for distilled students: what a run did, collected once, rendered with ``huggingface_hub``.

One code path serves the trainer hook (``DistillationTrainer.create_model_card`` / ``save_model``) and
``recipes/push.py``: :func:`collect_summary` turns a trainer into a :class:`DistillationSummary` (like transformers'
``modelcard.TrainingSummary``), the summary is stored next to the weights (``distillation_summary.json``) so that a
later push can rebuild the card without the trainer, and :func:`build_card` renders the template
``model_cards/student.md.jinja`` into a :class:`huggingface_hub.ModelCard`.

The metadata follows the Hub's conventions for a distilled model: ``base_model`` is the student's initialization
checkpoint (never the teacher, which would file the student as a fine-tune of the teacher); the teacher, the
methods and their hyperparameters, the teacher's and the baseline's accuracy and the gain go into a ``distillation:``
block and the card body; ``model-index`` holds the student's accuracy (top-1 and top-5) and, as separately typed
metrics, the teacher's and the no-distillation baseline's.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .shipped import template_path as template_path_default

SUMMARY_NAME = "distillation_summary.json"
TRAINING_ARGS_JSON = "training_args.json"  # the run's TrainingArguments as JSON (see summary_from_folder)
PLOT_NAME = "training_curves.png"
CARD_NAME = "README.md"
#: Put in every card body written by hf_distill, so a regenerated card may replace it (and only it).
CARD_MARKER = "<!-- This model card was written by hf_distill. -->"
TASK = "image-classification"
DEFAULT_LICENSE = "apache-2.0"
#: ``model-index`` metric types: the student's own results use the standard ``accuracy``; the teacher's and the
#: baseline's carry their own types so leaderboards never mistake them for the student's.
METRIC_TYPES = {
    "accuracy": ("accuracy", "Top-1 accuracy"),
    "top5_accuracy": ("top5_accuracy", "Top-5 accuracy"),
    "teacher_accuracy": ("teacher_accuracy", "Teacher top-1 accuracy"),
    "teacher_top5_accuracy": ("teacher_top5_accuracy", "Teacher top-5 accuracy"),
    "baseline_accuracy": ("baseline_accuracy", "No-distillation baseline top-1 accuracy"),
    "baseline_top5_accuracy": ("baseline_top5_accuracy", "No-distillation baseline top-5 accuracy"),
}


class CardError(ValueError):
    """A model card that cannot be read or updated; the message says which file and why."""


# -- the summary ------------------------------------------------------------------------------------------------
@dataclass
class MethodSummary:
    """One distillation method of the objective, as shown in the card.

    Args:
        name: registry name (``kd``).
        weight: its weight in the objective.
        hyperparameters: its hyperparameters (``{"temperature": 4.0}``).
        summary: one line saying what is matched.
        paper: short reference.
        citation: BibTeX entry.
    """

    name: str
    weight: float
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""
    citation: str = ""


@dataclass
class DistillationSummary:
    """Everything a model card says about a distillation run (collected by :func:`collect_summary`).

    Accuracies are fractions in [0, 1]; ``None`` means unknown. ``train_runtime`` is in seconds.
    """

    model_name: str
    student_class: str = ""
    student_architecture: str | None = None
    library_name: str = "transformers"
    base_model: str | None = None
    init_checkpoint: str | None = None
    repo_id: str | None = None
    remote_code: bool = False
    teacher: str | None = None
    teacher_class: str | None = None
    teacher_architecture: str | None = None
    ce_weight: float = 1.0
    methods: list[MethodSummary] = field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    num_train_samples: int | None = None
    num_eval_samples: int | None = None
    label_names: list[str] = field(default_factory=list)
    image_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    num_parameters: int | None = None
    teacher_num_parameters: int | None = None
    accuracy: float | None = None
    top5_accuracy: float | None = None
    teacher_accuracy: float | None = None
    teacher_top5_accuracy: float | None = None
    baseline_accuracy: float | None = None
    baseline_top5_accuracy: float | None = None
    training: dict[str, Any] = field(default_factory=dict)
    train_runtime: float | None = None
    global_step: int | None = None
    epochs: float | None = None
    hardware: str | None = None
    num_processes: int = 1
    precision: str = "fp32"
    framework_versions: dict[str, str] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    license: str | None = None
    tags: list[str] = field(default_factory=list)
    created: str | None = None

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def method_names(self) -> list[str]:
        """Names of the distillation methods (empty for a plain, no-distillation run)."""
        return [m.name for m in self.methods]

    @property
    def is_distilled(self) -> bool:
        """Whether a teacher was distilled into the student (False for ``--method none``)."""
        return bool(self.methods)

    @property
    def gain(self) -> float | None:
        """Top-1 accuracy gained over the no-distillation baseline (None when either is unknown)."""
        if self.accuracy is None or self.baseline_accuracy is None:
            return None
        return self.accuracy - self.baseline_accuracy

    @property
    def top5_gain(self) -> float | None:
        """Top-5 accuracy gained over the baseline (None when either is unknown)."""
        if self.top5_accuracy is None or self.baseline_top5_accuracy is None:
            return None
        return self.top5_accuracy - self.baseline_top5_accuracy

    # -- persistence ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (non-finite numbers become None)."""
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DistillationSummary:
        """Rebuild a summary from :meth:`to_dict` output (unknown keys are ignored).

        Args:
            data: the dict.

        Returns:
            The summary.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        kw["methods"] = [
            MethodSummary(
                **{k: v for k, v in m.items() if k in {f.name for f in dataclasses.fields(MethodSummary)}}
            )
            for m in data.get("methods") or []
        ]
        return cls(**kw)

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``distillation_summary.json`` into ``folder``.

        Args:
            folder: the model folder.

        Returns:
            The path written.
        """
        path = os.path.join(folder, SUMMARY_NAME)
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> DistillationSummary:
        """Read ``distillation_summary.json`` from a model folder.

        Args:
            folder: the model folder.

        Returns:
            The summary.

        Raises:
            FileNotFoundError: the folder has no summary (it was not written by hf_distill's trainer hook).
        """
        path = os.path.join(folder, SUMMARY_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{folder} has no {SUMMARY_NAME}: it was not saved by DistillationTrainer with the Hub integration."
            )
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _json_safe(obj.item())
    return str(obj)


# -- collecting from a trainer -------------------------------------------------------------------------------------
def model_reference(name_or_path: str | None) -> str | None:
    """How a model that was loaded from ``name_or_path`` is referred to in a card.

    A Hub id stays as it is; a Hub cache snapshot folder (``.../models--org--name/snapshots/<sha>``) becomes
    ``org/name``; any other local folder becomes its folder name; an empty name (a model built from scratch,
    e.g. a CIFAR-zoo name or a timm architecture) gives None.

    Args:
        name_or_path: ``config._name_or_path`` of the model.

    Returns:
        The reference, or None.
    """
    if not name_or_path:
        return None
    s = str(name_or_path).rstrip("/\\")
    m = re.search(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]", s + "/")
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if os.path.isabs(s) or os.path.exists(s) or s.startswith("."):
        return os.path.basename(os.path.normpath(s)) or None
    return s.removeprefix("hf-hub:")


def hub_reference(name_or_path: str | None) -> str | None:
    """:func:`model_reference` if ``name_or_path`` names a Hub model (an id or a Hub cache snapshot), else None."""
    ref = model_reference(name_or_path)
    if ref is None:
        return None
    s = str(name_or_path)
    local = os.path.isabs(s) or os.path.exists(s) or s.startswith(".")
    return ref if not local or "/snapshots/" in s.replace("\\", "/") else None


def _unwrap(model: Any) -> Any:
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _architecture(model: Any) -> str | None:
    cfg = getattr(model, "config", None)
    arch = getattr(cfg, "architecture", None)
    if arch:
        return str(arch)
    mt = getattr(cfg, "model_type", None)
    return str(mt) if mt else None


def _num_params(model: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in model.parameters()))
    except (AttributeError, TypeError):  # a stand-in object without parameters
        return None


def is_timm_student(model: Any) -> bool:
    """Whether ``model`` is transformers' ``TimmWrapperForImageClassification`` (exported in timm's format)."""
    return type(model).__name__ == "TimmWrapperForImageClassification" and hasattr(model, "timm_model")


def uses_remote_code(model: Any) -> bool:
    """Whether ``model`` is published as custom code (``auto_map``): the CIFAR zoo."""
    cfg = getattr(model, "config", None)
    return bool(
        getattr(cfg, "model_type", "") == "hf_distill_cifar" or getattr(type(model), "_auto_class", None)
    )


def _label_names(model: Any) -> list[str]:
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def _last(log_history: list[dict[str, Any]], key: str) -> Any:
    for rec in reversed(log_history):
        if key in rec and rec[key] is not None:
            return rec[key]
    return None


def _split_label(ds: Any) -> str | None:
    """``test``, or ``test[:64]`` when the dataset holds only the first rows of its split."""
    split = getattr(ds, "split", None)
    if not split:
        return None
    splits = getattr(getattr(ds, "info", None), "splits", None) or {}
    total = getattr(splits.get(str(split)), "num_examples", None) if hasattr(splits, "get") else None
    n = len(ds) if hasattr(ds, "__len__") else None
    if total and n is not None and n < total:
        return f"{split}[:{n}]"
    return str(split)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _hardware(args: Any) -> tuple[str, int, str]:
    import torch

    device = getattr(args, "device", None)
    dtype = getattr(device, "type", str(device) if device is not None else "cpu")
    if dtype == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device)
        kind = "GPU"
    elif dtype == "mps":
        name, kind = "Apple MPS", "GPU"
    elif dtype == "xpu":
        name, kind = "Intel XPU", "GPU"
    else:
        name = _cpu_name()
        kind = f"CPU ({os.cpu_count()} cores)"
    n = int(getattr(args, "world_size", 1) or 1)
    precision = "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "fp32"
    if getattr(args, "tf32", None):
        precision += " (tf32 matmuls)"
    return f"{kind}: {name}", n, precision


def _framework_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("hf_distill", "transformers", "torch", "timm", "datasets", "accelerate", "huggingface_hub"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _training_hyperparameters(trainer: Any) -> dict[str, Any]:
    a = trainer.args
    world = int(getattr(a, "world_size", 1) or 1)
    hp: dict[str, Any] = {
        "learning_rate": a.learning_rate,
        "train_batch_size": a.per_device_train_batch_size,
        "eval_batch_size": a.per_device_eval_batch_size,
        "gradient_accumulation_steps": a.gradient_accumulation_steps,
        "total_train_batch_size": a.per_device_train_batch_size * a.gradient_accumulation_steps * world,
        "optimizer": str(getattr(a.optim, "value", a.optim)) + (f" ({a.optim_args})" if a.optim_args else ""),
        "weight_decay": a.weight_decay,
        "seed": a.seed,
    }
    milestones = list(getattr(trainer, "lr_milestones", []) or [])
    if milestones:
        hp["lr_scheduler"] = f"step decay x{getattr(trainer, 'lr_decay_rate', 0.1)} at epochs {milestones}"
    else:
        hp["lr_scheduler"] = str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type))
    if a.max_steps and a.max_steps > 0:
        hp["max_steps"] = a.max_steps
    else:
        hp["num_epochs"] = a.num_train_epochs
    warm = getattr(a, "warmup_steps", 0) or getattr(a, "warmup_ratio", 0)
    if warm:
        hp["warmup"] = warm
    return hp


def collect_summary(trainer: Any, **overrides: Any) -> DistillationSummary:
    """Collect what the card needs from a :class:`~hf_distill.DistillationTrainer` (after ``train``/``evaluate``).

    Args:
        trainer: the trainer.
        **overrides: any :class:`DistillationSummary` field to set explicitly, e.g. ``dataset="uoft-cs/cifar100"``,
            ``base_model=...``, ``baseline_accuracy=0.69``, ``license="mit"``, ``repo_id="me/student"``,
            ``teacher="me/teacher"``. ``tags`` are added to the default tags.

    Returns:
        The summary.
    """
    container = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
    student = _unwrap(container.student)
    objective = container.objective
    teacher = _unwrap(trainer.teacher) if getattr(trainer, "teacher", None) is not None else None
    desc = objective.describe()
    methods = []
    for name, info in desc["methods"].items():
        cls = type(objective.methods[name])
        hp = {k: v for k, v in info.items() if k != "weight"}
        methods.append(
            MethodSummary(
                name=name,
                weight=float(info["weight"]),
                hyperparameters=_json_safe(hp),
                summary=getattr(cls, "summary", "") or "",
                paper=getattr(cls, "paper", "") or "",
                citation=getattr(cls, "citation", "") or "",
            )
        )
    history = [dict(r) for r in trainer.state.log_history]
    teacher_metrics = getattr(trainer, "_teacher_metrics", None) or {}
    spec = getattr(trainer, "student_input", None)
    train_ds, eval_ds = trainer.train_dataset, trainer.eval_dataset
    dataset = model_reference(getattr(trainer, "dataset_id", None))
    if dataset is None:
        info = getattr(train_ds, "info", None)
        dataset = getattr(info, "dataset_name", None) if info is not None else None
    hardware, nproc, precision = _hardware(trainer.args)
    model_name = overrides.pop("model_name", None) or (
        (trainer.args.hub_model_id or "").split("/")[-1] or Path(trainer.args.output_dir).name
    )
    extra_tags = list(overrides.pop("tags", None) or [])
    summary = DistillationSummary(
        model_name=model_name,
        student_class=type(student).__name__,
        student_architecture=_architecture(student),
        library_name="timm" if is_timm_student(student) else "transformers",
        # base_model files the student under its initialization on the Hub: only a Hub id qualifies; a local
        # folder is named in the card body instead (init_checkpoint).
        base_model=hub_reference(getattr(getattr(student, "config", None), "_name_or_path", None)),
        init_checkpoint=model_reference(getattr(getattr(student, "config", None), "_name_or_path", None)),
        repo_id=trainer.args.hub_model_id,
        remote_code=uses_remote_code(student),
        teacher=model_reference(getattr(getattr(teacher, "config", None), "_name_or_path", None))
        if teacher is not None
        else None,
        teacher_class=type(teacher).__name__ if teacher is not None else None,
        teacher_architecture=_architecture(teacher) if teacher is not None else None,
        ce_weight=float(desc["ce_weight"]),
        methods=methods,
        dataset=dataset,
        dataset_config=getattr(getattr(train_ds, "info", None), "config_name", None),
        train_split=str(train_ds.split) if getattr(train_ds, "split", None) else None,
        eval_split=_split_label(eval_ds),
        num_train_samples=len(train_ds) if train_ds is not None and hasattr(train_ds, "__len__") else None,
        num_eval_samples=len(eval_ds) if eval_ds is not None and hasattr(eval_ds, "__len__") else None,
        label_names=_label_names(student),
        image_size=spec.image_size if spec is not None else None,
        image_mean=[float(v) for v in spec.mean] if spec is not None else None,
        image_std=[float(v) for v in spec.std] if spec is not None else None,
        num_parameters=_num_params(student),
        teacher_num_parameters=_num_params(teacher) if teacher is not None else None,
        accuracy=_last(history, "eval_accuracy"),
        top5_accuracy=_last(history, "eval_top5_accuracy"),
        teacher_accuracy=teacher_metrics.get("accuracy", _last(history, "eval_teacher_accuracy")),
        teacher_top5_accuracy=teacher_metrics.get(
            "top5_accuracy", _last(history, "eval_teacher_top5_accuracy")
        ),
        training=_training_hyperparameters(trainer),
        train_runtime=_last(history, "train_runtime"),
        global_step=int(trainer.state.global_step or 0),
        epochs=float(trainer.state.epoch) if trainer.state.epoch is not None else None,
        hardware=hardware,
        num_processes=nproc,
        precision=precision,
        framework_versions=_framework_versions(),
        log_history=_json_safe(history),
        created=datetime.date.today().isoformat(),
    )
    summary.tags = default_tags(summary) + [t for t in extra_tags if t not in default_tags(summary)]
    return _apply_overrides(summary, overrides)


def _apply_overrides(summary: DistillationSummary, overrides: dict[str, Any]) -> DistillationSummary:
    names = {f.name for f in dataclasses.fields(DistillationSummary)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(
            f"Unknown DistillationSummary fields: {', '.join(unknown)}. Valid: {', '.join(sorted(names))}."
        )
    tags = overrides.pop("tags", None)
    kw = {k: v for k, v in overrides.items() if v is not None}
    out = dataclasses.replace(summary, **kw)
    if tags:
        out.tags = list(dict.fromkeys([*out.tags, *tags]))
    return out


def default_tags(summary: DistillationSummary) -> list[str]:
    """``image-classification``, ``knowledge-distillation``, ``hf_distill``, the method names, the library."""
    tags = [TASK, "hf_distill"]
    if summary.is_distilled:
        tags.insert(1, "knowledge-distillation")
    tags += summary.method_names
    tags.append(summary.library_name)
    if summary.library_name == "timm":
        tags.append("transformers")
    if summary.remote_code:
        tags.append("custom_code")
    return list(dict.fromkeys(tags))


def _latest_checkpoint(folder: str) -> str | None:
    best, step = None, -1
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = re.fullmatch(r"checkpoint-(\d+)", name)
        if m and int(m.group(1)) > step and os.path.isdir(os.path.join(folder, name)):
            best, step = os.path.join(folder, name), int(m.group(1))
    return best


def _read_json_file(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summary_from_folder(folder: str | os.PathLike, **overrides: Any) -> DistillationSummary:
    """A summary for a model folder: its ``distillation_summary.json`` when there is one, else rebuilt from the
    files a run leaves (``config.json``, ``preprocessor_config.json``, ``trainer_state.json`` of the folder or its
    last checkpoint, ``distill_results.json`` of ``recipes/distill.py``, ``training_args.json``). Only JSON is read:
    ``training_args.bin`` is a pickle and is never loaded.

    Args:
        folder: the model folder (a training ``output_dir``).
        **overrides: :class:`DistillationSummary` fields to set (``teacher``, ``dataset``, ``base_model``, ...).

    Returns:
        The summary.

    Raises:
        FileNotFoundError: the folder has no ``config.json``.
    """
    folder = str(folder)
    if os.path.isfile(os.path.join(folder, SUMMARY_NAME)):
        return _apply_overrides(DistillationSummary.load(folder), dict(overrides))
    config = _read_json_file(os.path.join(folder, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    timm_format = "pretrained_cfg" in config and "architecture" in config
    is_timm = timm_format or config.get("model_type") == "timm_wrapper"
    if config.get("id2label"):
        labels = [str(config["id2label"][k]) for k in sorted(config["id2label"], key=int)]
    else:
        labels = [str(x) for x in config.get("label_names") or []]
    size = mean = std = None
    proc = _read_json_file(os.path.join(folder, "preprocessor_config.json"))
    pc = config.get("pretrained_cfg") or {}
    if proc and proc.get("image_mean"):
        s = proc.get("size") or {}
        size = s.get("height") or s.get("shortest_edge") if isinstance(s, dict) else s
        mean, std = proc["image_mean"], proc["image_std"]
    elif config.get("image_mean"):
        size, mean, std = config.get("image_size"), config["image_mean"], config["image_std"]
    elif pc.get("mean"):
        size, mean, std = pc.get("input_size", [3, 224, 224])[-1], pc["mean"], pc["std"]
    ckpt = _latest_checkpoint(folder)
    state = _read_json_file(os.path.join(folder, "trainer_state.json")) or (
        _read_json_file(os.path.join(ckpt, "trainer_state.json")) if ckpt else None
    )
    history = list((state or {}).get("log_history") or [])
    results = _read_json_file(os.path.join(folder, "distill_results.json")) or {}
    objective = results.get("objective") or {"ce_weight": 1.0, "methods": {}}
    methods = []
    try:
        from ..losses import METHODS
    except ImportError:  # pragma: no cover - the library itself is broken
        METHODS = {}
    for name, info in (objective.get("methods") or {}).items():
        cls = METHODS.get(name)
        methods.append(
            MethodSummary(
                name=name,
                weight=float(info.get("weight", 1.0)),
                hyperparameters={k: v for k, v in info.items() if k != "weight"},
                summary=getattr(cls, "summary", ""),
                paper=getattr(cls, "paper", ""),
                citation=getattr(cls, "citation", ""),
            )
        )
    training: dict[str, Any] = {}
    precision = "fp32"
    # Hyperparameters come from JSON only. ``training_args.bin`` is a pickle: unpickling a file from a folder a
    # user points us at would run whatever code it holds, so it is never read.
    args = _read_json_file(os.path.join(folder, TRAINING_ARGS_JSON)) or {}
    if args:
        training = {
            "learning_rate": args.get("learning_rate"),
            "train_batch_size": args.get("per_device_train_batch_size"),
            "gradient_accumulation_steps": args.get("gradient_accumulation_steps"),
            "optimizer": str(args.get("optim"))
            + (f" ({args['optim_args']})" if args.get("optim_args") else ""),
            "weight_decay": args.get("weight_decay"),
            "lr_scheduler": str(args.get("lr_scheduler_type")),
            "seed": args.get("seed"),
        }
        precision = "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"
    minutes = results.get("train_minutes")
    summary = DistillationSummary(
        model_name=os.path.basename(os.path.normpath(folder)),
        student_class=(
            config.get("architectures") or ["TimmWrapperForImageClassification" if is_timm else ""]
        )[0],
        student_architecture=config.get("architecture") or config.get("model_type"),
        library_name="timm" if is_timm else "transformers",
        remote_code=config.get("model_type") == "hf_distill_cifar",
        ce_weight=float(objective.get("ce_weight", 1.0)),
        methods=methods,
        label_names=labels,
        image_size=int(size) if size else None,
        image_mean=[float(v) for v in mean] if mean else None,
        image_std=[float(v) for v in std] if std else None,
        accuracy=results.get("eval_accuracy", _last(history, "eval_accuracy")),
        top5_accuracy=results.get("eval_top5_accuracy", _last(history, "eval_top5_accuracy")),
        teacher_accuracy=results.get("eval_teacher_accuracy", _last(history, "eval_teacher_accuracy")),
        teacher_top5_accuracy=results.get(
            "eval_teacher_top5_accuracy", _last(history, "eval_teacher_top5_accuracy")
        ),
        training=training,
        train_runtime=_last(history, "train_runtime") or (60 * minutes if minutes is not None else None),
        global_step=(state or {}).get("global_step"),
        epochs=(state or {}).get("epoch"),
        precision=precision,
        framework_versions=_framework_versions(),
        log_history=_json_safe(history),
        created=datetime.date.today().isoformat(),
    )
    extra_tags = list(overrides.pop("tags", None) or [])
    summary.tags = list(dict.fromkeys(default_tags(summary) + extra_tags))
    return _apply_overrides(summary, dict(overrides))


# -- metadata ----------------------------------------------------------------------------------------------------
def eval_results(
    summary: DistillationSummary,
    dataset_name: str | None = None,
    source: tuple[str, str] | None = None,
) -> list[EvalResult]:
    """The ``model-index`` entries of a summary: the student's accuracy and top-5, the teacher's and the baseline's.

    Args:
        summary: the run.
        dataset_name: display name of the dataset (default: its id).
        source: optional (name, url) of where the numbers come from.

    Returns:
        A list of :class:`huggingface_hub.EvalResult` (empty without a dataset or without any accuracy).
    """
    if not summary.dataset:
        return []
    values = {
        "accuracy": summary.accuracy,
        "top5_accuracy": summary.top5_accuracy,
        "teacher_accuracy": summary.teacher_accuracy,
        "teacher_top5_accuracy": summary.teacher_top5_accuracy,
        "baseline_accuracy": summary.baseline_accuracy,
        "baseline_top5_accuracy": summary.baseline_top5_accuracy,
    }
    out = []
    for key, value in values.items():
        if value is None:
            continue
        mtype, mname = METRIC_TYPES[key]
        if key.startswith("teacher") and summary.teacher:
            mname = f"{mname} ({summary.teacher})"
        out.append(
            EvalResult(
                task_type=TASK,
                task_name="Image Classification",
                dataset_type=summary.dataset,
                dataset_name=dataset_name or summary.dataset,
                dataset_config=summary.dataset_config
                if summary.dataset_config not in (None, "default")
                else None,
                dataset_split=summary.eval_split,
                metric_type=mtype,
                metric_name=mname,
                metric_value=round(float(value), 6),
                source_name=source[0] if source else None,
                source_url=source[1] if source else None,
            )
        )
    return out


def distillation_metadata(summary: DistillationSummary) -> dict[str, Any]:
    """The ``distillation:`` metadata block (teacher, accuracies, methods, weights, hyperparameters, gain)."""
    block: dict[str, Any] = {
        "teacher": summary.teacher,
        "teacher_accuracy": summary.teacher_accuracy,
        "teacher_top5_accuracy": summary.teacher_top5_accuracy,
        "methods": summary.method_names or ["none"],
        "ce_weight": summary.ce_weight,
        "weights": {m.name: m.weight for m in summary.methods},
        "hyperparameters": {m.name: m.hyperparameters for m in summary.methods},
        "student_accuracy": summary.accuracy,
        "student_top5_accuracy": summary.top5_accuracy,
        "baseline_accuracy": summary.baseline_accuracy,
        "gain": None if summary.gain is None else round(summary.gain, 6),
        "library": "hf_distill",
    }
    return {k: _json_safe(v) for k, v in block.items() if v not in (None, {}, [])}


def card_data(summary: DistillationSummary, dataset_name: str | None = None) -> ModelCardData:
    """The YAML metadata of the student's card.

    Args:
        summary: the run.
        dataset_name: display name of the dataset in ``model-index``.

    Returns:
        A :class:`huggingface_hub.ModelCardData`.
    """
    results = eval_results(summary, dataset_name)
    metrics = ["accuracy"] + (["top5_accuracy"] if summary.top5_accuracy is not None else [])
    return ModelCardData(
        base_model=summary.base_model,
        datasets=[summary.dataset] if summary.dataset else None,
        library_name=summary.library_name,
        license=summary.license or DEFAULT_LICENSE,
        metrics=metrics,
        model_name=summary.model_name,
        pipeline_tag=TASK,
        tags=summary.tags or default_tags(summary),
        eval_results=results or None,
        distillation=distillation_metadata(summary),
    )


# -- the card body ------------------------------------------------------------------------------------------------
def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def _signed_pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.2f} pp"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = float(seconds)
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def _snippet_start(summary: DistillationSummary, model_id: str | None, where: str) -> tuple[str, int]:
    """The first line of a snippet (``model_id = "..."  # <where>``) and the demo image size."""
    model_id = model_id or summary.repo_id or summary.model_name
    return f'model_id = "{model_id}"  # {where}\n', summary.image_size or 224


def _demo_image(size: int) -> str:
    return f'image = Image.new("RGB", ({size}, {size}), (128, 64, 32))  # or Image.open("your_image.png")\n'


def usage_snippet(summary: DistillationSummary, model_id: str | None = None) -> str:
    """Python code that loads the student and classifies one image (transformers API; runs as it is).

    Args:
        summary: the run.
        model_id: the Hub id (default: ``summary.repo_id`` or the model name).

    Returns:
        The code (no Markdown fence). Its first line is ``model_id = "..."``.
    """
    first, size = _snippet_start(summary, model_id, "the Hub id, or a local folder with these files")
    remote = ", trust_remote_code=True" if summary.remote_code else ""
    return (
        f"{first}\n"
        "import torch\n"
        "from PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
        "\n"
        "processor = AutoImageProcessor.from_pretrained(model_id)\n"
        f"model = AutoModelForImageClassification.from_pretrained(model_id{remote}).eval()\n"
        "\n"
        f"{_demo_image(size)}"
        'inputs = processor(images=image.convert("RGB"), return_tensors="pt")\n'
        "with torch.no_grad():\n"
        "    logits = model(**inputs).logits\n"
        "probs = logits.softmax(-1)[0]\n"
        "top = probs.topk(min(5, probs.numel()))\n"
        "for p, i in zip(top.values.tolist(), top.indices.tolist()):\n"
        '    print(f"{model.config.id2label[i]}: {p:.3f}")\n'
    )


def timm_snippet(summary: DistillationSummary, model_id: str | None = None) -> str:
    """Like :func:`usage_snippet`, for a timm-format student: ``timm.create_model("hf-hub:...")``."""
    first, size = _snippet_start(summary, model_id, "the Hub id")
    return (
        f"{first}\n"
        "import timm\n"
        "import torch\n"
        "from PIL import Image\n"
        "\n"
        'model = timm.create_model(f"hf-hub:{model_id}", pretrained=True).eval()\n'
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))\n"
        f"{_demo_image(size)}"
        "with torch.no_grad():\n"
        '    probs = model(transform(image.convert("RGB")).unsqueeze(0)).softmax(-1)[0]\n'
        'labels = model.pretrained_cfg.get("label_names") or [str(i) for i in range(probs.numel())]\n'
        "print(labels[int(probs.argmax())], float(probs.max()))\n"
    )


def _results_rows(summary: DistillationSummary) -> list[dict[str, str]]:
    rows = [
        {
            "model": f"**{summary.model_name}** (this student)",
            "top1": _pct(summary.accuracy),
            "top5": _pct(summary.top5_accuracy),
            "note": ", ".join(summary.method_names) or "no distillation",
        }
    ]
    if summary.teacher_accuracy is not None or summary.teacher:
        rows.append(
            {
                "model": f"{summary.teacher or 'teacher'} (teacher)",
                "top1": _pct(summary.teacher_accuracy),
                "top5": _pct(summary.teacher_top5_accuracy),
                "note": summary.teacher_architecture or "",
            }
        )
    if summary.baseline_accuracy is not None:
        rows.append(
            {
                "model": "same student trained without distillation (baseline)",
                "top1": _pct(summary.baseline_accuracy),
                "top5": _pct(summary.baseline_top5_accuracy),
                "note": "cross-entropy only",
            }
        )
    return rows


def template_variables(summary: DistillationSummary, plot_file: str | None = None) -> dict[str, Any]:
    """Everything the Jinja template reads, precomputed (tables, snippets, formatted numbers).

    Args:
        summary: the run.
        plot_file: file name of the training-curve image in the repository, if there is one.

    Returns:
        A dict of template variables.
    """
    hp_rows = [{"name": k, "value": _fmt(v)} for k, v in summary.training.items()]
    hp_rows.append({"name": "cross-entropy weight", "value": _fmt(summary.ce_weight)})
    methods = [
        {
            "name": m.name,
            "weight": _fmt(m.weight),
            "hyperparameters": _fmt(m.hyperparameters) or "–",
            "summary": m.summary,
            "paper": m.paper,
            "citation": m.citation,
        }
        for m in summary.methods
    ]
    return {
        "s": summary,
        "marker": CARD_MARKER,
        "methods": methods,
        "method_list": ", ".join(f"`{m.name}`" for m in summary.methods) or "none (cross-entropy only)",
        "results_rows": _results_rows(summary),
        "hp_rows": hp_rows,
        "accuracy": _pct(summary.accuracy),
        "top5": _pct(summary.top5_accuracy),
        "teacher_accuracy": _pct(summary.teacher_accuracy),
        "baseline_accuracy": _pct(summary.baseline_accuracy),
        "gain": _signed_pct(summary.gain),
        "runtime": _duration(summary.train_runtime),
        "num_parameters": f"{summary.num_parameters / 1e6:.2f} M" if summary.num_parameters else "unknown",
        "teacher_num_parameters": f"{summary.teacher_num_parameters / 1e6:.2f} M"
        if summary.teacher_num_parameters
        else None,
        "usage": usage_snippet(summary),
        "timm_usage": timm_snippet(summary) if summary.library_name == "timm" else None,
        "plot_file": plot_file,
        "label_preview": ", ".join(summary.label_names[:10])
        + (f", … ({len(summary.label_names)} classes)" if len(summary.label_names) > 10 else ""),
        "versions": ", ".join(f"{k} {v}" for k, v in summary.framework_versions.items()),
        "epochs": f"{summary.epochs:g}" if summary.epochs is not None else "unknown",
    }


def build_card(
    source: Any,
    template_path: str | os.PathLike | None = None,
    plot_file: str | None = None,
    dataset_name: str | None = None,
    **overrides: Any,
) -> ModelCard:
    """Render the student's model card.

    Args:
        source: a :class:`~hf_distill.DistillationTrainer` or a :class:`DistillationSummary`.
        template_path: Jinja template (default: ``model_cards/student.md.jinja``).
        plot_file: file name of the training-curve PNG in the repository folder (shown in the card).
        dataset_name: display name of the dataset in ``model-index``.
        **overrides: :class:`DistillationSummary` fields to set (see :func:`collect_summary`).

    Returns:
        The :class:`huggingface_hub.ModelCard`.
    """
    summary = as_summary(source, **overrides)
    path = Path(template_path) if template_path is not None else template_path_default()
    data = card_data(summary, dataset_name)
    card = ModelCard.from_template(data, template_path=str(path), **template_variables(summary, plot_file))
    # Re-parse: Jinja may leave trailing blank lines; the card text is what gets written and pushed.
    return ModelCard(str(card).rstrip() + "\n")


def as_summary(source: Any, **overrides: Any) -> DistillationSummary:
    """A :class:`DistillationSummary` from a trainer (collected) or a summary (with ``overrides`` applied).

    Args:
        source: a trainer or a summary.
        **overrides: summary fields to set.

    Returns:
        The summary.
    """
    if isinstance(source, DistillationSummary):
        return _apply_overrides(source, dict(overrides)) if overrides else source
    if hasattr(source, "state") and hasattr(source, "model"):
        return collect_summary(source, **overrides)
    raise TypeError(f"Expected a DistillationTrainer or a DistillationSummary, got {type(source).__name__}.")


# -- the training-curve plot --------------------------------------------------------------------------------------
def plot_training_curves(
    log_history: list[dict[str, Any]], path: str | os.PathLike, title: str | None = None
) -> bool:
    """Draw the training loss and its terms per step, and the eval accuracy per epoch, into a PNG.

    Args:
        log_history: ``trainer.state.log_history``.
        path: output PNG path.
        title: figure title.

    Returns:
        False (and nothing written) when the history has no training loss and no eval accuracy.
    """
    train = [r for r in log_history if "loss" in r and "step" in r]
    evals = [r for r in log_history if "eval_accuracy" in r]
    if not train and not evals:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    for k in keys:
        pts = [(r["step"], r[k]) for r in train if k in r and r[k] is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(
                xs,
                ys,
                marker="o" if len(pts) < 30 else None,
                markersize=3,
                lw=2 if k == "loss" else 1.2,
                label="total loss" if k == "loss" else k.removeprefix("loss_") + " term",
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss and its terms (unweighted)")
    if train:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    if evals:
        xs = [r.get("epoch", r.get("step", i)) for i, r in enumerate(evals)]
        ax.plot(xs, [100 * r["eval_accuracy"] for r in evals], marker="o", label="student top-1")
        if any("eval_top5_accuracy" in r for r in evals):
            ax.plot(
                xs,
                [100 * r.get("eval_top5_accuracy", math.nan) for r in evals],
                marker=".",
                ls="--",
                label="student top-5",
            )
        t = _last(log_history, "eval_teacher_accuracy")
        if t is not None:
            ax.axhline(100 * t, color="gray", ls=":", label="teacher top-1")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation during training", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("epoch")
    ax.set_ylabel("eval accuracy (%)")
    ax.set_title("Evaluation accuracy")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# -- reading and updating existing cards -----------------------------------------------------------------------------
def read_card(path: str | os.PathLike) -> ModelCard:
    """Read a model card file, with a clear error for malformed YAML metadata.

    Args:
        path: the ``README.md``.

    Returns:
        The card.

    Raises:
        CardError: the YAML header cannot be parsed or is not a mapping.
    """
    text = Path(path).read_text(encoding="utf-8")
    return parse_card(text, str(path))


def parse_card(text: str, where: str = "model card") -> ModelCard:
    """Parse card text (see :func:`read_card`).

    Args:
        text: the whole card.
        where: a name for error messages.

    Returns:
        The card.

    Raises:
        CardError: malformed metadata.
    """
    try:
        return ModelCard(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise CardError(
            f"The YAML metadata of {where} is malformed{loc}: {getattr(e, 'problem', None) or e}. Fix the header "
            "between the '---' lines; the file was left untouched."
        ) from e
    except (ValueError, TypeError) as e:
        raise CardError(f"The metadata of {where} cannot be read: {e}. The file was left untouched.") from e


def merge_eval_results(
    card: ModelCard, results: Iterable[EvalResult], model_name: str | None = None
) -> ModelCard:
    """Add ``results`` to the card's ``model-index``: a result for the same task, dataset, split and metric replaces
    the old value; every other entry, metadata key and the body are kept.

    Args:
        card: the card (modified in place).
        results: the new results.
        model_name: name for the ``model-index`` when the card has none.

    Returns:
        The same card.
    """
    results = list(results)
    if not results:
        return card
    existing = list(card.data.eval_results or [])
    for new in results:
        for old in existing:
            if new.is_equal_except_value(old):
                old.metric_value = new.metric_value
                break
        else:
            existing.append(new)
    card.data.eval_results = existing
    if not card.data.model_name:
        card.data.model_name = model_name or "model"
    return card


def eval_results_index(model_name: str, results: Iterable[EvalResult]) -> list[dict[str, Any]]:
    """``model-index`` metadata (a list with one model entry) for results, as ``metadata_update`` takes it.

    Args:
        model_name: the model's name in the index.
        results: the results.

    Returns:
        The ``model-index`` value.
    """
    from huggingface_hub.repocard_data import eval_results_to_model_index

    return eval_results_to_model_index(model_name, list(results))


def update_card_file(
    path: str | os.PathLike,
    results: Iterable[EvalResult],
    model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> ModelCard:
    """Merge evaluation results (and optional metadata keys) into a card file, keeping everything else.

    A missing file gets a minimal card. The file is replaced atomically and only after the new card has been
    built, so a malformed card is never touched.

    Args:
        path: the ``README.md``.
        results: new ``model-index`` results.
        model_name: ``model-index`` name when the card has none (default: the folder name).
        metadata: extra top-level metadata to set (existing keys are overwritten, others kept).

    Returns:
        The updated card.

    Raises:
        CardError: malformed YAML metadata in the existing file.
    """
    path = Path(path)
    name = model_name or path.resolve().parent.name
    if path.is_file():
        card = read_card(path)
    else:
        card = ModelCard(f"---\npipeline_tag: {TASK}\n---\n\n# {name}\n")
    merge_eval_results(card, results, name)
    for k, v in (metadata or {}).items():
        card.data[k] = v
    tmp = path.with_name(f".{path.name}.tmp")
    card.save(tmp)
    os.replace(tmp, path)
    return card


__all__ = [
    "CARD_MARKER",
    "CARD_NAME",
    "PLOT_NAME",
    "SUMMARY_NAME",
    "CardError",
    "DistillationSummary",
    "MethodSummary",
    "as_summary",
    "build_card",
    "card_data",
    "collect_summary",
    "default_tags",
    "distillation_metadata",
    "eval_results",
    "eval_results_index",
    "is_timm_student",
    "merge_eval_results",
    "model_reference",
    "parse_card",
    "plot_training_curves",
    "read_card",
    "summary_from_folder",
    "template_variables",
    "timm_snippet",
    "update_card_file",
    "usage_snippet",
    "uses_remote_code",
]

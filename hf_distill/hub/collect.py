"""A :class:`DistillationSummary` from a run: collected from a live trainer, or rebuilt from the folder it saved.

Both paths read the same facts in the same shapes: the student's config as a dict, ``objective.describe()``, the
TrainingArguments as a dict, the log history and the final metrics. :func:`summary_from_run` turns them into a
summary; :func:`collect_summary` and :func:`summary_from_folder` only gather them (and what one source alone knows:
the hardware and the live models for a trainer, the preprocessing files for a folder).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any

from ..data.labels import label_names
from ..models.configuration_cifar import CifarConfig
from ..training.ensemble import method_class
from ..training.mutual import mutual_partners
from ..training.outputs import ALL_RESULTS, LEGACY_RESULTS
from .environment import framework_versions, hardware
from .privacy import dataset_reference, public_summary
from .summary import (
    SUMMARY_NAME,
    DistillationSummary,
    MethodSummary,
    apply_overrides,
    default_tags,
    json_safe,
    last_logged,
)

#: The run's TrainingArguments as JSON, written by the trainer beside ``training_args.bin`` (which is a pickle and
#: is never read: unpickling a file from a folder a user points us at would run whatever code it holds).
TRAINING_ARGS_JSON = "training_args.json"
#: the run's final metrics: the HF example scripts' ``all_results.json``, or ``distill_results.json`` in the folders
#: of earlier versions
RESULTS_FILES = (ALL_RESULTS, LEGACY_RESULTS)
#: ``model_type`` of the CIFAR zoo: published as remote code (``auto_map`` + the model files).
CIFAR_MODEL_TYPE = CifarConfig.model_type
TIMM_WRAPPER_CLASS = "TimmWrapperForImageClassification"


# -- facts about models ----------------------------------------------------------------------------------------------
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


def unwrap(model: Any) -> Any:
    """The model inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return getattr(model, "_orig_mod", model)


def trainer_student(trainer: Any) -> Any:
    """The student a :class:`~hf_distill.DistillationTrainer` trains, without any wrapper."""
    return unwrap(trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False).student)


def is_timm_student(model: Any) -> bool:
    """Whether ``model`` is transformers' ``TimmWrapperForImageClassification`` (exported in timm's format)."""
    return type(model).__name__ == TIMM_WRAPPER_CLASS and hasattr(model, "timm_model")


def uses_remote_code(model: Any) -> bool:
    """Whether ``model`` is published as custom code (``auto_map``): the CIFAR zoo."""
    cfg = getattr(model, "config", None)
    return bool(
        getattr(cfg, "model_type", "") == CIFAR_MODEL_TYPE or getattr(type(model), "_auto_class", None)
    )


def _num_params(model: Any) -> int | None:
    try:
        return int(sum(p.numel() for p in model.parameters()))
    except (AttributeError, TypeError):  # a stand-in object without parameters
        return None


def _config_dict(model: Any) -> dict[str, Any]:
    cfg = getattr(model, "config", None)
    return cfg.to_dict() if hasattr(cfg, "to_dict") else {}


def _architecture(config: dict[str, Any]) -> str | None:
    arch = config.get("architecture") or config.get("model_type")
    return str(arch) if arch else None


def _fingerprint(dataset: Any) -> str | None:
    """The ``datasets`` fingerprint of the rows a split was prepared from (a local dataset's identity)."""
    return getattr(getattr(dataset, "ds", dataset), "_fingerprint", None)


# -- facts about the run ---------------------------------------------------------------------------------------------
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


def _precision(args: dict[str, Any]) -> str:
    precision = "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"
    return precision + (" (tf32 matmuls)" if args.get("tf32") else "")


def training_hyperparameters(
    args: dict[str, Any],
    world_size: int | None = None,
    lr_milestones: list[int] | None = None,
    lr_decay_rate: float = 0.1,
) -> dict[str, Any]:
    """The card's hyperparameter table from ``TrainingArguments.to_dict()`` (or its JSON).

    Args:
        args: the arguments as a dict.
        world_size: number of processes (unknown for a rebuilt folder: no total batch size then).
        lr_milestones: epochs of a step-decay schedule (``DistillationTrainer.lr_milestones``).
        lr_decay_rate: its decay factor.

    Returns:
        Name to value, in the order the card shows them.
    """
    optim = str(args.get("optim")) + (f" ({args['optim_args']})" if args.get("optim_args") else "")
    hp: dict[str, Any] = {
        "learning_rate": args.get("learning_rate"),
        "train_batch_size": args.get("per_device_train_batch_size"),
        "eval_batch_size": args.get("per_device_eval_batch_size"),
        "gradient_accumulation_steps": args.get("gradient_accumulation_steps"),
    }
    if world_size is not None:
        hp["total_train_batch_size"] = (
            (args.get("per_device_train_batch_size") or 0)
            * (args.get("gradient_accumulation_steps") or 1)
            * world_size
        )
    hp.update(optimizer=optim, weight_decay=args.get("weight_decay"), seed=args.get("seed"))
    if args.get("label_smoothing_factor"):
        hp["label_smoothing"] = args["label_smoothing_factor"]  # of the cross-entropy with the labels
    if lr_milestones:
        hp["lr_scheduler"] = f"step decay x{lr_decay_rate} at epochs {list(lr_milestones)}"
    else:
        hp["lr_scheduler"] = str(args.get("lr_scheduler_type"))
    if (args.get("max_steps") or 0) > 0:
        hp["max_steps"] = args["max_steps"]
    elif args.get("num_train_epochs") is not None:
        hp["num_epochs"] = args["num_train_epochs"]
    warm = args.get("warmup_steps") or args.get("warmup_ratio")
    if warm:
        hp["warmup"] = warm
    return hp


def _methods(objective: dict[str, Any], classes: dict[str, type] | None = None) -> list[MethodSummary]:
    """The methods of ``objective.describe()``, documented by their classes (default: the registry's)."""
    if classes is None:
        from ..methods import METHODS

        classes = dict(METHODS)
    out = []
    pairing = objective.get("pairing") or {}
    for name, info in (objective.get("methods") or {}).items():
        cls = classes.get(name)
        out.append(
            MethodSummary(
                name=name,
                weight=float(info.get("weight", 1.0)),
                hyperparameters=json_safe({k: v for k, v in info.items() if k != "weight"}),
                summary=getattr(cls, "summary", "") or "",
                paper=getattr(cls, "paper", "") or "",
                citation=getattr(cls, "citation", "") or "",
                pairing=json_safe(pairing.get(name) or []),
            )
        )
    return out


# -- the one builder -------------------------------------------------------------------------------------------------
def summary_from_run(
    model_name: str,
    config: dict[str, Any],
    objective: dict[str, Any],
    args: dict[str, Any],
    log_history: list[dict[str, Any]],
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    method_classes: dict[str, type] | None = None,
    overrides: dict[str, Any] | None = None,
    **facts: Any,
) -> DistillationSummary:
    """The summary of a run from what it leaves, whether read from a trainer or from its folder.

    Args:
        model_name: the model's name.
        config: the student's config as a dict (``config.json``).
        objective: ``DistillationObjective.describe()`` (``{"ce_weight": ..., "methods": {...}}``).
        args: the TrainingArguments as a dict (``training_args.json``); empty when unknown.
        log_history: ``trainer.state.log_history``.
        metrics: final metrics (``eval_accuracy``, ``eval_top5_accuracy``, ``eval_teacher_accuracy``, ...); a
            missing one is the last logged value.
        training: the hyperparameter table (default: :func:`training_hyperparameters` of ``args``).
        method_classes: the classes of the methods by name (default: the registry's).
        overrides: fields the user sets (see :func:`collect_summary`); ``tags`` are added to the default ones.
        **facts: further :class:`DistillationSummary` fields the source knows (None values are ignored).

    Returns:
        The summary.
    """
    metrics = metrics or {}

    def metric(key: str) -> Any:
        value = metrics.get(key)
        return value if value is not None else last_logged(log_history, key)

    is_timm = config.get("model_type") == "timm_wrapper" or (
        "pretrained_cfg" in config and "architecture" in config
    )
    labels = label_names(config.get("id2label")) or [str(x) for x in config.get("label_names") or []]
    summary = DistillationSummary(
        model_name=model_name,
        student_class=(config.get("architectures") or [TIMM_WRAPPER_CLASS if is_timm else ""])[0],
        student_architecture=_architecture(config),
        library_name="timm" if is_timm else "transformers",
        remote_code=config.get("model_type") == CIFAR_MODEL_TYPE,
        ce_weight=float(objective.get("ce_weight", 1.0)),
        methods=_methods(objective, method_classes),
        label_names=labels,
        accuracy=metric("eval_accuracy"),
        top5_accuracy=metric("eval_top5_accuracy"),
        teacher_accuracy=metric("eval_teacher_accuracy"),
        teacher_top5_accuracy=metric("eval_teacher_top5_accuracy"),
        training=training if training is not None else (training_hyperparameters(args) if args else {}),
        train_runtime=last_logged(log_history, "train_runtime"),
        precision=_precision(args),
        framework_versions=framework_versions(),
        log_history=json_safe(log_history),
        created=datetime.date.today().isoformat(),
    )
    summary = apply_overrides(summary, facts)
    overrides = dict(overrides or {})
    extra_tags = list(overrides.pop("tags", None) or [])
    summary.tags = list(dict.fromkeys(default_tags(summary) + extra_tags))
    return apply_overrides(summary, overrides)


def _teacher_name(trainer: Any, teacher: Any) -> str | None:
    ensemble = getattr(trainer, "ensemble", None)
    if ensemble is not None:
        return "ensemble of " + " + ".join(m["name"] for m in _ensemble_members(trainer))
    # the trainer's record of where the teacher came from (a timm module's architecture when it has no config path)
    named = getattr(trainer, "teacher_name", None)
    return model_reference(getattr(getattr(teacher, "config", None), "_name_or_path", None) or named)


def _ensemble_members(trainer: Any) -> list[dict[str, Any]]:
    """Every teacher of an ensemble: name, weight, accuracy and architecture (empty for a single teacher)."""
    ensemble = getattr(trainer, "ensemble", None)
    members = ensemble.summary() if ensemble is not None else []
    for m, t in zip(members, ensemble.teachers if ensemble is not None else []):
        m.update(
            name=model_reference(m["name"]) or m["name"], architecture=_architecture(_config_dict(unwrap(t)))
        )
    return members


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
    student = unwrap(container.student)
    objective = container.objective
    teacher = unwrap(trainer.teacher) if getattr(trainer, "teacher", None) is not None else None
    teacher_metrics = getattr(trainer, "teacher_metrics", None) or {}
    spec = getattr(trainer, "student_input", None)
    train_ds, eval_ds = trainer.train_dataset, trainer.eval_dataset
    dataset, local_dataset = dataset_reference(getattr(trainer, "dataset_id", None))
    if dataset is None and local_dataset is None:
        # a dataset's own name is never taken for a Hub id: load_dataset("uoft-cs/cifar10") calls itself "cifar10"
        local_dataset = getattr(getattr(train_ds, "info", None), "dataset_name", None)
    machine, nproc = hardware(trainer.args)
    args = trainer.args.to_dict()
    name_or_path = getattr(getattr(student, "config", None), "_name_or_path", None)
    teacher_config = _config_dict(teacher) if teacher is not None else {}
    model_name = overrides.pop("model_name", None) or (
        (trainer.args.hub_model_id or "").split("/")[-1] or Path(trainer.args.output_dir).name
    )
    return summary_from_run(
        model_name,
        config=_config_dict(student),
        objective=objective.describe(),
        args=args,
        log_history=[dict(r) for r in trainer.state.log_history],
        metrics={
            "eval_teacher_accuracy": teacher_metrics.get("accuracy"),
            "eval_teacher_top5_accuracy": teacher_metrics.get("top5_accuracy"),
        },
        training=training_hyperparameters(
            args, nproc, getattr(trainer, "lr_milestones", None), getattr(trainer, "lr_decay_rate", 0.1)
        ),
        method_classes={name: method_class(m) for name, m in objective.methods.items()},
        overrides=overrides,
        student_class=type(student).__name__,
        library_name="timm" if is_timm_student(student) else "transformers",
        remote_code=uses_remote_code(student),
        # base_model files the student under its initialization on the Hub: only a Hub id qualifies; a local
        # folder is named in the card body instead (init_checkpoint).
        base_model=hub_reference(name_or_path),
        init_checkpoint=model_reference(name_or_path),
        repo_id=trainer.args.hub_model_id,
        teacher=_teacher_name(trainer, teacher),
        teacher_id=hub_reference(getattr(getattr(teacher, "config", None), "_name_or_path", None))
        if getattr(trainer, "ensemble", None) is None
        else None,
        teachers=_ensemble_members(trainer),
        teacher_class=type(teacher).__name__ if teacher is not None else None,
        teacher_architecture=_architecture(teacher_config) if teacher is not None else None,
        dataset=dataset,
        local_dataset=local_dataset,
        dataset_fingerprint=_fingerprint(train_ds) if local_dataset else None,
        dataset_config=getattr(getattr(train_ds, "info", None), "config_name", None),
        train_split=str(train_ds.split) if getattr(train_ds, "split", None) else None,
        eval_split=_split_label(eval_ds),
        num_train_samples=len(train_ds) if train_ds is not None and hasattr(train_ds, "__len__") else None,
        num_eval_samples=len(eval_ds) if eval_ds is not None and hasattr(eval_ds, "__len__") else None,
        image_size=spec.image_size if spec is not None else None,
        preprocessing=getattr(trainer, "data_transform", None),
        image_mean=[float(v) for v in spec.mean] if spec is not None else None,
        image_std=[float(v) for v in spec.std] if spec is not None else None,
        num_parameters=_num_params(student),
        teacher_num_parameters=_num_params(teacher) if teacher is not None else None,
        global_step=int(trainer.state.global_step or 0),
        epochs=float(trainer.state.epoch) if trainer.state.epoch is not None else None,
        hardware=machine,
        num_processes=nproc,
        mutual=mutual_partners(trainer),
    )


# -- rebuilding from a folder ----------------------------------------------------------------------------------------
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


def _preprocessing(folder: str, config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(image size, mean, std) from the image processor, the zoo config or timm's ``pretrained_cfg``."""
    proc = _read_json_file(os.path.join(folder, "preprocessor_config.json"))
    pc = config.get("pretrained_cfg") or {}
    if proc and proc.get("image_mean"):
        s = proc.get("size") or {}
        size = s.get("height") or s.get("shortest_edge") if isinstance(s, dict) else s
        return size, proc["image_mean"], proc["image_std"]
    if config.get("image_mean"):
        return config.get("image_size"), config["image_mean"], config["image_std"]
    if pc.get("mean"):
        return pc.get("input_size", [3, 224, 224])[-1], pc["mean"], pc["std"]
    return None, None, None


def summary_from_folder(folder: str | os.PathLike, **overrides: Any) -> DistillationSummary:
    """A summary for a model folder: its ``distillation_summary.json`` when there is one, else rebuilt from the
    files a run leaves (``config.json``, ``preprocessor_config.json``, ``trainer_state.json`` of the folder or its
    last checkpoint, ``all_results.json`` (or ``distill_results.json`` of earlier versions), ``training_args.json``). Only JSON is read:
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
        return apply_overrides(DistillationSummary.load(folder), dict(overrides))
    config = _read_json_file(os.path.join(folder, "config.json"))
    if config is None:
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model folder.")
    ckpt = _latest_checkpoint(folder)
    state = (
        _read_json_file(os.path.join(folder, "trainer_state.json"))
        or (_read_json_file(os.path.join(ckpt, "trainer_state.json")) if ckpt else None)
        or {}
    )
    history = list(state.get("log_history") or [])
    results = next(
        (r for r in (_read_json_file(os.path.join(folder, name)) for name in RESULTS_FILES) if r), {}
    )
    size, mean, std = _preprocessing(folder, config)
    minutes = results.get("train_minutes")
    return summary_from_run(
        os.path.basename(os.path.normpath(folder)),
        config=config,
        objective=results.get("objective") or {"ce_weight": 1.0, "methods": {}},
        args=_read_json_file(os.path.join(folder, TRAINING_ARGS_JSON)) or {},
        log_history=history,
        metrics=results,
        overrides=overrides,
        image_size=int(size) if size else None,
        image_mean=[float(v) for v in mean] if mean else None,
        image_std=[float(v) for v in std] if std else None,
        train_runtime=None if last_logged(history, "train_runtime") or minutes is None else 60 * minutes,
        global_step=state.get("global_step"),
        epochs=state.get("epoch"),
    )


def as_summary(source: Any, **overrides: Any) -> DistillationSummary:
    """A :class:`DistillationSummary` from a trainer (collected) or a summary (with ``overrides`` applied).

    Args:
        source: a trainer or a summary.
        **overrides: summary fields to set.

    Returns:
        The summary, with nothing of the local machine in it (see :func:`public_summary`).
    """
    if isinstance(source, DistillationSummary):
        return public_summary(apply_overrides(source, dict(overrides)) if overrides else source)
    if hasattr(source, "state") and hasattr(source, "model"):
        return public_summary(collect_summary(source, **overrides))
    raise TypeError(f"Expected a DistillationTrainer or a DistillationSummary, got {type(source).__name__}.")

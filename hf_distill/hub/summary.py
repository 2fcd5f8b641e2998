"""What a model card says about a distillation run: :class:`DistillationSummary`, stored beside the weights.

The summary is collected once (from a trainer or rebuilt from a folder: :mod:`hf_distill.hub.collect`) and saved as
``distillation_summary.json``, so that a later push renders the card without the trainer (like transformers'
``modelcard.TrainingSummary``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

SUMMARY_NAME = "distillation_summary.json"
TASK = "image-classification"


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
        pairing: the (teacher map, student map) pairs it compared, with their connectors, for a method that compares
            maps (``LayerPair.as_dict()`` each: ``teacher``, ``teacher_shape``, ``student``, ``student_shape``,
            ``connector``, ``auto``).
    """

    name: str
    weight: float
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""
    citation: str = ""
    pairing: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DistillationSummary:
    """Everything a model card says about a distillation run (collected by :func:`collect_summary`).

    Accuracies are fractions in [0, 1]; ``None`` means unknown. ``train_runtime`` is in seconds. ``mutual`` lists the
    networks trained together with this one by mutual learning (``{"name", "architecture", "accuracy"}`` each).
    """

    model_name: str
    student_class: str = ""
    student_architecture: str | None = None
    library_name: str = "transformers"
    base_model: str | None = None
    init_checkpoint: str | None = None
    repo_id: str | None = None
    #: loads with ``trust_remote_code=True`` through hf_distill's own modeling files (checked by content)
    remote_code: bool = False
    #: code in the repository that hf_distill did not write (published with ``--allow_foreign_code``)
    foreign_code: list[str] = field(default_factory=list)
    teacher: str | None = None
    teacher_class: str | None = None
    teacher_architecture: str | None = None
    #: a teacher ensemble's members, in order: ``name``, ``weight``, ``accuracy``, ``top5_accuracy``, ``architecture``
    teachers: list[dict[str, Any]] = field(default_factory=list)
    ce_weight: float = 1.0
    methods: list[MethodSummary] = field(default_factory=list)
    #: the teacher's Hub id (None for a local teacher, named in ``teacher`` only)
    teacher_id: str | None = None
    #: a Hub dataset id, never a local path (see ``local_dataset``)
    dataset: str | None = None
    #: the name of a local dataset (its folder's name), described in the card's prose, never an id
    local_dataset: str | None = None
    #: the ``datasets`` fingerprint of the local training data
    dataset_fingerprint: str | None = None
    #: the publisher states that ``local_dataset`` holds the same data as the Hub dataset ``dataset``
    dataset_asserted: bool = False
    dataset_config: str | None = None
    train_split: str | None = None
    eval_split: str | None = None
    num_train_samples: int | None = None
    num_eval_samples: int | None = None
    label_names: list[str] = field(default_factory=list)
    image_size: int | None = None
    #: the image pipeline of training and evaluation (``{"pipeline", "train", "eval"}``, one line each)
    preprocessing: dict[str, str] | None = None
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
    mutual: list[dict[str, Any]] = field(default_factory=list)
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
        return json_safe(dataclasses.asdict(self))

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


def last_logged(log_history: list[dict[str, Any]], key: str) -> Any:
    """The last non-None value of ``key`` in a trainer's log history (None when never logged)."""
    for rec in reversed(log_history):
        if rec.get(key) is not None:
            return rec[key]
    return None


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None, tensors/numpy scalars as numbers and anything else as a string."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return json_safe(obj.item())
    return str(obj)


def apply_overrides(summary: DistillationSummary, overrides: dict[str, Any]) -> DistillationSummary:
    """A copy of ``summary`` with the non-None ``overrides`` set; ``tags`` are added to the summary's.

    Raises:
        TypeError: an override that is not a :class:`DistillationSummary` field (the message lists the valid ones).
    """
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
    if summary.remote_code or summary.foreign_code:
        tags.append("custom_code")
    return list(dict.fromkeys(tags))

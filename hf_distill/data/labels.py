"""The one place where the teacher's, the student's and the dataset's label spaces are compared.

Counts are compared first; then, where two sides both name their classes (``config.id2label``, a ``ClassLabel``),
the names. The same names in another order are not an error: the teacher's logits are remapped into the
student's order (:func:`align_label_spaces` returns the permutation). Generic names (``LABEL_3``, ``"3"``) count as
no names: they say nothing about which class is which.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import datasets
import torch
from torch import nn

from .datasets import find_label_column

_GENERIC = re.compile(r"^(LABEL_)?\d+$")
_SHOWN = 8  # names listed in a message


def num_labels_of(model: nn.Module) -> int | None:
    """Number of classes a model predicts (transformers config, zoo, timm)."""
    core = getattr(model, "module", model)
    cfg = getattr(core, "config", None)
    if cfg is not None and getattr(cfg, "num_labels", None):
        return int(cfg.num_labels)
    for obj in (core, getattr(core, "timm_model", None)):
        n = getattr(obj, "num_classes", None)
        if n:
            return int(n)
    return None


def generic_names(names: Sequence[str]) -> bool:
    """Whether every name is generic (``LABEL_3``, ``"3"``): such names say nothing about which class is which."""
    return all(_GENERIC.match(str(n)) for n in names)


def _named(names: Sequence[str] | None) -> list[str] | None:
    """``names`` as a list, or None when they are absent or all generic (``LABEL_i``, ``"i"``)."""
    if not names or generic_names(names):
        return None
    return [str(n) for n in names]


def label_names(id2label: dict | None) -> list[str]:
    """Class names by id from a config's ``id2label`` (its keys are ints, or strings once read from JSON)."""
    id2label = id2label or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


def model_label_names(model: nn.Module) -> list[str] | None:
    """The class names of a model's head, in head order (``config.id2label``), or None when it has none."""
    cfg = getattr(getattr(model, "module", model), "config", None)
    return _named(label_names(getattr(cfg, "id2label", None)))


def _label_feature(dataset) -> datasets.ClassLabel | None:
    if not isinstance(dataset, datasets.Dataset):
        return None
    col = find_label_column(dataset.column_names)
    f = dataset.features[col] if col is not None else None
    return f if isinstance(f, datasets.ClassLabel) else None


def dataset_num_classes(dataset) -> int | None:
    """Number of classes of a prepared split or a raw ``datasets.Dataset`` with a ``ClassLabel`` column."""
    n = getattr(dataset, "num_classes", None)
    if n is None and (f := _label_feature(dataset)) is not None:
        n = f.num_classes
    return n


def dataset_label_names(dataset) -> list[str] | None:
    """Class names of a prepared split (``class_names``) or a raw dataset's ``ClassLabel``, or None.

    Raises:
        ValueError: the dataset names a class with an empty string (one line naming the dataset as the cause).
    """
    names = getattr(dataset, "class_names", None)
    if names is None and (f := _label_feature(dataset)) is not None:
        names = f.names
    empty = [i for i, n in enumerate(names or []) if not str(n).strip()]
    if empty:
        raise ValueError(
            f"The dataset names class {', '.join(map(str, empty))} with an empty string (its ClassLabel names: "
            f"{_listed([repr(str(n)) for n in names])}): give every class of the dataset a name, e.g. cast its "
            "label column to datasets.ClassLabel(names=[...])."
        )
    return _named(names)


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _name_mismatch(who: str, theirs: list[str], ref_who: str, ref: list[str]) -> str:
    only_theirs = [n for n in theirs if n not in ref]
    only_ref = [n for n in ref if n not in theirs]
    return (
        f"The {who}'s class names differ from the {ref_who}'s: the {who} has {_listed(only_theirs)} where the "
        f"{ref_who} has {_listed(only_ref)}."
    )


def align_label_spaces(
    student: nn.Module, teacher: nn.Module | None, dataset=None, remap_teacher: bool = True
) -> torch.Tensor | None:
    """Check that teacher, student and dataset share one label set; return the teacher's logit order.

    The reference order is the dataset's class names (the student is trained on its label ids), else the
    student's. A student whose named classes are not the dataset's, in the same order, is refused: its card and
    ``id2label`` would name the wrong classes.

    Args:
        student, teacher: the two networks (teacher may be None).
        dataset: the training set (prepared split or ``datasets.Dataset``), or None.
        remap_teacher: accept a teacher with the same names in another order (else refuse it).

    Returns:
        ``order`` such that ``teacher_logits[:, order]`` are in the reference order, or None when no remapping
        is needed.

    Raises:
        ValueError: a count or a name differs (one line that lists the differing names and says how to fix it).
    """
    ns, nd = num_labels_of(student), dataset_num_classes(dataset)
    nt = num_labels_of(teacher) if teacher is not None else None
    if nt is not None and ns is not None and nt != ns:
        raise ValueError(
            f"The teacher predicts {nt} classes but the student {ns}: they must share one label set. "
            f"Create the student with num_labels={nt}, or use a teacher trained on the same classes."
        )
    if nd is not None and ns is not None and nd != ns:
        raise ValueError(
            f"The dataset has {nd} classes but the student predicts {ns}: create the student with "
            f"num_labels={nd}, or pick the dataset the teacher was trained on."
        )
    s_names, d_names = model_label_names(student), dataset_label_names(dataset)
    if s_names is not None and d_names is not None and s_names != d_names:
        detail = (
            "the same names in another order"
            if sorted(s_names) == sorted(d_names)
            else _name_mismatch("student", s_names, "dataset", d_names)
        )
        raise ValueError(
            f"The student's classes are not the dataset's ({detail.rstrip('.')}): create the student with the "
            "dataset's id2label."
        )
    ref, ref_who = (d_names, "dataset") if d_names is not None else (s_names, "student")
    t_names = model_label_names(teacher) if teacher is not None else None
    if t_names is None or ref is None or t_names == ref:
        return None
    if sorted(t_names) != sorted(ref):
        raise ValueError(
            _name_mismatch("teacher", t_names, ref_who, ref)
            + " Use a teacher trained on these classes, or name the classes as the teacher does."
        )
    if not remap_teacher:
        raise ValueError(
            f"The teacher names the {ref_who}'s classes in another order ({_listed(t_names)} vs {_listed(ref)})."
        )
    return torch.tensor([t_names.index(n) for n in ref], dtype=torch.long)


def align_ensemble_label_spaces(
    student: nn.Module, teachers: Sequence[nn.Module], dataset=None
) -> list[torch.Tensor | None]:
    """:func:`align_label_spaces` for every teacher of an ensemble, which must also agree with each other.

    Each teacher is checked against the dataset and the student; teachers that name their classes must then name
    the same classes once remapped (this also catches two teachers that disagree when neither the dataset nor the
    student names the classes).

    Returns:
        One logit order per teacher (None: already in the reference order).

    Raises:
        ValueError: one line naming the teacher (by position) whose label set differs, and the fix.
    """
    orders, named = [], []
    for i, teacher in enumerate(teachers):
        try:
            orders.append(align_label_spaces(student, teacher, dataset))
        except ValueError as e:
            raise ValueError(f"Teacher {i + 1} of the ensemble: {e}") from e
        names = model_label_names(teacher)
        if names is not None and orders[-1] is not None:
            names = [names[j] for j in orders[-1].tolist()]
        named.append(names)
    counts = [num_labels_of(t) for t in teachers]
    for i in range(1, len(teachers)):
        if counts[i] is not None and counts[0] is not None and counts[i] != counts[0]:
            raise ValueError(
                f"Teacher 1 of the ensemble predicts {counts[0]} classes but teacher {i + 1} {counts[i]}: every "
                "teacher of an ensemble must share one label set."
            )
    first = next(((i, n) for i, n in enumerate(named) if n is not None), None)
    for i, names in enumerate(named):
        if first is not None and names is not None and names != first[1]:
            detail = (
                f"Teacher {i + 1} of the ensemble names teacher {first[0] + 1}'s classes in another order and "
                "neither the dataset nor the student names them."
                if sorted(names) == sorted(first[1])
                else _name_mismatch(f"teacher {i + 1}", names, f"teacher {first[0] + 1}", first[1])
            )
            raise ValueError(
                detail
                + " Every teacher of an ensemble must share one label set: use teachers trained on these "
                "classes (and a dataset or student that names them)."
            )
    return orders


__all__ = [
    "align_ensemble_label_spaces",
    "align_label_spaces",
    "dataset_label_names",
    "dataset_num_classes",
    "model_label_names",
    "num_labels_of",
]

"""From parsed arguments to a ready :class:`~hf_distill.training.trainer.DistillationTrainer` (used by recipes and tests)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from transformers import IntervalStrategy, TrainingArguments, set_seed

from ..data.datasets import (
    CarvedSplit,
    PreparedSplit,
    class_names,
    load_train_and_eval,
    prepare_split,
    resolve_columns,
)
from ..data.streaming import load_eval_split, load_image_stream, prepare_stream, stream_class_names
from ..data.transforms import model_pipeline, record_eval_transform
from ..methods import DistillationObjective, resolve_objective
from ..models.loading import load_model, zoo_architecture
from ..models.normalization import InputSpec
from ..training.mutual import PeerEvaluation, mutual_method, prepare_peers
from ..training.trainer import DistillationTrainer, check_streaming_objective
from .config import DataArguments, DistillArguments, ModelArguments

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a recipe needs after setup."""

    trainer: DistillationTrainer
    train: PreparedSplit
    eval: PreparedSplit | None
    carved_eval: CarvedSplit | None = None  # set when the eval split was held out of the training split


def untrained_teacher(name: str, weights: str | None) -> bool:
    """Whether ``--teacher`` names a bare architecture (CIFAR-zoo or timm name) with no weights file: random
    weights. A folder, a ``timm/`` or other Hub id, or ``--teacher_weights`` brings trained weights."""
    if weights is not None or os.path.exists(name) or "/" in name:
        return False
    if zoo_architecture(name) is not None:
        return True
    import timm

    return timm.is_model(name)


def load_teacher(name: str, weights: str | None, num_labels: int, allow_untrained: bool):
    """Load one teacher (``--teacher NAME [--teacher_weights FILE]``).

    Raises:
        ValueError: ``name`` is a bare architecture (random weights) and ``allow_untrained`` is not set.
    """
    if untrained_teacher(name, weights):
        if not allow_untrained:
            raise ValueError(
                f"--teacher {name} is an architecture name: it would start from random weights. "
                "Pass a trained model folder or Hub id, or --teacher_weights FILE (or --allow_untrained_teacher "
                "to distill from random weights on purpose)."
            )
        logger.warning("The teacher %s has random weights (--allow_untrained_teacher).", name)
    return load_model(name, num_labels=num_labels, weights=weights, role="teacher")


def check_streaming_run(
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    objective: DistillationObjective,
) -> None:
    """Refuse, before anything loads, what a streamed training split cannot do.

    Raises:
        ValueError: no ``--max_steps``, ``--teacher_cache``, ``--max_train_samples``, or a method that needs the
            dataset's length or row numbers (one line each, naming the fix).
    """
    if training_args.max_steps <= 0:
        raise ValueError(
            "--streaming needs --max_steps N: a stream has no length, so --num_train_epochs cannot say when to stop "
            "(one epoch is about rows / (per_device_train_batch_size x processes x gradient_accumulation_steps) steps)."
        )
    if data_args.max_train_samples is not None:
        raise ValueError(
            "--max_train_samples selects rows of a map-style split, which a stream does not number: drop it and "
            "bound the run with --max_steps."
        )
    check_streaming_objective(objective, distill_args.milestones(), distill_args.teacher_cache)


def _open_stream(data_args: DataArguments):
    return load_image_stream(data_args.dataset, data_args.train_split)


def _stream_eval_split(data_args: DataArguments):
    """The evaluation split beside a stream (map-style, that split's files only), or None with a warning."""
    if not data_args.eval_split:
        return None
    raw_eval = load_eval_split(data_args.dataset, data_args.eval_split)
    if raw_eval is None:
        logger.warning(
            "The dataset has no %r split, and a stream cannot be carved into a validation split: nothing is "
            "evaluated. Pass --eval_split with an existing split (or --eval_split '' to silence this).",
            data_args.eval_split,
        )
    return raw_eval


def build_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TrainingArguments,
    method_kwargs: dict[str, dict[str, Any]] | None = None,
) -> Run:
    """Load data and models, build the objective and the trainer.

    Raises:
        ValueError: any bad input (unknown method, class-count mismatch, missing label column, ...), with a
            message that says how to fix it.
    """
    if data_args.dataset is None:
        raise ValueError("No dataset given: pass --dataset (a local folder, parquet file or Hub id).")
    set_seed(training_args.seed)
    spec = resolve_objective(
        distill_args.method, distill_args.weights(), distill_args.ce_weight, method_kwargs
    )
    objective = DistillationObjective.from_spec(spec)

    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise ValueError(
            f"Nothing to train: --num_train_epochs {training_args.num_train_epochs:g} and no positive --max_steps. "
            "Pass --num_train_epochs N or --max_steps N with N > 0."
        )
    seed = training_args.data_seed if training_args.data_seed is not None else training_args.seed
    if data_args.streaming:
        check_streaming_run(data_args, distill_args, training_args, objective)
        raw_train, raw_eval, carved = _open_stream(data_args), _stream_eval_split(data_args), None
    else:
        raw_train, raw_eval, carved = load_train_and_eval(
            data_args.dataset,
            data_args.train_split,
            data_args.eval_split,
            data_args.label_column,
            data_args.validation_split_size,
            seed,
        )
    # Detect the columns and class names before building the student, whose head must match them.
    img_col, lab_col = resolve_columns(raw_train, data_args.image_column, data_args.label_column)
    names = (stream_class_names if data_args.streaming else class_names)(raw_train, lab_col)
    id2label = dict(enumerate(names))

    teacher = None
    # ``--teacher ''`` names no teacher: the recipe's default teacher switched off, to train a model alone
    # (``--method none``), e.g. the teacher of a later run.
    if objective.needs_teacher or model_args.teachers():
        if not model_args.teachers():
            raise ValueError(f"Method {distill_args.method!r} needs a teacher: pass --teacher.")
        # The head size only matters for a teacher built here (zoo/timm name); the trainer compares the label
        # spaces of teachers, student and dataset (counts and names) in one place.
        teachers = [
            load_teacher(name, weights, len(names), model_args.allow_untrained_teacher)
            for name, weights in zip(model_args.teachers(), model_args.teacher_weight_files())
        ]
        teacher = teachers[0] if len(teachers) == 1 else teachers
    student = load_model(
        model_args.student, id2label=id2label, weights=model_args.student_weights, role="student"
    )
    prepare_peers(objective, student, model_args.student, id2label, training_args.seed)  # dml only

    # The student's own preprocessing (--train_transform, --image_size, --crop_pct); the trainer adapts each batch
    # to the teacher's size and normalization.
    transforms = model_pipeline(student, data_args.train_transform, data_args.image_size, data_args.crop_pct)
    record_eval_transform(student, transforms)  # a timm student saves the evaluation it was measured with
    s_in = InputSpec(transforms.mean, transforms.std, transforms.image_size)
    strict = data_args.strict_images
    if data_args.streaming:
        train = prepare_stream(
            raw_train,
            s_in.mean,
            s_in.std,
            s_in.image_size,
            img_col,
            lab_col,
            seed=seed,
            shuffle_buffer=data_args.streaming_shuffle_buffer,
            strict_images=strict,
            transform=transforms.train,
        )
    else:
        train = prepare_split(
            raw_train,
            s_in.mean,
            s_in.std,
            s_in.image_size,
            True,
            img_col,
            lab_col,
            data_args.max_train_samples,
            seed=seed,
            strict_images=strict,
            transform=transforms.train,
        )
    evals = None
    if raw_eval is not None:
        evals = prepare_split(
            raw_eval,
            s_in.mean,
            s_in.std,
            s_in.image_size,
            False,
            img_col,
            lab_col,
            data_args.max_eval_samples,
            strict_images=strict,
            transform=transforms.eval,
        )
    elif training_args.eval_strategy != IntervalStrategy.NO:
        logger.warning(
            "No evaluation split: --eval_strategy %s becomes 'no'.", training_args.eval_strategy.value
        )
        training_args.eval_strategy = IntervalStrategy.NO

    trainer = DistillationTrainer(
        model=student,
        teacher=teacher,
        objective=objective,
        args=training_args,
        train_dataset=train.dataset,
        eval_dataset=evals.dataset if evals is not None else None,
        student_input=s_in,
        lr_milestones=distill_args.milestones(),
        lr_decay_rate=distill_args.lr_decay_rate,
        channels_last=distill_args.channels_last,
        teacher_precision=distill_args.teacher_precision,
        teacher_cache=distill_args.teacher_cache,
        teacher_cache_topk=distill_args.teacher_cache_topk,
        ensemble_weights=model_args.ensemble_weight_list(),
        ensemble_mode=model_args.ensemble_mode,
        # saved with the student: the processor the evaluation used (processor pipeline only)
        processing_class=transforms.eval_processor,
    )
    trainer.dataset_id = data_args.dataset  # shown in the model card
    trainer.data_transform = transforms.describe()  # {"pipeline", "train", "eval"}: shown in the model card
    if mutual_method(objective) is not None:
        trainer.add_callback(PeerEvaluation(trainer))
    return Run(trainer, train, evals, carved)

"""The methods' initialization stage: a short run before the main training (RepDistiller's ``init`` for AB, FT, FSP).

It is a second ``transformers.Trainer`` on the same :class:`~hf_distill.training.distillation_model.DistillationModel` (in
phase ``"init"``), so DDP, mixed precision and gradient accumulation behave as in the main run. Its
``TrainingArguments`` are the main run's with the stage's own length and constant learning rate, and with
nothing saved, evaluated or reported.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback, TrainingArguments

from ..methods import StepInfo
from .non_finite import StopOnNonFiniteGradient, check_terms

if TYPE_CHECKING:
    from .trainer import DistillationTrainer

logger = logging.getLogger(__name__)

#: the log prefix of the stage's records (``init_stage/loss``, ...)
INIT_STAGE_PREFIX = "init_stage"


def init_stage_args(
    main: TrainingArguments, epochs: float, learning_rate: float, ddp_static_graph: bool | None = None
) -> TrainingArguments:
    """The stage's arguments: the main run's (optimizer, batch, accumulation, precision, seed, workers, ...) with
    the stage's length and a constant learning rate; no checkpoint, evaluation, report, Hub push or resume.
    ``ddp_static_graph``: the main run's choice (``DistillationTrainer.ddp_settings``), which the stage follows."""
    return dataclasses.replace(
        main,
        output_dir=os.path.join(main.output_dir, INIT_STAGE_PREFIX),
        num_train_epochs=epochs,
        max_steps=-1,
        learning_rate=learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        save_strategy="no",
        eval_strategy="no",
        load_best_model_at_end=False,
        metric_for_best_model=None,
        report_to="none",
        push_to_hub=False,
        resume_from_checkpoint=None,
        remove_unused_columns=False,
        # the parts outside the stage get no gradient: the main run's static graph (training/ddp_graph.py) records
        # that on the stage's first step; without one, DDP searches for them every step
        ddp_static_graph=ddp_static_graph,
        ddp_find_unused_parameters=not ddp_static_graph,
    )


def run_init_stage(trainer: DistillationTrainer) -> dict[str, float]:
    """Train the parts that the methods' :class:`~hf_distill.methods.InitStage` names, before the main run.

    Only the stage's parameters train (the methods' own, and the student's when a stage says
    ``train_student``); their ``requires_grad`` flags are restored afterwards. The result is logged by
    ``trainer`` and carried into the main run's log history.

    Returns:
        ``init_stage_loss``, ``init_stage_steps``, ``init_stage_epochs``.
    """
    container = trainer.model
    obj = container.objective
    names = obj.init_stage_methods()
    stages = [obj.methods[m].init_stage for m in names]
    epochs = max(s.epochs for s in stages)
    lr = next((s.learning_rate for s in stages if s.learning_rate is not None), trainer.args.learning_rate)
    train_student = any(s.train_student for s in stages)
    flags = {n: p.requires_grad for n, p in container.named_parameters()}
    for n, p in container.named_parameters():
        in_stage = any(n.startswith(f"objective.methods.{m}.") for m in names)
        p.requires_grad_(flags[n] and (in_stage or (train_student and n.startswith("student."))))
    logger.info("Initialization stage for %s: %.1f epochs at lr %g", ", ".join(names), epochs, lr)
    container.phase = "init"
    stage = InitStageTrainer(
        parent=trainer,
        model=container,
        args=init_stage_args(trainer.args, epochs, lr, trainer.ddp_settings["ddp_static_graph"]),
        data_collator=trainer.data_collator,
        train_dataset=trainer.train_dataset,
    )
    try:
        result = stage.train()
    finally:
        container.phase = "main"
        for n, p in container.named_parameters():
            p.requires_grad_(flags[n])
        # Drop the stage's DDP wrapper before the main run wraps the container again.
        del stage
        gc.collect()
    for m in names:
        obj.methods[m].on_init_stage_end()
    container.init_stage_done.fill_(True)
    summary = {
        "init_stage_loss": float(result.training_loss),
        "init_stage_steps": float(result.global_step),
        "init_stage_epochs": float(epochs),
    }
    trainer.log(summary)
    # The main run starts a fresh TrainerState: carry the record over into its log history.
    trainer.add_callback(CarryLogs([dict(summary, step=0)]))
    return summary


class InitStageTrainer(Trainer):
    """The Trainer of the initialization stage: the parent's container (in phase ``"init"``) and teacher.

    Overrides: ``compute_loss`` (the teacher's features feed the stage's loss), ``save_model`` (the stage writes
    nothing: its result lives in the container and reaches the main run's checkpoints) and ``log`` (records are
    prefixed ``init_stage/``).
    """

    def __init__(self, parent: DistillationTrainer, **kwargs: Any) -> None:
        self.parent = parent
        super().__init__(**kwargs)
        self.add_callback(EpochToDataset(self.train_dataset))
        self.add_callback(StopOnNonFiniteGradient(self.model))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_feats = self.parent.teacher_features(inputs["pixel_values"])
        step = StepInfo(
            labels=inputs["labels"], index=inputs.get("index"), epoch=float(self.state.epoch or 0)
        )
        outputs = model(
            pixel_values=inputs["pixel_values"],
            labels=inputs["labels"],
            index=inputs.get("index"),
            teacher_features=teacher_feats,
            step=step,
        )
        terms = {f"loss_{k}": float(v.detach()) for k, v in outputs.get("loss_terms", {}).items()}
        check_terms(terms, self.state.global_step + 1, self.args, "the initialization stage")
        return (outputs["loss"], {"logits": outputs["logits"]}) if return_outputs else outputs["loss"]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        return

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log(
            {(k if k == "epoch" else f"{INIT_STAGE_PREFIX}/{k}"): v for k, v in logs.items()}, start_time
        )


class EpochToDataset(TrainerCallback):
    """Tell the training set which epoch starts: its augmentation is seeded by (seed, epoch, row)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class CarryLogs(TrainerCallback):
    """Put records made before ``train()`` (the init stage) into the main run's log history."""

    def __init__(self, records: list[dict[str, float]]) -> None:
        self.records = records

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            state.log_history[:0] = self.records


__all__ = ["CarryLogs", "EpochToDataset", "InitStageTrainer", "init_stage_args", "run_init_stage"]

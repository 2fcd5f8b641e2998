"""``DistillationTrainer``: a ``transformers.Trainer`` that trains a student against a frozen teacher.

The shape follows timm's distillation task: the student and every trainable part of the distillation methods live
in one module (:class:`DistillationModel`), which is what the Trainer optimizes and what Accelerate wraps in DDP and
autocast; the teacher stays outside it, frozen, in eval mode, and runs once per batch under ``torch.no_grad()``.
Evaluation and export see the student alone; checkpoints also hold the methods' state (heads, memory banks).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import datasets
import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .data import collate
from .hub.card import TRAINING_ARGS_JSON
from .losses import DataInfo, DistillationObjective, Features, FeatureSpec, StepInfo
from .metrics import classification_metrics
from .models.normalization import InputSpec, TeacherInput, input_spec
from .models.taps import FeatureTap, TapRequest, feature_tap
from .schedule import multistep_scheduler
from .teacher_cache import TeacherCache

logger = logging.getLogger(__name__)

DISTILL_STATE_NAME = "distill_state.safetensors"
TRAINER_STATE_NAME = "trainer_state.json"


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


def _request(needs, layers: list[str]) -> TapRequest:
    return TapRequest(logits=needs.logits, embedding=needs.embedding, maps=tuple(layers), preact=needs.preact)


class DistillationModel(nn.Module):
    """The student plus the distillation objective (and its trainable parts): the module the Trainer trains.

    Args:
        student: the network being trained.
        objective: cross-entropy + weighted distillation methods.
        student_request: what to extract from the student on a distillation step.
    """

    # Losses are per-batch means: the Trainer must scale them for gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(
        self, student: nn.Module, objective: DistillationObjective, student_request: TapRequest
    ) -> None:
        super().__init__()
        self.student = student
        self.objective = objective
        self.student_request = student_request
        self.tap: FeatureTap = feature_tap(student)
        self.register_buffer("init_stage_done", torch.tensor(False))
        self.phase = "main"

    @property
    def config(self):
        return getattr(self.student, "config", None)

    def forward(
        self,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        index: Tensor | None = None,
        teacher_features: Features | None = None,
        step: StepInfo | None = None,
    ) -> dict[str, Any]:
        """Run the student and, on a distillation step, every method.

        Without ``teacher_features`` (evaluation, or ``--method none``) this is plain classification: student
        logits and, with labels, ``ce_weight * CE``.

        Returns:
            dict with ``loss`` (when labels are given), ``logits`` and ``loss_terms`` (name -> unweighted term).
        """
        if self.phase == "init":
            return self._init_stage_forward(pixel_values, labels, index, teacher_features, step)
        distill = teacher_features is not None and labels is not None
        request = self.student_request if distill else TapRequest()
        s = self.tap(self.student, pixel_values, request)
        out: dict[str, Any] = {"logits": s.logits}
        if labels is None:
            return out
        step = step if step is not None else StepInfo(labels=labels, index=index)
        # Loss math runs in float32 even under bf16/fp16 autocast: softmax with temperature, cosines and NCE
        # normalizations are unstable in half precision.
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            total, terms = self.objective(s.float(), teacher_features.float() if distill else None, step)
        # Evaluation reports the student's plain cross-entropy, whatever the training weights are.
        out["loss"] = total if (distill or self.training) else terms["ce"]
        out["loss_terms"] = terms
        return out

    def _init_stage_forward(self, pixel_values, labels, index, teacher_features, step) -> dict[str, Any]:
        train_student = any(
            self.objective.methods[m].init_stage.train_student for m in self.objective.init_stage_methods()
        )
        if not train_student:  # the student only provides features: keep its BN statistics untouched
            self.student.eval()
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_student):
            s = self.tap(self.student, pixel_values, self.student_request)
        with torch.autocast(device_type=pixel_values.device.type, enabled=False):
            total, terms = self.objective.init_stage_forward(s.float(), teacher_features.float(), step)
        return {"loss": total, "logits": s.logits, "loss_terms": terms}


@dataclass
class BuiltDistillation:
    """What :func:`build_distillation_model` returns.

    Attributes:
        container: the student and the built objective in one module (what the Trainer optimizes).
        teacher_tap: extracts the teacher's features (``None`` without a teacher).
        teacher_request: what to extract from the teacher on each step.
        data_info: the training set's facts the methods were built with.
    """

    container: DistillationModel
    teacher_tap: FeatureTap | None
    teacher_request: TapRequest
    data_info: DataInfo


def build_distillation_model(
    student: nn.Module,
    teacher: nn.Module | None,
    objective: DistillationObjective,
    train_dataset=None,
    collator: Callable = collate,
    data_info: DataInfo | None = None,
    teacher_adapter: TeacherInput | None = None,
) -> BuiltDistillation:
    """Resolve the methods' feature layers and build their trainable parts and buffers for a student/teacher pair.

    The feature layers named by every method are resolved against both networks (a name that matches no layer is a
    clear error listing the valid ones); the methods' lazily created parts (regressors, heads, memory banks) are then
    built from the shapes seen in a dry run on two real training samples (or a zero image without a dataset). This is
    the construction step of :class:`DistillationTrainer`, public so that benchmarks and tests build exactly what the
    trainer builds.

    Args:
        student: the student network.
        teacher: the frozen teacher, or ``None`` for an objective that needs none.
        objective: the distillation objective (unbuilt).
        train_dataset: the prepared training set (rows with ``pixel_values``, ``labels``, ``index``).
        collator: turns a list of rows into a batch.
        data_info: the training set's size, class count and labels (default: read from ``train_dataset``).
        teacher_adapter: converts the student's input to the teacher's (default: from both models' own input
            specs); pass the one training will use so that the probed teacher shapes are the trained ones.

    Returns:
        A :class:`BuiltDistillation` with the container, the teacher's tap and request, and the data facts.
    """
    needs = objective.needs()
    s_tap = feature_tap(student)
    t_tap = feature_tap(teacher) if teacher is not None else None
    objective.resolve_layers(s_tap.names, t_tap.names if t_tap is not None else [])
    s_req = _request(needs.student, objective.student_layers())
    t_req = _request(needs.teacher, objective.teacher_layers())
    s_tap.check(s_req, "student")
    if t_tap is not None and needs.teacher.anything:
        t_tap.check(t_req, "teacher")
    info = data_info or _data_info(train_dataset, num_labels_of(student))
    if needs.index and train_dataset is not None and info.num_samples == 0:
        raise ValueError("The training set is empty.")
    if teacher is not None and teacher_adapter is None:
        teacher_adapter = TeacherInput(input_spec(student), input_spec(teacher))
    s_spec, t_spec = _probe_shapes(
        student, teacher, s_tap, t_tap, s_req, t_req, train_dataset, collator, needs, teacher_adapter
    )
    objective.build(s_spec, t_spec, info)
    return BuiltDistillation(DistillationModel(student, objective, s_req), t_tap, t_req, info)


@torch.no_grad()
def _probe_shapes(
    model, teacher, s_tap, t_tap, s_req, t_req, train_dataset, collator, needs, teacher_adapter
):
    """Run both networks once (eval mode, no grad) to learn the shapes the methods will see."""
    if train_dataset is not None and len(train_dataset) > 0:
        batch = collator([train_dataset[i] for i in range(min(2, len(train_dataset)))])
        x = batch["pixel_values"]
    else:
        size = input_spec(model).image_size
        x = torch.zeros(2, 3, size, size)

    def spec(net, tap, req, xin):
        if net is None:
            return FeatureSpec(names=())
        p = next(net.parameters(), None)
        was = net.training
        net.eval()
        try:
            f = tap(net, xin.to(p.device if p is not None else "cpu"), req)
        finally:
            net.train(was)
        return FeatureSpec(
            names=tuple(tap.names),
            maps={k: tuple(v.shape[1:]) for k, v in f.maps.items()},
            logits=None if f.logits is None else tuple(f.logits.shape[1:]),
            embedding=None if f.embedding is None else tuple(f.embedding.shape[1:]),
        )

    s_spec = spec(model, s_tap, s_req, x)
    t_spec = FeatureSpec(names=())
    if teacher is not None and needs.teacher.anything:
        t_spec = spec(teacher, t_tap, t_req, teacher_adapter(x))
    return s_spec, t_spec


class DistillationTrainer(Trainer):
    """Train a student against a frozen teacher with pluggable distillation methods.

    Args:
        model: the student (a transformers, timm-wrapped or CIFAR-zoo image classifier).
        teacher: the frozen teacher; may be None only for ``--method none`` (plain training).
        objective: a :class:`~hf_distill.losses.DistillationObjective` or a ``--method`` string such as
            ``"kd"`` or ``"kd,crd"``.
        args: the usual ``TrainingArguments``; every feature keeps working (accumulation, logging, eval/save
            strategies, ``resume_from_checkpoint``, ``push_to_hub``).
        train_dataset, eval_dataset: datasets yielding ``pixel_values``, ``labels`` and ``index``
            (see :func:`hf_distill.data.prepare_split`).
        data_info: size and labels of the training set; read from ``train_dataset`` when not given.
        student_input, teacher_input: normalization/input size of each model; read from the models when not given.
        report_teacher_accuracy: evaluate the teacher once on the eval set and report it next to the student.
        lr_milestones: epochs at which the learning rate is multiplied by ``lr_decay_rate`` (the benchmarks'
            150/180/210); replaces ``args.lr_scheduler_type`` when given.
        channels_last: store both networks and the batches in channels-last memory format (faster convolutions
            on recent GPUs, notably with bf16/fp16); same results up to rounding.
        teacher_cache: a directory where the teacher's training outputs are stored and read back by later runs
            with the same teacher, data, augmentation and seed (exact; see :mod:`hf_distill.teacher_cache`).
        **kwargs: passed to ``transformers.Trainer`` (callbacks, processing_class, ...).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher: nn.Module | None = None,
        objective: DistillationObjective | str = "kd",
        args: TrainingArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        data_collator: Callable | None = None,
        compute_metrics: Callable | None = None,
        data_info: DataInfo | None = None,
        student_input: InputSpec | None = None,
        teacher_input: InputSpec | None = None,
        report_teacher_accuracy: bool = True,
        lr_milestones: list[float] | None = None,
        lr_decay_rate: float = 0.1,
        channels_last: bool = False,
        teacher_cache: str | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("DistillationTrainer needs the student as `model=`.")
        if isinstance(model, DistillationModel):
            raise ValueError("Pass the student itself as `model=`; the trainer builds the DistillationModel.")
        if args is None:
            args = TrainingArguments(output_dir="outputs/distill")
        if isinstance(objective, str):
            objective = DistillationObjective.from_names(objective)
        needs = objective.needs()
        if needs.teacher.anything and teacher is None:
            raise ValueError(
                f"The methods {', '.join(objective.methods)} need a teacher: pass `teacher=` (or use --method none)."
            )
        _check_label_spaces(model, teacher, train_dataset)
        # The trainer reads `index` and the label columns itself; the container's forward does not name them all.
        args.remove_unused_columns = False
        data_collator = data_collator or collate

        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.student_input = student_input or input_spec(model, kwargs.get("processing_class"))
        self.teacher_input = teacher_input or (input_spec(teacher) if teacher is not None else None)
        self.teacher_adapter = (
            TeacherInput(self.student_input, self.teacher_input) if teacher is not None else None
        )
        torch.manual_seed(args.seed)  # the methods' lazily built parts are initialized from the run's seed
        built = build_distillation_model(
            model, teacher, objective, train_dataset, data_collator, data_info, self.teacher_adapter
        )
        self.data_info = built.data_info
        container = built.container
        self.teacher_request = built.teacher_request
        self.teacher_tap = built.teacher_tap
        self.report_teacher_accuracy = report_teacher_accuracy and teacher is not None
        self._teacher_metrics: dict[str, float] | None = None
        self.lr_milestones = list(lr_milestones or [])
        self.lr_decay_rate = lr_decay_rate
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        super().__init__(
            model=container,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            compute_metrics=compute_metrics or classification_metrics,
            **kwargs,
        )
        self.add_callback(_EpochToDataset(train_dataset))
        self.teacher = None
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            # Device placement and mixed-precision autocast only: the teacher is never wrapped in DDP.
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
            self.teacher_adapter.to(self.args.device)
        self.teacher_cache = TeacherCache.for_trainer(teacher_cache, self) if teacher_cache else None
        if needs.index and train_dataset is not None:
            probe = data_collator([train_dataset[0]])
            if "index" not in probe:
                raise ValueError(
                    f"The methods {', '.join(objective.methods)} need the dataset row index of every sample, but "
                    "the training batches have no 'index'. Prepare the dataset with hf_distill.data.prepare_split."
                )

    def log_objective(self) -> None:
        """Log the resolved objective (methods, weights, hyperparameters, feature layers) once, on the main process."""
        if self.is_world_process_zero():
            obj = self.model.objective
            layers = {
                k: {"student": m.student_layers, "teacher": m.teacher_layers} for k, m in obj.methods.items()
            }
            logger.info("Distillation objective: %s; feature layers: %s", obj.describe(), layers)

    # -- the loss ------------------------------------------------------------------------------------------------
    def _step_info(self, inputs: dict[str, Tensor]) -> StepInfo:
        st = self.state
        return StepInfo(
            labels=inputs["labels"],
            index=inputs.get("index"),
            epoch=float(st.epoch or 0.0),
            global_step=int(st.global_step),
            max_steps=int(st.max_steps or 0),
            num_epochs=float(st.num_train_epochs or 0),
        )

    @torch.no_grad()
    def teacher_features(
        self, pixel_values: Tensor, request: TapRequest | None = None, index: Tensor | None = None
    ) -> Features:
        """Run the frozen teacher once (eval mode, no grad, under the run's autocast); with a teacher cache and the
        training rows' ``index``, read the outputs an earlier run stored instead."""
        if self.teacher_cache is not None and request is None and index is not None:
            return self.teacher_cache.features(
                pixel_values, index, lambda: self.teacher_features(pixel_values)
            )
        self.teacher.eval()
        with self.accelerator.autocast():
            return self.teacher_tap(
                self.teacher, self.teacher_adapter(pixel_values), request or self.teacher_request
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One distillation step: teacher forward (once, no grad), then the student and the methods.

        In evaluation the teacher is not run: the loss is the student's cross-entropy term.
        """
        container = self.accelerator.unwrap_model(model)
        if self.channels_last:
            inputs = {
                **inputs,
                "pixel_values": inputs["pixel_values"].contiguous(memory_format=torch.channels_last),
            }
        teacher_feats = None
        use_teacher = model.training and self.teacher is not None
        if container.phase == "main":
            use_teacher = use_teacher and container.objective.needs_teacher
        if use_teacher:
            teacher_feats = self.teacher_features(inputs["pixel_values"], index=inputs.get("index"))
        outputs = model(
            pixel_values=inputs["pixel_values"],
            labels=inputs.get("labels"),
            index=inputs.get("index"),
            teacher_features=teacher_feats,
            step=self._step_info(inputs) if "labels" in inputs else None,
        )
        loss = outputs["loss"]
        if model.training:
            for k, v in outputs.get("loss_terms", {}).items():
                self._term_sums[k] = self._term_sums.get(k, 0.0) + float(v.detach())
            self._term_count += 1
        return (loss, {"logits": outputs["logits"]}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of every loss term since the last log (``loss_ce``, ``loss_kd``, ...) to training logs."""
        if "loss" in logs and self._term_count:
            for k, v in self._term_sums.items():
                logs[f"loss_{k}"] = round(v / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The benchmarks' step decay when ``lr_milestones`` is set, else the ``TrainingArguments`` schedule."""
        if not self.lr_milestones:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            epochs = self.args.num_train_epochs if self.args.max_steps <= 0 else None
            per_epoch = (
                num_training_steps / epochs
                if epochs
                else len(self.get_train_dataloader()) / self.args.gradient_accumulation_steps
            )
            self.lr_scheduler = multistep_scheduler(
                optimizer if optimizer is not None else self.optimizer,
                self.lr_milestones,
                per_epoch,
                self.lr_decay_rate,
                self.args.get_warmup_steps(num_training_steps),
            )
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- evaluation ----------------------------------------------------------------------------------------------
    def evaluate(
        self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate the student; the first call also evaluates the teacher once and logs its accuracy."""
        self._sync_student_buffers()
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.report_teacher_accuracy and eval_dataset is None:
            first = self._teacher_metrics is None
            if first:
                self._teacher_metrics = self.evaluate_teacher()
            teacher = {f"{metric_key_prefix}_teacher_{k}": v for k, v in self._teacher_metrics.items()}
            if first:
                self.log(teacher)
            metrics.update(teacher)
        return metrics

    @torch.no_grad()
    def _sync_student_buffers(self) -> None:
        """Give every process rank 0's student buffers (BN running statistics) before evaluating.

        DDP broadcasts buffers at the start of each training forward, so after the last step each process holds
        statistics updated on its own shard; evaluation shards would otherwise see slightly different students.
        """
        if self.accelerator.num_processes > 1 and torch.distributed.is_initialized():
            for b in self.accelerator.unwrap_model(self.model).student.buffers():
                torch.distributed.broadcast(b, src=0)

    @torch.no_grad()
    def evaluate_teacher(self, eval_dataset=None) -> dict[str, float]:
        """Accuracy of the teacher on the eval set, gathered over all processes."""
        loader = self.get_eval_dataloader(eval_dataset)
        logits, labels = [], []
        for batch in loader:
            f = self.teacher_features(batch["pixel_values"].to(self.args.device), TapRequest())
            lg, lb = self.accelerator.gather_for_metrics(
                (f.logits.float(), batch["labels"].to(self.args.device))
            )
            logits.append(lg.cpu())
            labels.append(lb.cpu())
        return classification_metrics(EvalPrediction(torch.cat(logits).numpy(), torch.cat(labels).numpy()))

    # -- init stage ------------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Run the methods' initialization stage (if any, and not already done), then the main training."""
        container: DistillationModel = self.model
        if (
            container.objective.init_stage_methods()
            and not container.init_stage_done
            and not resume_from_checkpoint
        ):
            self.run_init_stage()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def run_init_stage(self) -> dict[str, float]:
        """Train the parts that the methods' :class:`~hf_distill.losses.InitStage` names, before the main run.

        Uses a second Trainer on the same container (so DDP, mixed precision and accumulation behave as in the main
        run) with a constant learning rate; nothing is checkpointed. The result is recorded in the logs.
        """
        container: DistillationModel = self.model
        obj = container.objective
        names = obj.init_stage_methods()
        stages = [obj.methods[m].init_stage for m in names]
        epochs = max(s.epochs for s in stages)
        lr = next((s.learning_rate for s in stages if s.learning_rate is not None), self.args.learning_rate)
        train_student = any(s.train_student for s in stages)
        # Only the stage's parameters train; remember the flags to restore them afterwards.
        flags = {n: p.requires_grad for n, p in container.named_parameters()}
        for n, p in container.named_parameters():
            in_stage = any(n.startswith(f"objective.methods.{m}.") for m in names)
            p.requires_grad_(flags[n] and (in_stage or (train_student and n.startswith("student."))))
        stage_args = TrainingArguments(
            output_dir=os.path.join(self.args.output_dir, "init_stage"),
            num_train_epochs=epochs,
            learning_rate=lr,
            lr_scheduler_type="constant",
            optim=self.args.optim,
            weight_decay=self.args.weight_decay,
            per_device_train_batch_size=self.args.per_device_train_batch_size,
            gradient_accumulation_steps=self.args.gradient_accumulation_steps,
            logging_steps=self.args.logging_steps,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            seed=self.args.seed,
            bf16=self.args.bf16,
            fp16=self.args.fp16,
            use_cpu=self.args.use_cpu,
            remove_unused_columns=False,
            ddp_find_unused_parameters=True,
            dataloader_num_workers=self.args.dataloader_num_workers,
            disable_tqdm=self.args.disable_tqdm,
        )
        logger.info("Initialization stage for %s: %.1f epochs at lr %g", ", ".join(names), epochs, lr)
        container.phase = "init"
        stage = _InitStageTrainer(
            parent=self,
            model=container,
            args=stage_args,
            data_collator=self.data_collator,
            train_dataset=self.train_dataset,
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
        self.log(summary)
        # The main run starts a fresh TrainerState: carry the record over into its log history.
        self.add_callback(_CarryLogs([dict(summary, step=0)]))
        return summary

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _student(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False).student

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Write the student alone, in Hub format (``save_pretrained``), plus the processor and the args."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        student = self._student()
        if state_dict is not None:
            state_dict = {k[len("student.") :]: v for k, v in state_dict.items() if k.startswith("student.")}
        if isinstance(student, PreTrainedModel):
            student.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        else:
            sd = state_dict if state_dict is not None else student.state_dict()
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in sd.items()},
                os.path.join(output_dir, SAFE_WEIGHTS_NAME),
                metadata={"format": "pt"},
            )
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(
            self.args, os.path.join(output_dir, "training_args.bin")
        )  # the HF convention, never read back
        # The JSON twin is what the card reads: a model folder's pickle is never unpickled (it could run code).
        with open(os.path.join(output_dir, TRAINING_ARGS_JSON), "w", encoding="utf-8") as f:
            f.write(self.args.to_json_string())

    # -- Hub -----------------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the student; a final save (not a checkpoint) also completes the folder for the Hub: image
        processor, model card, training-curve plot, timm / remote-code format (see :mod:`hf_distill.hub`)."""
        super().save_model(output_dir, _internal_call)
        if not _internal_call:
            from .hub.publish import save_hook

            save_hook(self, output_dir)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The distillation model card (``push_to_hub`` calls this before uploading ``output_dir``); takes
        ``Trainer.create_model_card``'s arguments (see :func:`hf_distill.hub.publish.trainer_model_card`)."""
        from .hub.publish import trainer_model_card

        trainer_model_card(self, *args, **kwargs)

    def _save_distill_state(self, output_dir: str) -> None:
        """The methods' parameters and buffers (heads, memory banks) and the init-stage flag."""
        if not self.args.should_save:
            return
        container = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        state = {
            k: v.detach().cpu().contiguous().clone()
            for k, v in container.state_dict().items()
            if not k.startswith("student.")
        }
        safetensors.torch.save_file(
            state, os.path.join(output_dir, DISTILL_STATE_NAME), metadata={"format": "pt"}
        )

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """Write a full checkpoint atomically: everything goes to ``tmp-checkpoint-N`` and is renamed at the end,
        so an interrupted save never leaves a half-written ``checkpoint-N`` for ``resume_from_checkpoint``."""
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.hp_search_backend is None and trial is None:
            self.store_flos()
        run_dir = self._get_output_dir(trial=trial)
        final_dir = os.path.join(run_dir, folder)
        tmp_dir = os.path.join(run_dir, f"tmp-{folder}")
        if self.args.should_save and os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)  # left over by an interrupted save
        self.accelerator.wait_for_everyone()
        self.save_model(tmp_dir, _internal_call=True)
        self._save_distill_state(tmp_dir)
        if not self.args.save_only_model:
            os.makedirs(tmp_dir, exist_ok=True)
            self._save_optimizer_and_scheduler(tmp_dir)
            self._save_scaler(tmp_dir)
            self._save_rng_state(tmp_dir)
        if (
            self.args.save_strategy in (SaveStrategy.STEPS, SaveStrategy.EPOCH, SaveStrategy.BEST)
            and self.state.best_global_step
        ):
            best_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
            if self.state.best_global_step == self.state.global_step or os.path.exists(best_dir):
                self.state.best_model_checkpoint = best_dir
        if self.args.should_save:
            for cb in [
                c for c in self.callback_handler.callbacks + [self.control] if isinstance(c, ExportableState)
            ]:
                name = cb.__class__.__name__
                if isinstance(self.state.stateful_callbacks.get(name), list):
                    self.state.stateful_callbacks[name].append(cb.state())
                else:
                    self.state.stateful_callbacks[name] = cb.state()
            self.state.save_to_json(os.path.join(tmp_dir, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            if os.path.exists(final_dir):
                shutil.rmtree(final_dir)
            os.replace(tmp_dir, final_dir)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self._push_from_checkpoint(final_dir)
        if self.args.should_save:
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Restore the student and the methods' state from a checkpoint written by this trainer."""
        container = self.accelerator.unwrap_model(
            model if model is not None else self.model, keep_torch_compile=False
        )
        load_checkpoint_into(container, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info(
            "Loading best model from %s (score: %s).",
            self.state.best_model_checkpoint,
            self.state.best_metric,
        )
        load_checkpoint_into(
            self.accelerator.unwrap_model(self.model, keep_torch_compile=False),
            self.state.best_model_checkpoint,
        )


class _InitStageTrainer(Trainer):
    """The Trainer of the initialization stage: same container (in phase "init"), same teacher."""

    def __init__(self, parent: DistillationTrainer, **kwargs: Any) -> None:
        self.parent = parent
        super().__init__(**kwargs)
        self.add_callback(_EpochToDataset(self.train_dataset))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p = self.parent
        teacher_feats = p.teacher_features(inputs["pixel_values"])
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
        return (outputs["loss"], {"logits": outputs["logits"]}) if return_outputs else outputs["loss"]

    def _save(self, output_dir=None, state_dict=None) -> None:  # the stage writes nothing
        return

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        super().log({(k if k == "epoch" else f"init_stage/{k}"): v for k, v in logs.items()}, start_time)


class _EpochToDataset(TrainerCallback):
    """Tell the training set which epoch starts: its augmentation is seeded by (seed, epoch, row)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(math.floor((state.epoch or 0.0) + 1e-6))


class _CarryLogs(TrainerCallback):
    """Put records made before ``train()`` (the init stage) into the main run's log history."""

    def __init__(self, records: list[dict[str, float]]) -> None:
        self.records = records

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            state.log_history[:0] = self.records


def load_checkpoint_into(container: DistillationModel, folder: str) -> None:
    """Load a checkpoint folder (student in Hub format + ``distill_state.safetensors``) into ``container``.

    Raises:
        ValueError: the folder is not a DistillationTrainer checkpoint, or it holds another architecture or method.
    """
    student = container.student
    single = os.path.join(folder, SAFE_WEIGHTS_NAME)
    index = os.path.join(folder, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        sd = safetensors.torch.load_file(single, device="cpu")
    elif os.path.isfile(index):
        import json

        files = sorted(set(json.load(open(index))["weight_map"].values()))
        sd = {}
        for f in files:
            sd.update(safetensors.torch.load_file(os.path.join(folder, f), device="cpu"))
    else:
        raise ValueError(
            f"{folder} holds no student weights ({SAFE_WEIGHTS_NAME}); it is not a checkpoint of this trainer."
        )
    res = student.load_state_dict(sd, strict=False)
    tied = set(getattr(student, "all_tied_weights_keys", {}) or {})
    missing = [k for k in res.missing_keys if k not in tied]
    if missing or res.unexpected_keys:
        raise ValueError(
            f"The student weights in {folder} do not fit this student ({type(student).__name__}): "
            f"missing {missing[:5]}, unexpected {res.unexpected_keys[:5]}. Resume with the same student architecture."
        )
    state_file = os.path.join(folder, DISTILL_STATE_NAME)
    own = {k: v for k, v in container.state_dict().items() if not k.startswith("student.")}
    if not os.path.isfile(state_file):
        raise ValueError(
            f"{folder} has no {DISTILL_STATE_NAME}: the methods' state (heads, memory banks) cannot be restored. "
            "Resume from a checkpoint written by DistillationTrainer."
        )
    state = safetensors.torch.load_file(state_file, device="cpu")
    if set(state) != set(own):
        raise ValueError(
            f"The distillation state in {folder} belongs to another objective: it has {sorted(set(state) - set(own))[:5]} "
            f"that this run lacks and lacks {sorted(set(own) - set(state))[:5]}. Resume with the same --method."
        )
    container.load_state_dict(state, strict=False)


def _check_label_spaces(student: nn.Module, teacher: nn.Module | None, train_dataset) -> None:
    ns = num_labels_of(student)
    if teacher is not None:
        nt = num_labels_of(teacher)
        if ns is not None and nt is not None and ns != nt:
            raise ValueError(
                f"The teacher predicts {nt} classes but the student {ns}: they must share one label set. "
                f"Create the student with num_labels={nt}, or use a teacher trained on the same classes."
            )
    nd = getattr(train_dataset, "num_classes", None)
    if nd is None and isinstance(train_dataset, datasets.Dataset):
        col = next((c for c in ("labels", "label", "fine_label") if c in train_dataset.column_names), None)
        f = train_dataset.features[col] if col is not None else None
        nd = f.num_classes if isinstance(f, datasets.ClassLabel) else None
    if nd is not None and ns is not None and nd != ns:
        raise ValueError(
            f"The dataset has {nd} classes but the student predicts {ns}: create the student with "
            f"num_labels={nd}, or pick the dataset the teacher was trained on."
        )


def _data_info(train_dataset, num_classes: int | None) -> DataInfo:
    if train_dataset is None:
        return DataInfo(num_samples=0, num_classes=num_classes or 0)
    labels = getattr(train_dataset, "labels", None)
    if not isinstance(labels, torch.Tensor) and isinstance(train_dataset, datasets.Dataset):
        raw = train_dataset.with_format(None)
        col = next((c for c in ("labels", "label", "fine_label") if c in raw.column_names), None)
        labels = torch.as_tensor(raw[col], dtype=torch.long) if col is not None else None
    if not isinstance(labels, torch.Tensor):
        labels = None
    return DataInfo(num_samples=len(train_dataset), num_classes=num_classes or 0, labels=labels)


__all__ = [
    "BuiltDistillation",
    "DistillationModel",
    "DistillationTrainer",
    "build_distillation_model",
    "load_checkpoint_into",
    "num_labels_of",
]

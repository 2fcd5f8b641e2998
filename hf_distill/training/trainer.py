"""``DistillationTrainer``: a ``transformers.Trainer`` that trains a student against a frozen teacher. The file is
longer than 500 lines because it is one class: the Trainer hooks it overrides (loss, logging, evaluation, saving,
checkpoints) share the run's state, and splitting them would scatter one object over several files.

The shape follows timm's distillation task: the student and every trainable part of the distillation methods live
in one module (:class:`DistillationModel`), which is what the Trainer optimizes and what Accelerate wraps in DDP and
autocast; the teacher stays outside it, frozen, in eval mode, and runs once per batch under ``torch.no_grad()``.
Evaluation and export see the student alone; checkpoints also hold the methods' state (heads, memory banks).

The model and its construction live in :mod:`hf_distill.training.distillation_model`, the methods' initialization stage in
:mod:`hf_distill.training.init_stage`; this file is the training loop's hooks. A non-finite loss term, gradient or weight
stops the run with :class:`NonFiniteLossError` before anything non-finite is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import ProgressCallback, Trainer, TrainingArguments
from transformers.trainer_utils import HubStrategy, TrainOutput

from ..data.datasets import IndexedRows, check_batch_rows, class_names_of, collate
from ..data.streaming import StreamPosition, is_stream, stream_loader
from ..features import LOGITS_ONLY, FeatureNeeds, Features
from ..methods import DataInfo, DistillationObjective, StepInfo
from ..models.normalization import InputSpec, TeacherInput, input_spec
from ..models.wrapping import is_raw_timm_model, model_name, name_classes, wrap_timm_model
from ..redact import hide_token
from .checkpoints import (
    check_checkpoint_fits,
    finished_checkpoint,
    load_finished_checkpoint,
    write_student_folder,
)
from .ddp_graph import choose_ddp_graph
from .distillation_model import (
    BuiltDistillation,
    DistillationModel,
    build_distillation_model,
    num_labels_of,
)
from .ensemble import TeacherEnsemble, as_teacher, build_ensemble_distillation, evaluate_members
from .init_stage import EpochToDataset, run_init_stage
from .metrics import classification_metrics
from .non_finite import NonFiniteLossError, StopOnNonFiniteGradient, check_state, check_terms
from .outputs import DEFAULT_EXPORT_CALLBACKS, ExportCallback
from .process_group import destroy_process_group_at_exit
from .schedule import multistep_scheduler
from .teacher_cache import TeacherCache

logger = logging.getLogger(__name__)

#: --teacher_precision: the teacher's own autocast dtype (None: the run's precision)
TEACHER_DTYPES = {"same": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class DistillationTrainer(Trainer):
    """Train a student against a frozen teacher with pluggable distillation methods.

    Args:
        model: the student (a transformers, timm-wrapped or CIFAR-zoo image classifier).
        teacher: the frozen teacher; may be None only for ``--method none`` (plain training). A list of two or more
            teachers distills their ensemble (see :mod:`hf_distill.training.ensemble`).
        objective: a :class:`~hf_distill.methods.DistillationObjective` or a ``--method`` string such as
            ``"kd"`` or ``"kd,crd"``.
        args: the usual ``TrainingArguments``; every feature keeps working (accumulation, logging, eval/save
            strategies, ``resume_from_checkpoint``, ``push_to_hub``).
        train_dataset, eval_dataset: datasets yielding ``pixel_values``, ``labels`` and ``index``
            (see :func:`hf_distill.data.datasets.prepare_split`).
        data_info: size and labels of the training set; read from ``train_dataset`` when not given.
        student_input, teacher_input: normalization/input size of each model; read from the models when not given.
        report_teacher_accuracy: evaluate the teacher once on the eval set and report it next to the student.
        lr_milestones: epochs at which the learning rate is multiplied by ``lr_decay_rate`` (the benchmarks'
            150/180/210); replaces ``args.lr_scheduler_type`` when given.
        channels_last: store both networks and the batches in channels-last memory format (faster convolutions
            on recent GPUs, notably with bf16/fp16); same results up to rounding.
        teacher_precision: ``"same"`` (the teacher runs in the run's precision), ``"bf16"`` or ``"fp16"`` (the
            teacher's forward alone under that autocast: faster on hardware with fast half precision, outputs not
            bit-equal to float32 ones).
        teacher_cache: a directory where the teacher's training outputs are stored and read back by later runs
            with the same teacher, data, augmentation and seed (exact; see :mod:`hf_distill.training.teacher_cache`).
        teacher_cache_topk: with ``teacher_cache``, store only the k largest teacher logits of each row (and one
            logit for the rest); every run, cold or warm, then trains on the reconstructed logits. Logit methods
            only; off (``None``, exact) by default. See ``docs/teacher_cache.md``.
        ensemble_weights, ensemble_mode: with a list of teachers, their weights and how logit methods combine them
            (:class:`~hf_distill.training.ensemble.TeacherEnsemble`).
        **kwargs: passed to ``transformers.Trainer`` (callbacks, processing_class, ...).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher: nn.Module | Sequence[nn.Module] | None = None,
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
        teacher_precision: str = "same",
        teacher_cache: str | None = None,
        teacher_cache_topk: int | None = None,
        ensemble_weights: Sequence[float] | None = None,
        ensemble_mode: str = "distribution",
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise ValueError("DistillationTrainer needs the student as `model=`.")
        _refuse_names(model, teacher)
        if isinstance(model, DistillationModel):
            raise ValueError("Pass the student itself as `model=`; the trainer builds the DistillationModel.")
        if args is None:
            args = TrainingArguments(output_dir="outputs/distill")
        # The token stays usable for uploads but pickles as a placeholder: upstream writes ``training_args.bin``
        # (a pickle of ``args``) into every checkpoint and uploads it with the model.
        args.hub_token = hide_token(args.hub_token)
        if args.push_to_hub and args.hub_strategy != HubStrategy.END:
            # Upstream's checkpoint-time push uploads the output folder unscanned (training_args.bin holds local
            # paths); the export callbacks push the scanned folder at the end and on every save_model() instead.
            logger.info(
                "--hub_strategy %s becomes 'end': hf_distill pushes the scanned export.", args.hub_strategy
            )
            args.hub_strategy = HubStrategy.END
        if isinstance(objective, str):
            objective = DistillationObjective.from_names(objective)
        # What a timm or transformers user already has: a raw timm module is wrapped (same parameters) so that the
        # saved student loads with from_pretrained and timm; a config with placeholder labels gets the dataset's
        # class names.
        if is_raw_timm_model(model):
            model = wrap_timm_model(model)
        name_classes(model, class_names_of(train_dataset))
        if is_raw_timm_model(teacher):
            teacher = wrap_timm_model(teacher)
        teacher = as_teacher(teacher, ensemble_weights, ensemble_mode)
        self.ensemble = teacher if isinstance(teacher, TeacherEnsemble) else None
        needs = objective.needs()
        # the methods' dry run and the label check read real rows: a stream (no length) gives its first two
        build_data, data_info = _streaming_build_data(
            train_dataset, objective, lr_milestones, teacher_cache, data_info
        )
        if needs.teacher.anything and teacher is None:
            raise ValueError(
                f"The methods {', '.join(objective.methods)} need a teacher: pass `teacher=` (or use --method none)."
            )
        # The trainer reads `index` and the label columns itself; the container's forward does not name them all.
        args.remove_unused_columns = False
        data_collator = data_collator or collate
        check_batch_rows(train_dataset, data_collator, "training")
        for name, split in (eval_dataset if isinstance(eval_dataset, dict) else {"": eval_dataset}).items():
            check_batch_rows(split, data_collator, f"evaluation{f' ({name})' if name else ''}")
        if needs.index and train_dataset is not None:
            # a per-row state (CRD's memory bank) needs the row index: added where the rows lack it
            train_dataset = IndexedRows.if_needed(train_dataset)
            if "index" not in data_collator([train_dataset[0]]):
                raise ValueError(
                    f"The methods {', '.join(objective.methods)} need the dataset row index of every sample, but "
                    "the data collator drops the rows' 'index': keep it in the batch (or use hf_distill.data.datasets.collate)."
                )

        if teacher_precision not in TEACHER_DTYPES:
            raise ValueError(
                f"Unknown --teacher_precision {teacher_precision!r}: use one of {', '.join(TEACHER_DTYPES)}."
            )
        self.teacher_precision = teacher_precision
        self.channels_last = channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
            if teacher is not None:
                teacher.to(memory_format=torch.channels_last)
        self.student_input = student_input or _trained_size(
            input_spec(model, kwargs.get("processing_class")), build_data, data_collator
        )
        single = teacher is not None and self.ensemble is None
        self.teacher_input = teacher_input or (input_spec(teacher) if single else None)
        self.teacher_adapter = TeacherInput(self.student_input, self.teacher_input) if single else None
        torch.manual_seed(args.seed)  # the methods' lazily built parts are initialized from the run's seed
        if self.ensemble is not None:
            built = build_ensemble_distillation(
                model, teacher, objective, build_data, data_collator, data_info, self.student_input
            )
        else:
            built = build_distillation_model(
                model, teacher, objective, build_data, data_collator, data_info, self.teacher_adapter
            )
        self.data_info = built.data_info
        container = built.container
        self.teacher_request = built.teacher_request
        self.teacher_tap = built.teacher_tap
        self.teacher_label_order = built.teacher_label_order
        self._evaluating_teacher = False
        self._teacher_member: int | None = None  # the ensemble member being evaluated (None: the ensemble)
        self.report_teacher_accuracy = report_teacher_accuracy and teacher is not None
        self._teacher_metrics: dict[str, float] | None = None
        self.lr_milestones = list(lr_milestones or [])
        self.lr_decay_rate = lr_decay_rate
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        #: where the teacher came from (the card names it); the recipe may set a Hub id or a folder
        self.teacher_name = model_name(teacher) if self.ensemble is None else None
        #: summary fields the next final save passes to the export callbacks (e.g. a baseline's accuracy)
        self.summary_fields: dict[str, Any] = {}
        #: the sum of the per-step training losses of this ``train()`` call (what ``train_loss`` averages)
        self.train_loss_sum = 0.0
        self._loss_sum: Tensor | None = None
        # --label_smoothing_factor: the Trainer's own loss applies it, ours replaces that loss, so the objective does
        objective.label_smoothing = float(args.label_smoothing_factor)
        #: how DDP finds the parameters a step uses (training/ddp_graph.py); the init stage follows it
        self.ddp_settings, ddp_graph = choose_ddp_graph(args, objective)
        if args.world_size > 1 and args.process_index == 0:
            logger.info("DDP: %s.", ddp_graph)
        # the Trainer reads them once, when it builds its Accelerator in __init__; the caller's arguments get their
        # own values back afterwards (they may build another trainer, for another objective)
        user_ddp = {k: getattr(args, k) for k in self.ddp_settings}
        for k, v in self.ddp_settings.items():
            setattr(args, k, v)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks += [factory() for factory in DEFAULT_EXPORT_CALLBACKS]
        try:
            super().__init__(
                model=container,
                args=args,
                data_collator=data_collator,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                compute_metrics=compute_metrics or classification_metrics,
                callbacks=callbacks,
                **kwargs,
            )
        finally:
            for k, v in user_ddp.items():
                setattr(args, k, v)
        self.add_callback(EpochToDataset(train_dataset))
        if is_stream(train_dataset):  # each process's place in the stream, in every checkpoint
            self.add_callback(StreamPosition(train_dataset))
        self.add_callback(StopOnNonFiniteGradient(container))
        destroy_process_group_at_exit()  # a live gloo group can abort the process at shutdown
        objective.check_batch_size(self.args.per_device_train_batch_size, self.accelerator.num_processes)
        self.teacher = None
        if self.ensemble is not None:
            self.ensemble.prepare(self.accelerator)
            self.teacher = self.ensemble
        elif teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
            # Device placement and mixed-precision autocast only: the teacher is never wrapped in DDP.
            self.teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
            self.teacher_adapter.to(self.args.device)
            if self.teacher_label_order is not None:
                logger.info("The teacher names the classes in another order: its logits are remapped.")
                self.teacher_label_order = self.teacher_label_order.to(self.args.device)
        if teacher_cache_topk is not None and not teacher_cache:
            raise ValueError("--teacher_cache_topk needs --teacher_cache DIR (the cache it applies to).")
        self.teacher_cache = (
            TeacherCache.for_trainer(teacher_cache, self, topk=teacher_cache_topk) if teacher_cache else None
        )

    def log_objective(self) -> None:
        """Log the resolved objective (methods, weights, hyperparameters, feature layers) once, on the main process."""
        if self.is_world_process_zero():
            obj = self.model.objective
            layers = {
                k: {"student": m.student_layer_names, "teacher": m.teacher_layer_names}
                for k, m in obj.methods.items()
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
        self, pixel_values: Tensor, request: FeatureNeeds | None = None, index: Tensor | None = None
    ) -> Features:
        """Run the frozen teacher once (eval mode, no grad, under the run's autocast); with a teacher cache and the
        training rows' ``index``, read the outputs an earlier run stored instead. Its logits
        come in the student's class order. An ensemble gives every teacher's outputs (:class:`EnsembleFeatures`),
        each read from its own cache where stored."""
        cached = self.teacher_cache is not None and request is None and index is not None
        if self.ensemble is not None:
            caches = self.teacher_cache.members if cached else None
            return self.ensemble.features(pixel_values, self.teacher_autocast, request, caches, index)
        if cached:
            return self.teacher_cache.features(
                pixel_values, index, lambda: self.teacher_features(pixel_values)
            )
        self.teacher.eval()
        with self.teacher_autocast():
            f = self.teacher_tap(
                self.teacher, self.teacher_adapter(pixel_values), request or self.teacher_request
            )
        if self.teacher_label_order is not None and f.logits is not None:
            f.logits = f.logits[:, self.teacher_label_order]
        return f

    def teacher_autocast(self) -> contextlib.ExitStack:
        """The autocast the teacher runs under: the run's (``--bf16``/``--fp16``), or ``--teacher_precision``'s
        on top of it for the teacher alone."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.accelerator.autocast())
        dtype = TEACHER_DTYPES[self.teacher_precision]
        if dtype is not None:
            stack.enter_context(torch.autocast(self.args.device.type, dtype=dtype))
        return stack

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """One distillation step: teacher forward (once, no grad), then the student and the methods.

        In evaluation the teacher is not run: the loss is the student's cross-entropy term.
        """
        if self._evaluating_teacher:
            return self._teacher_loss(inputs, return_outputs)
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
            terms = {k: float(v.detach()) for k, v in outputs.get("loss_terms", {}).items()}
            logged = {f"loss_{k}": v for k, v in terms.items()}  # the names the logs use
            check_terms({**logged, "loss": float(loss.detach())}, self.state.global_step + 1, self.args)
            for k, v in terms.items():
                self._term_sums[k] = self._term_sums.get(k, 0.0) + v
            self._term_count += 1
        return (loss, {"logits": outputs["logits"]}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of every loss term since the last log (``loss_ce``, ``loss_kd``, ...) to training logs."""
        if "loss" in logs and self._term_count:
            for k, v in self._term_sums.items():
                logs[f"loss_{k}"] = round(v / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        if "loss" in logs:  # a training log: the weights can diverge while the losses are still finite
            losses = ", ".join(f"{k}={v:g}" for k, v in logs.items() if k.startswith("loss"))
            check_state(self._container(), self.state.global_step, self.args, "Training stopped", losses)
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        """The benchmarks' step decay when ``lr_milestones`` is set, else the ``TrainingArguments`` schedule."""
        if not self.lr_milestones:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            # upstream's scheduler first, for its bookkeeping (a later train() call resets what it created); ours
            # replaces it before any step
            optimizer = optimizer if optimizer is not None else self.optimizer
            super().create_scheduler(num_training_steps, optimizer)
            epochs = self.args.num_train_epochs if self.args.max_steps <= 0 else None
            per_epoch = (
                num_training_steps / epochs
                if epochs
                else len(self.get_train_dataloader()) / self.args.gradient_accumulation_steps
            )
            self.lr_scheduler = multistep_scheduler(
                optimizer,
                self.lr_milestones,
                per_epoch,
                self.lr_decay_rate,
                self.args.get_warmup_steps(num_training_steps),
            )
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
                if self.ensemble is not None:
                    self.ensemble.member_metrics = evaluate_members(self)
            teacher = {f"{metric_key_prefix}_teacher_{k}": v for k, v in self._teacher_metrics.items()}
            for i, m in enumerate(self.ensemble.member_metrics if self.ensemble is not None else []):
                teacher.update({f"{metric_key_prefix}_teacher{i + 1}_{k}": v for k, v in m.items()})
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

    def evaluate_teacher(self, eval_dataset=None, member: int | None = None) -> dict[str, float]:
        """The teacher's ``compute_metrics`` (accuracy, top-5) on the eval set, through the Trainer's own
        evaluation loop (batching, gathering over processes, metrics) with the teacher in the student's place.
        With an ensemble: the ensemble's averaged distribution, or teacher ``member`` alone."""
        loader = self.get_eval_dataloader(eval_dataset)
        self._evaluating_teacher, self._teacher_member = True, member
        # no progress bar: evaluation_loop opens one that only on_evaluate would close, and it would linger
        progress = self.pop_callback(ProgressCallback)
        try:
            out = self.evaluation_loop(loader, "Teacher evaluation", metric_key_prefix="teacher")
        finally:
            self._evaluating_teacher, self._teacher_member = False, None
            if progress is not None:
                self.add_callback(progress)
        keep = set(out.metrics) - {
            f"teacher_{k}" for k in ("runtime", "samples_per_second", "steps_per_second")
        }
        return {k.removeprefix("teacher_"): v for k, v in out.metrics.items() if k in keep}

    @torch.no_grad()
    def _teacher_loss(self, inputs: dict[str, Tensor], return_outputs: bool):
        """``compute_loss`` while the teacher is evaluated: its cross-entropy and logits."""
        f = self.teacher_features(inputs["pixel_values"], LOGITS_ONLY)
        logits = (f if self._teacher_member is None else f.members[self._teacher_member]).logits.float()
        loss = F.cross_entropy(logits, inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss

    # -- saving ----------------------------------------------------------------------------------------------------
    def _export_callbacks(self) -> list[ExportCallback]:
        return [c for c in self.callback_handler.callbacks if isinstance(c, ExportCallback)]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save for a checkpoint or export the student.

        A checkpoint (upstream's ``_save_checkpoint`` calls this with the checkpoint folder) holds the trained
        container (student and the methods' parts and buffers) in upstream's own format, written and read back by
        upstream's code. Any other save exports the student alone, in Hub format (:func:`write_student_folder`,
        config last, so an interrupted save is recognisably incomplete), then tells the export callbacks (the Hub
        layer writes the card, the processor and the plots) and pushes when ``args.push_to_hub`` asks for it.

        Raises:
            NonFiniteLossError: the student or the methods hold a NaN or an infinity (nothing is written).
        """
        self.check_finite_state()
        if _internal_call and output_dir is not None:
            super().save_model(output_dir, _internal_call)
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            write_student_folder(self._student(), output_dir, self.args, self.processing_class)
            for callback in self._export_callbacks():
                callback.on_export(self, output_dir, **self.summary_fields)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """The distillation model card, written by the export callbacks (``push_to_hub`` calls this before
        uploading); takes ``Trainer.create_model_card``'s arguments."""
        if not self.is_world_process_zero():
            return
        callbacks = self._export_callbacks()
        if not callbacks:
            super().create_model_card(*args, **kwargs)
        for callback in callbacks:
            callback.on_model_card(self, **{**self.summary_fields, **kwargs})

    def push_to_hub(
        self, commit_message: str | None = "End of training", blocking: bool = True, **kwargs: Any
    ):
        """Export the student and upload it through the first export callback that uploads (the Hub layer's,
        with its ignore list and checks); without one, upstream's ``push_to_hub``."""
        callbacks = self._export_callbacks()
        if not callbacks:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, **kwargs)
        self.save_model(_internal_call=True)  # no folder given: the export, on every process
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        for callback in callbacks:
            done = callback.on_push(self, commit_message=commit_message, blocking=blocking, **kwargs)
            if done is not None:
                return done
        return None

    def check_finite_state(self) -> None:
        """Refuse to write weights or buffers (BN statistics, memory banks) that are NaN or infinite."""
        check_state(self._container(), self.state.global_step, self.args)

    # -- resuming ------------------------------------------------------------------------------------------------
    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None) -> Tensor:
        """Upstream's step; the step's loss is also summed here (a resumed run reports its loss over all segments
        from this sum, not from the Trainer's private counters)."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        return loss

    def loss_sum(self) -> float:
        """The sum of the per-step training losses of this ``train()`` call so far (this process)."""
        return float(self._loss_sum) if self._loss_sum is not None else 0.0

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        """Run the methods' initialization stage (if any, and not already done), then the main training.

        Resuming: the checkpoint must hold this objective's state (one line otherwise, before anything loads), and
        a checkpoint at the end of its run is that run's final state: it is loaded and nothing more is trained
        (upstream would train one step past a run that ended mid-epoch).
        """
        self._loss_sum = None
        if isinstance(resume_from_checkpoint, str):
            check_checkpoint_fits(self._container(), resume_from_checkpoint)
            if finished_checkpoint(resume_from_checkpoint):
                self.state = load_finished_checkpoint(self._container(), resume_from_checkpoint)
                logger.info(
                    "%s is the end of its run (step %d of %d): nothing left to train.",
                    resume_from_checkpoint,
                    self.state.global_step,
                    self.state.max_steps,
                )
                return TrainOutput(self.state.global_step, _last_train_loss(self.state.log_history), {})
        if is_stream(self.train_dataset):
            self.train_dataset.begin(
                self.args.process_index, self.args.world_size, resume_from_checkpoint, self.args
            )
        container: DistillationModel = self.model
        if (
            container.objective.init_stage_methods()
            and not container.init_stage_done
            and not resume_from_checkpoint
        ):
            self.run_init_stage()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def get_train_dataloader(self):
        """Upstream's loader, except for a stream: its own (this process's shards, rows in order, full batches),
        placed on the device by Accelerate but not split again across processes."""
        if not is_stream(self.train_dataset):
            return super().get_train_dataloader()
        return stream_loader(self.train_dataset, self.args, self.data_collator, self.accelerator)

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """Upstream skips the batches already trained by reading them; a stream moves to its saved position
        instead (replaying its current pass without decoding images)."""
        if not is_stream(self.train_dataset):
            return super().get_resumed_dataloader(dataloader, num_batches)
        self.train_dataset.seek(num_batches * self.args.train_batch_size)
        return dataloader

    def run_init_stage(self) -> dict[str, float]:
        """The methods' initialization stage (see :func:`hf_distill.training.init_stage.run_init_stage`)."""
        return run_init_stage(self)

    # -- the networks ----------------------------------------------------------------------------------------------
    def _container(self) -> DistillationModel:
        return self.accelerator.unwrap_model(self.model, keep_torch_compile=False)

    def _student(self) -> nn.Module:
        return self._container().student

    @property
    def teacher_metrics(self) -> dict[str, float] | None:
        """The teacher's evaluation metrics (accuracy, top-5), once :meth:`evaluate` has measured them."""
        return self._teacher_metrics


def check_streaming_objective(
    objective: DistillationObjective, lr_milestones: Sequence[float] | None, teacher_cache: str | None = None
) -> None:
    """Refuse what a stream (no length, no row numbers) cannot train.

    Raises:
        ValueError: a method with a state per row (CRD's memory bank) or an initialization stage counted in epochs,
            ``lr_milestones`` (epochs), or a teacher cache (kept per row); one line naming it.
    """
    if teacher_cache:
        raise ValueError(
            "--teacher_cache stores the teacher's outputs per row of a map-style training set and cannot follow a "
            "stream: drop --teacher_cache (teacher_cache=) or --streaming."
        )
    per_row = [name for name, m in objective.methods.items() if m.needs().index]
    if per_row:
        raise ValueError(
            f"--method {','.join(per_row)} keeps a state per training row (a memory bank sized by the dataset), "
            "which a stream does not number: drop --streaming or choose a method without per-row state."
        )
    staged = objective.init_stage_methods()
    if staged:
        raise ValueError(
            f"--method {','.join(staged)} starts with an initialization stage counted in epochs, which a stream "
            "does not have: drop --streaming or choose a method without one."
        )
    if lr_milestones:
        raise ValueError(
            "--lr_milestones counts epochs, which a stream does not have: use --lr_scheduler_type (e.g. cosine) "
            "over --max_steps, or drop --streaming."
        )


def _streaming_build_data(train_dataset, objective, lr_milestones, teacher_cache, data_info):
    """What the model is built from: the training set itself, or a stream's first two rows and its class count.

    Raises:
        ValueError: a ``datasets.IterableDataset`` not wrapped for training, or a stream with what it cannot train.
    """
    if isinstance(train_dataset, datasets.IterableDataset):
        raise ValueError(
            "A datasets.IterableDataset needs its transform and per-process reading: wrap it with "
            "hf_distill.data.streaming.prepare_stream(...) and pass the result's .dataset."
        )
    if not is_stream(train_dataset):
        return train_dataset, data_info
    check_streaming_objective(objective, lr_milestones, teacher_cache)
    return train_dataset.head(2), data_info or DataInfo(num_samples=0, num_classes=train_dataset.num_classes)


def _refuse_names(model, teacher) -> None:
    """The trainer takes networks, not their names: a name would need a loading policy (which head, whether a
    teacher without trained weights is acceptable) that the recipe owns (``--teacher``, ``--allow_untrained_teacher``).

    Raises:
        ValueError: ``model`` or a teacher given as a string (one line with the loader to call).
    """
    teachers = list(teacher) if isinstance(teacher, list | tuple) else [teacher]
    for role, value in (("model", model), *(("teacher", t) for t in teachers)):
        if isinstance(value, str):
            what = "student" if role == "model" else "teacher"
            raise ValueError(
                f"{role}={value!r} is a name: DistillationTrainer takes the {what} as a network. Load it first, e.g. "
                f"hf_distill.models.loading.load_model({value!r}, role={what!r}) (a model folder, Hub id, timm or "
                "CIFAR-zoo name), or timm.create_model / AutoModelForImageClassification.from_pretrained."
            )


def _trained_size(spec: InputSpec, train_dataset, collator: Callable) -> InputSpec:
    """``spec`` with the image size of the training batches (a timm model created for 224 px and trained on 32 px
    images is published as a 32 px model)."""
    if train_dataset is None or not hasattr(train_dataset, "__len__") or len(train_dataset) == 0:
        return spec
    pixels = collator([train_dataset[0]]).get("pixel_values")
    if pixels is None or pixels.dim() != 4 or pixels.shape[-1] != pixels.shape[-2]:
        return spec
    size = int(pixels.shape[-1])
    return spec if size == spec.image_size else dataclasses.replace(spec, image_size=size)


def _last_train_loss(log_history: list[dict[str, Any]]) -> float:
    final = next((r for r in reversed(log_history) if "train_loss" in r), None)
    return float(final["train_loss"]) if final is not None else float("nan")


__all__ = [
    "BuiltDistillation",
    "DistillationModel",
    "DistillationTrainer",
    "NonFiniteLossError",
    "build_distillation_model",
    "num_labels_of",
]

"""Turn a saved student into a complete Hub repository folder, and push it.

A complete folder holds what a user of the Hub needs and nothing of the training machinery:

* the weights in safetensors and a ``config.json`` that ``AutoModelForImageClassification.from_pretrained`` loads:
  transformers students in their own format; timm students in timm's format (``timm.create_model("hf-hub:...")``
  loads them too); CIFAR-zoo students as custom code (``auto_map`` + the model files copied by
  ``save_pretrained``), loadable with ``trust_remote_code=True`` where hf_distill is not installed;
* an image processor that ``AutoImageProcessor.from_pretrained`` loads, with the student's size/mean/std;
* ``README.md``: the model card (:mod:`hf_distill.hub.card`), ``training_curves.png`` shown in it, and
  ``distillation_summary.json`` from which the card can be rebuilt without the trainer.

The same :func:`complete_folder` runs from the trainer (``save_model``/``push_to_hub``) and from
``recipes/push.py``, and so does the upload (:func:`~hf_distill.hub.push.push_folder`, re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_NAME

from ..models.normalization import InputSpec
from .card import CARD_MARKER, build_card
from .card_file import CARD_NAME, merge_cards, save_card
from .code_check import foreign_code, own_remote_code
from .collect import CIFAR_MODEL_TYPE, as_summary, is_timm_student, trainer_student
from .eval_files import write_eval_result_files
from .metadata import eval_results
from .plot import PLOT_NAME, plot_training_curves
from .processor import student_image_processor
from .push import (
    IGNORE_PATTERNS,
    PROCESSOR_NAME,
    HubError,
    PublishError,
    PushPlan,
    check_folder,
    has_weights,
    plan_push,
    push_folder,
    read_json,
)
from .summary import DistillationSummary
from .timm_export import save_timm_folder


def _trainer_parts(trainer: Any) -> tuple[Any, InputSpec | None, Any]:
    return (
        trainer_student(trainer),
        getattr(trainer, "student_input", None),
        getattr(trainer, "processing_class", None),
    )


def _spec_from_summary(summary: DistillationSummary) -> InputSpec | None:
    if summary.image_size and summary.image_mean and summary.image_std:
        return InputSpec(tuple(summary.image_mean), tuple(summary.image_std), int(summary.image_size))
    return None


def load_student(folder: str | os.PathLike) -> Any:
    """Load the student saved in ``folder`` (CIFAR-zoo classes come from hf_distill, not remote code).

    Args:
        folder: the model folder.

    Returns:
        The model.
    """
    from transformers import AutoModelForImageClassification

    from ..models import modeling_cifar  # noqa: F401  (registers the zoo with the Auto classes)

    return AutoModelForImageClassification.from_pretrained(str(folder))


def _ensure_model_files(folder: str, student: Any, spec: InputSpec | None, library: str) -> None:
    config_path = os.path.join(folder, CONFIG_NAME)
    if library == "timm":
        config = read_json(config_path) if os.path.isfile(config_path) else {}
        if "pretrained_cfg" in config and has_weights(folder) and student is None:
            return  # already in timm's format
        if student is None:
            student = load_student(folder)
        if spec is None:
            from .processor import model_input_spec

            spec = model_input_spec(student)
        save_timm_folder(student, folder, spec)
        return
    if student is not None and (not has_weights(folder) or not os.path.isfile(config_path)):
        student.save_pretrained(folder, safe_serialization=True)
    if not os.path.isfile(config_path) or not has_weights(folder):
        raise PublishError(
            f"{folder} has no {CONFIG_NAME} and {SAFE_WEIGHTS_NAME}: save the student there first "
            "(trainer.save_model() or model.save_pretrained())."
        )
    config = read_json(config_path)
    if config.get("model_type") == CIFAR_MODEL_TYPE:
        code = [v.split(".")[0] + ".py" for v in (config.get("auto_map") or {}).values()]
        if not code or any(not os.path.isfile(os.path.join(folder, c)) for c in code):
            if student is None:
                student = load_student(folder)
            # save_pretrained writes auto_map and copies modeling_cifar.py with its relative imports.
            student.save_pretrained(folder, safe_serialization=True)


def _ensure_processor(
    folder: str, student: Any, spec: InputSpec | None, processor: Any, library: str
) -> None:
    if library == "timm":
        return  # timm keeps the preprocessing in config.json's pretrained_cfg
    if os.path.isfile(os.path.join(folder, PROCESSOR_NAME)):
        return
    if processor is not None and hasattr(processor, "save_pretrained"):
        processor.save_pretrained(folder)
        if os.path.isfile(os.path.join(folder, PROCESSOR_NAME)):
            return
    if student is None and spec is None:
        student = load_student(folder)
    student_image_processor(student, spec).save_pretrained(folder)


def write_card(
    folder: str | os.PathLike,
    summary: DistillationSummary,
    template_path: str | os.PathLike | None = None,
    plot_file: str | None = None,
    dataset_name: str | None = None,
    overwrite: bool = False,
) -> str:
    """Render the card of ``summary`` into ``folder/README.md`` without losing what an existing card holds.

    * no card yet, or ``overwrite``: the rendered card is written;
    * a card written by hf_distill (it carries :data:`~hf_distill.hub.card.CARD_MARKER`): it is regenerated; its
      ``model-index`` results that the new card lacks (e.g. added by ``recipes/evaluate.py --update-card``) and its
      metadata keys that the new card lacks are carried over;
    * any other card: its body and metadata are kept; hf_distill's metadata keys that it lacks are added and the
      results are merged into its ``model-index``.

    Args:
        folder: the model folder.
        summary: the run.
        template_path: Jinja template (default: ``model_cards/student.md.jinja``).
        plot_file: training-curve image file name, if any.
        dataset_name: display name of the dataset in ``model-index``.
        overwrite: replace an existing card entirely.

    Returns:
        The path of the card.

    Raises:
        hf_distill.hub.card_file.CardError: the existing card has malformed metadata (it is left untouched).
    """
    path = os.path.join(folder, CARD_NAME)
    card = build_card(summary, template_path=template_path, plot_file=plot_file, dataset_name=dataset_name)
    if os.path.isfile(path) and not overwrite:
        text = Path(path).read_text(encoding="utf-8")
        card = merge_cards(text, card, CARD_MARKER, summary.model_name, where=path)
    return save_card(card, path)


def complete_folder(
    source: Any,
    folder: str | os.PathLike | None = None,
    student: Any = None,
    spec: InputSpec | None = None,
    processor: Any = None,
    template_path: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    overwrite_card: bool = False,
    plot: bool = True,
    **overrides: Any,
) -> DistillationSummary:
    """Make ``folder`` a complete Hub repository for the student (weights, config, processor, card, plot).

    Args:
        source: a :class:`~hf_distill.DistillationTrainer` (then the student, its input spec, its processor and the
            output folder come from it) or a :class:`~hf_distill.hub.summary.DistillationSummary`.
        folder: the model folder (default: the trainer's ``output_dir``).
        student: the student model (default: the trainer's, or loaded from ``folder`` when needed).
        spec: the student's input spec (default: the trainer's ``student_input`` or the summary's).
        processor: an image processor to save (default: one built from ``spec``).
        template_path: card template (default: ``model_cards/student.md.jinja``).
        dataset_name: display name of the dataset in ``model-index``.
        overwrite_card: replace an existing ``README.md`` instead of merging into it.
        plot: draw ``training_curves.png`` from the log history.
        **overrides: :class:`~hf_distill.hub.summary.DistillationSummary` fields (``dataset``, ``base_model``,
            ``baseline_accuracy``, ``license``, ``repo_id``, ``tags``, ...).

    Returns:
        The summary the card was rendered from (also saved as ``distillation_summary.json``).

    Raises:
        PublishError: no weights/config in the folder and no student to write them.
        hf_distill.hub.card_file.CardError: an existing card with malformed metadata (left untouched).
    """
    if not isinstance(source, DistillationSummary):
        t_student, t_spec, t_processor = _trainer_parts(source)
        student = student if student is not None else t_student
        spec = spec if spec is not None else t_spec
        processor = processor if processor is not None else t_processor
        folder = folder if folder is not None else source.args.output_dir
    if folder is None:
        raise PublishError("complete_folder needs the model folder.")
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    summary = as_summary(source, **overrides)
    if student is not None and is_timm_student(student):
        summary.library_name = "timm"
    spec = spec if spec is not None else _spec_from_summary(summary)
    _ensure_model_files(folder, student, spec, summary.library_name)
    _ensure_processor(folder, student, spec, processor, summary.library_name)
    plot_file = None
    if plot and summary.log_history:
        if plot_training_curves(
            summary.log_history, os.path.join(folder, PLOT_NAME), title=summary.model_name
        ):
            plot_file = PLOT_NAME
    elif os.path.isfile(os.path.join(folder, PLOT_NAME)):
        plot_file = PLOT_NAME
    summary.remote_code = own_remote_code(folder)
    summary.foreign_code = foreign_code(folder)
    summary.save(folder)
    write_card(folder, summary, template_path, plot_file, dataset_name, overwrite=overwrite_card)
    results = eval_results(summary, dataset_name)
    if results:
        write_eval_result_files(folder, results, _training_eval_note(summary))
    return summary


def _training_eval_note(summary: DistillationSummary) -> str:
    note = "the training run's final evaluation" + (
        f" ({summary.num_eval_samples} images)" if summary.num_eval_samples else ""
    )
    if summary.dataset_asserted:
        note += f"; measured on the local copy {summary.local_dataset}, stated by the publisher to be this dataset"
    return note


def save_hook(trainer: Any, output_dir: str | None = None, **overrides: Any) -> DistillationSummary | None:
    """What ``DistillationTrainer.save_model`` calls after writing the student: complete the folder (world
    process zero only).

    Args:
        trainer: the trainer.
        output_dir: the folder (default: ``trainer.args.output_dir``).
        **overrides: summary fields (see :func:`complete_folder`).

    Returns:
        The summary, or None on other processes.
    """
    if not trainer.args.should_save:
        return None
    return complete_folder(trainer, output_dir or trainer.args.output_dir, **overrides)


def trainer_model_card(
    trainer: Any,
    language: str | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    **overrides: Any,
) -> DistillationSummary | None:
    """``Trainer.create_model_card``'s arguments mapped onto :func:`complete_folder` (process zero only).

    Args:
        trainer: the trainer.
        language: unused (images).
        license: the card's license.
        tags: extra tags.
        model_name: the model's name.
        finetuned_from: ``base_model`` (default: the student's initialization checkpoint).
        tasks: unused (always image-classification).
        dataset_tags: dataset id(s); the first one is used.
        dataset: dataset id(s), used when ``dataset_tags`` is not given.
        dataset_args: the dataset config name.
        **overrides: further summary fields.

    Returns:
        The summary, or None on other processes.
    """
    if not trainer.is_world_process_zero():
        return None
    ds = dataset_tags or dataset
    if isinstance(ds, (list, tuple)):
        ds = ds[0] if ds else None
    if isinstance(tags, str):
        tags = [tags]
    if isinstance(dataset_args, (list, tuple)):
        dataset_args = dataset_args[0] if dataset_args else None
    kw = dict(
        license=license,
        tags=tags,
        model_name=model_name,
        base_model=finetuned_from,
        dataset=ds,
        dataset_config=dataset_args,
        repo_id=getattr(trainer, "hub_model_id", None) or trainer.args.hub_model_id,
    )
    kw.update(overrides)
    return complete_folder(trainer, trainer.args.output_dir, **{k: v for k, v in kw.items() if v is not None})


__all__ = [
    "IGNORE_PATTERNS",
    "HubError",
    "PublishError",
    "PushPlan",
    "check_folder",
    "complete_folder",
    "load_student",
    "plan_push",
    "push_folder",
    "save_hook",
    "trainer_model_card",
    "write_card",
]

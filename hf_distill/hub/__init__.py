"""Hub integration: model cards, complete repository folders, push, evaluation with ``evaluate``.

    from hf_distill.hub import complete_folder, push_folder, evaluate_model

    complete_folder(trainer)                             # README.md, processor, plot, timm/remote-code format
    push_folder(trainer.args.output_dir, "me/resnet8-kd")
    evaluate_model("me/resnet8-kd", "uoft-cs/cifar10", split="test", update_card=True)

One concern per module: ``summary`` (the run summary, stored as ``distillation_summary.json``), ``collect`` (it,
from a trainer or a model folder), ``metadata`` (``model-index`` and the ``distillation:`` block), ``card``
(rendering), ``plot`` (training curves), ``card_file`` (reading and merging existing cards), ``eval_files`` (the
Hub's ``.eval_results/*.yaml``), ``publish`` (complete folder, push, dry run), ``upload`` (what goes up, one
commit), ``privacy`` (tokens, host names and local paths kept home), ``code_check`` (only the library's own model
code), ``reporting`` (``--report_to`` checked early), ``loading`` and ``evaluation`` (a Hub model on a dataset),
``shipped`` (the template and metric scripts in both a source checkout and an installed wheel).

Heavy dependencies (``evaluate``, ``matplotlib``, ``timm``) are imported only by the functions that need them.
"""

from .card import CARD_MARKER, build_card, usage_snippet
from .card_file import CardError, merge_eval_results, read_card, update_card_file
from .collect import collect_summary, model_reference, summary_from_folder
from .evaluation import (
    EvaluationResult,
    LabelMismatchError,
    ModelNotFoundError,
    check_label_names,
    classification_pipeline,
    evaluate_classifier,
    evaluate_model,
    image_classification_evaluator,
    load_classifier,
    load_metric,
    resolve_model,
    update_model_card,
)
from .metadata import card_data, eval_results
from .plot import PLOT_NAME, plot_training_curves
from .processor import model_input_spec, student_image_processor
from .publish import (
    IGNORE_PATTERNS,
    HubError,
    PublishError,
    PushPlan,
    check_folder,
    complete_folder,
    plan_push,
    push_folder,
    save_hook,
    trainer_model_card,
    write_card,
)
from .recipe_args import exit_on_bad_input, parse_recipe_args
from .summary import SUMMARY_NAME, DistillationSummary, MethodSummary
from .timm_export import save_timm_folder

__all__ = [
    "CARD_MARKER",
    "IGNORE_PATTERNS",
    "PLOT_NAME",
    "SUMMARY_NAME",
    "CardError",
    "DistillationSummary",
    "EvaluationResult",
    "HubError",
    "LabelMismatchError",
    "MethodSummary",
    "ModelNotFoundError",
    "PublishError",
    "PushPlan",
    "build_card",
    "card_data",
    "check_folder",
    "check_label_names",
    "classification_pipeline",
    "collect_summary",
    "complete_folder",
    "eval_results",
    "evaluate_classifier",
    "evaluate_model",
    "exit_on_bad_input",
    "image_classification_evaluator",
    "load_classifier",
    "load_metric",
    "merge_eval_results",
    "model_input_spec",
    "model_reference",
    "parse_recipe_args",
    "plan_push",
    "plot_training_curves",
    "push_folder",
    "read_card",
    "resolve_model",
    "save_hook",
    "save_timm_folder",
    "student_image_processor",
    "summary_from_folder",
    "trainer_model_card",
    "update_card_file",
    "update_model_card",
    "usage_snippet",
    "write_card",
]

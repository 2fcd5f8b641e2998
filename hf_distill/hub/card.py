"""The student's model card rendered: the template ``model_cards/student.md.jinja`` filled from a summary.

:func:`build_card` takes a trainer or a :class:`~hf_distill.hub.summary.DistillationSummary` (see
:mod:`hf_distill.hub.collect`), the metadata of :mod:`hf_distill.hub.metadata`, and precomputed tables and snippets
(:func:`template_variables`), and returns a :class:`huggingface_hub.ModelCard`. Updating an existing card is
:mod:`hf_distill.hub.card_file`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from .collect import TRAINING_ARGS_JSON, as_summary
from .metadata import card_data
from .shipped import template_path as default_template_path
from .summary import DistillationSummary

#: Put in every card body written by hf_distill, so a regenerated card may replace it (and only it).
CARD_MARKER = "<!-- This model card was written by hf_distill. -->"

__all__ = [
    "CARD_MARKER",
    "TRAINING_ARGS_JSON",  # the trainer writes this file; the summary of a folder reads it
    "build_card",
    "template_variables",
    "timm_snippet",
    "usage_snippet",
]


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


def dataset_prose(summary: DistillationSummary) -> str:
    """How the card's text names the training data: a Hub dataset linked by its id, a local one by its name, rows
    and fingerprint (a local path is never shown), and a local copy attributed to a Hub id as the publisher's word.
    """
    local = f"`{summary.local_dataset}`" if summary.local_dataset else None
    if local and (summary.num_train_samples or summary.dataset_fingerprint):
        facts = [f"{summary.num_train_samples} training images"] if summary.num_train_samples else []
        facts += [f"fingerprint `{summary.dataset_fingerprint}`"] if summary.dataset_fingerprint else []
        local += f" ({', '.join(facts)})"
    if summary.dataset:
        link = f"[{summary.dataset}](https://huggingface.co/datasets/{summary.dataset})"
        if summary.dataset_asserted and local:
            return f"a local copy {local} that the publisher states holds the same data as {link}"
        return link
    return f"the local dataset {local}" if local else "an unnamed dataset"


def teacher_prose(summary: DistillationSummary) -> str:
    """The teacher as the card's text names it: linked by its Hub id, else (a local teacher) by its name."""
    if summary.teacher_id:
        return f"[{summary.teacher_id}](https://huggingface.co/{summary.teacher_id})"
    return f"`{summary.teacher}` (a local model)" if summary.teacher else "(unknown)"


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
                "model": f"{teacher_prose(summary) if summary.teacher else 'teacher'} (teacher)",
                "top1": _pct(summary.teacher_accuracy),
                "top5": _pct(summary.teacher_top5_accuracy),
                "note": summary.teacher_architecture or "",
            }
        )
    for i, t in enumerate(summary.teachers):
        rows.append(
            {
                "model": f"{t.get('name') or 'teacher'} (teacher {i + 1} of {len(summary.teachers)}, weight "
                f"{_fmt(t.get('weight'))})",
                "top1": _pct(t.get("accuracy")),
                "top5": _pct(t.get("top5_accuracy")),
                "note": t.get("architecture") or "",
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
            "pairing": [
                f"teacher `{p['teacher']}` {tuple(p['teacher_shape'])} -> student `{p['student']}` "
                f"{tuple(p['student_shape'])}, connector: {p['connector']}{' (auto)' if p.get('auto') else ''}"
                for p in m.pairing
            ],
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
        "mutual": ", ".join(
            f"{p['name']} ({p['architecture']}, top-1 {_pct(p.get('accuracy'))})" for p in summary.mutual
        ),
        "baseline_accuracy": _pct(summary.baseline_accuracy),
        "gain": _signed_pct(summary.gain),
        "runtime": _duration(summary.train_runtime),
        "num_parameters": f"{summary.num_parameters / 1e6:.2f} M" if summary.num_parameters else "unknown",
        "teacher_num_parameters": f"{summary.teacher_num_parameters / 1e6:.2f} M"
        if summary.teacher_num_parameters
        else None,
        "dataset": dataset_prose(summary),
        "teacher": teacher_prose(summary),
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
    path = Path(template_path) if template_path is not None else default_template_path()
    data = card_data(summary, dataset_name)
    card = ModelCard.from_template(data, template_path=str(path), **template_variables(summary, plot_file))
    # Re-parse: Jinja may leave trailing blank lines; the card text is what gets written and pushed.
    return ModelCard(str(card).rstrip() + "\n")

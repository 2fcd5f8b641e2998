#!/usr/bin/env python
"""Publish a trained student: complete its folder into a Hub repository and upload it.

    python recipes/push.py outputs/default --hub_model_id me/resnet20-kd-cifar10
    python recipes/push.py outputs/default --hub_model_id me/resnet20-kd --baseline_results outputs/baseline
    python recipes/push.py outputs/default --no_push          # only complete the folder (card, processor, plot)

The folder is what ``recipes/distill.py`` (``trainer.save_model()``) wrote. The card is rendered from
``distillation_summary.json`` when the trainer wrote one, else rebuilt from the run's files (``config.json``,
``trainer_state.json``, ``distill_results.json``, ``training_args.json``; a pickle is never loaded); the options below fill in what those do
not record (teacher id, dataset id, baseline accuracy, ...). The Hub endpoint follows ``HF_ENDPOINT``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass
class PushArguments:
    """Which folder, where to, and what the card should say beyond what the run recorded."""

    output_dir: str = field(
        metadata={"help": "The training output folder (also accepted as first positional)."}
    )
    hub_model_id: str | None = field(default=None, metadata={"help": "Target repository, namespace/name."})
    no_push: bool = field(default=False, metadata={"help": "Only complete the folder; upload nothing."})
    private: bool | None = field(default=None, metadata={"help": "Create the repository as private."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN / saved login)."})
    revision: str | None = field(default=None, metadata={"help": "Branch to push to."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})
    teacher: str | None = field(default=None, metadata={"help": "Teacher id for the card (if not recorded)."})
    dataset: str | None = field(
        default=None, metadata={"help": "Dataset id for the card (e.g. uoft-cs/cifar10)."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Display name of the dataset."})
    base_model: str | None = field(
        default=None, metadata={"help": "The student's initialization checkpoint (never the teacher)."}
    )
    license: str | None = field(
        default=None, metadata={"help": "License of the weights (default apache-2.0)."}
    )
    tags: str | None = field(default=None, metadata={"help": "Extra comma-separated tags."})
    baseline_accuracy: float | None = field(
        default=None, metadata={"help": "Top-1 accuracy of the same student trained without distillation."}
    )
    baseline_top5_accuracy: float | None = field(default=None, metadata={"help": "Its top-5 accuracy."})
    baseline_results: str | None = field(
        default=None,
        metadata={
            "help": "Baseline run (--method none): its output folder, distill_results.json or summary."
        },
    )
    overwrite_card: bool = field(default=False, metadata={"help": "Replace an existing README.md entirely."})


def baseline_from(path: str) -> tuple[float | None, float | None]:
    """Top-1/top-5 accuracy of a baseline run from its folder, ``distill_results.json`` or summary JSON.

    Args:
        path: a folder or a JSON file.

    Returns:
        (top-1, top-5), None where not recorded.

    Raises:
        ValueError: nothing readable there.
    """
    candidates = (
        [os.path.join(path, "distillation_summary.json"), os.path.join(path, "distill_results.json")]
        if os.path.isdir(path)
        else [path]
    )
    for c in candidates:
        if os.path.isfile(c):
            with open(c, encoding="utf-8") as f:
                data = json.load(f)
            top1 = data.get("accuracy", data.get("eval_accuracy"))
            top5 = data.get("top5_accuracy", data.get("eval_top5_accuracy"))
            if top1 is not None:
                return float(top1), None if top5 is None else float(top5)
    raise ValueError(
        f"--baseline_results {path!r} has no accuracy (expected distill_results.json or a summary)."
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Complete the folder, push it; return ``{"folder", "repo_id", "commit_url", "summary"}``."""
    from hf_distill.hub.cli import exit_on_bad_input, parse_recipe_args

    args = parse_recipe_args(PushArguments, argv, positional="output_dir")
    from hf_distill.hub import complete_folder, push_folder, summary_from_folder

    with exit_on_bad_input(ValueError, FileNotFoundError):
        if not os.path.isdir(args.output_dir):
            raise ValueError(f"{args.output_dir!r} is not a folder: pass the output_dir of a training run.")
        if not args.no_push and not args.hub_model_id:
            raise ValueError("Pass --hub_model_id namespace/name (or --no_push to only complete the folder).")
        b1, b5 = args.baseline_accuracy, args.baseline_top5_accuracy
        if args.baseline_results:
            r1, r5 = baseline_from(args.baseline_results)
            b1 = b1 if b1 is not None else r1
            b5 = b5 if b5 is not None else r5
        overrides = {
            "teacher": args.teacher,
            "dataset": args.dataset,
            "base_model": args.base_model,
            "license": args.license,
            "baseline_accuracy": b1,
            "baseline_top5_accuracy": b5,
            "repo_id": args.hub_model_id,
            "model_name": args.hub_model_id.split("/")[-1] if args.hub_model_id else None,
            "tags": [t.strip() for t in args.tags.split(",") if t.strip()] if args.tags else None,
        }
        summary = summary_from_folder(
            args.output_dir, **{k: v for k, v in overrides.items() if v is not None}
        )
        complete_folder(
            summary, args.output_dir, dataset_name=args.dataset_name, overwrite_card=args.overwrite_card
        )
        out: dict[str, object] = {
            "folder": args.output_dir,
            "repo_id": None,
            "commit_url": None,
            "summary": summary,
        }
        if not args.no_push:
            info = push_folder(
                args.output_dir,
                args.hub_model_id,
                token=args.token,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
                create_pr=args.create_pr,
            )
            out.update(repo_id=args.hub_model_id, commit_url=info.commit_url)
            print(f"pushed {args.output_dir} -> {args.hub_model_id} ({info.commit_url})")
        else:
            print(f"completed {args.output_dir} (README.md, processor, plot); nothing pushed")
    return out


if __name__ == "__main__":
    main()

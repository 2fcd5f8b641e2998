#!/usr/bin/env python
"""Evaluate a student (Hub id or local folder) on a dataset split and optionally record it in its model card.

    python recipes/evaluate.py --model me/resnet8-kd --dataset uoft-cs/cifar10 --split test
    python recipes/evaluate.py --model outputs/default --dataset assets/cifar10-subset --max_samples 200 \
        --update-card --dataset_id uoft-cs/cifar10   # a local copy of a Hub dataset: say which

The model is loaded with ``AutoModelForImageClassification.from_pretrained`` (CIFAR-zoo models with hf_distill's
classes; ``--trust_remote_code`` for other custom code), the split is transformed with the model's own
normalization, and top-1/top-5 accuracy come from the ``evaluate`` metric scripts in ``metrics/``. With
``--update-card`` the results are merged into the card's ``model-index`` and written as the Hub's Eval Results file
(``.eval_results/<dataset>--<split>.yaml``): in a local folder, or on the Hub in one commit (the Hub endpoint follows
``HF_ENDPOINT``). Results are filed under Hub dataset ids only: a local ``--dataset`` needs ``--dataset_id``.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

# Run as a script, this file's folder comes first on sys.path, and this file would shadow the `evaluate` library
# that hf_distill uses for its metrics: take the folder off the path before anything imports `evaluate`.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


@dataclass
class EvaluateArguments:
    """What to evaluate, on what, and where to record it."""

    model: str = field(metadata={"help": "Model folder or Hub model id."})
    dataset: str = field(metadata={"help": "Dataset folder, parquet file or Hub dataset id."})
    split: str = field(default="test", metadata={"help": "Split to evaluate."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows."})
    batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    update_card: bool = field(
        default=False,
        metadata={
            "help": "Merge the results into the model card's model-index and write the Hub's Eval Results file "
            "(.eval_results/*.yaml) (--update-card)."
        },
    )
    dataset_id: str | None = field(
        default=None,
        metadata={
            "help": "With a local --dataset: the Hub dataset id it holds the same data as (your statement; the card "
            "says so). Results are filed under Hub dataset ids only."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code other than hf_distill's CIFAR zoo."}
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision of the model."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN / saved login)."})
    device: str | None = field(default=None, metadata={"help": "Device, e.g. cuda:0 (default: CPU)."})
    output_json: str | None = field(
        default=None, metadata={"help": "Also write the results to this JSON file."}
    )
    log_level: str = field(
        default="warning",
        metadata={
            "help": "Log level: debug, info, warning, error or critical; error also hides the progress bar.",
            "choices": ["debug", "info", "warning", "error", "critical"],
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar over the batches."})


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, evaluate, print a table; return ``{"accuracy": ..., "top5_accuracy": ...}``."""
    from hf_distill.hub.recipe_args import exit_on_bad_input, parse_recipe_args

    args = parse_recipe_args(EvaluateArguments, argv)
    from hf_distill.console import setup_logging
    from hf_distill.hub.evaluation import evaluate_model, update_model_card

    setup_logging(args.log_level)  # as recipes/distill.py: --log_level error leaves errors only, and no bar
    from hf_distill.hub.privacy import looks_local

    with exit_on_bad_input(ValueError):
        if args.update_card and looks_local(args.dataset) and not args.dataset_id:
            raise ValueError(
                f"--update-card files results under Hub dataset ids, and {args.dataset} is a local dataset: add "
                "--dataset_id <hub id> if it holds the same data as that Hub dataset (the card will say so), or "
                "drop --update-card."
            )
        if args.dataset_id and looks_local(args.dataset_id):
            raise ValueError(f"--dataset_id {args.dataset_id} is a local path: it takes a Hub dataset id.")
        result = evaluate_model(
            args.model,
            args.dataset,
            split=args.split,
            max_samples=args.max_samples,
            batch_size=args.batch_size,
            image_column=args.image_column,
            label_column=args.label_column,
            dataset_id=args.dataset_id,
            trust_remote_code=True if args.trust_remote_code else None,
            revision=args.revision,
            token=args.token,
            device=args.device,
            progress=False if args.disable_tqdm else None,  # None: shown unless --log_level error/critical
        )
        print(result.table())
        if args.update_card:
            where = update_model_card(args.model, result, token=args.token)
            print(f"model card updated: {where}")
    metrics = result.metrics()
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(
                {**metrics, "num_samples": result.num_samples, "split": result.split_label}, f, indent=2
            )
    return metrics


if __name__ == "__main__":
    main()

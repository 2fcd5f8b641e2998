#!/usr/bin/env python
"""Representation transfer: a linear probe on a model's frozen penultimate features, or full fine-tuning.

    python recipes/transfer.py --model outputs/default --dataset assets/cifar10-subset --classes 5,6,7,8,9
    python recipes/transfer.py --model timm/resnet18.a1_in1k --dataset uoft-cs/cifar100 --label_column fine_label
    python recipes/transfer.py --model outputs/default --dataset data.parquet \
        --train_split 'train[:80%]' --test_split 'train[80%:]' --finetune --update_card

``--model``: a model folder, a CIFAR-zoo name, a timm name or a Hub id (as ``recipes/distill.py``'s ``--teacher``).
``--dataset``: a folder, a parquet file or a Hub id, with a train and a test split. The images are resized to the
model's input size and normalized as it was trained. The linear probe (default) fits a logistic regression on the
standardized features of the training split (L-BFGS); ``--finetune`` trains every weight with a new head instead.
``--update_card`` adds the result to a local model folder's card as its own ``model-index`` entry.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

# This folder holds recipes/evaluate.py, which would shadow the `evaluate` library: take it off the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


@dataclass
class TransferArguments:
    """Which model, which new dataset, which protocol."""

    model: str = field(metadata={"help": "Model folder, CIFAR-zoo name, timm name or Hub id."})
    dataset: str = field(metadata={"help": "Dataset folder, parquet file or Hub id of the new task."})
    train_split: str = field(default="train", metadata={"help": "Split the classifier is trained on."})
    test_split: str = field(default="test", metadata={"help": "Held-out split it is tested on."})
    classes: str | None = field(
        default=None,
        metadata={"help": "Use only these class ids, renumbered in this order (e.g. 5,6,7,8,9)."},
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: detected)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (default: detected)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Only the first N training rows."})
    max_test_samples: int | None = field(default=None, metadata={"help": "Only the first N test rows."})
    finetune: bool = field(
        default=False, metadata={"help": "Fine-tune every weight instead of a linear probe."}
    )
    probe_c: float = field(
        default=1.0,
        metadata={"help": "Linear probe: inverse L2 strength (scikit-learn's C; 1 = its default)."},
    )
    probe_max_iter: int = field(default=500, metadata={"help": "Linear probe: L-BFGS iterations."})
    finetune_head: str = field(
        default="probe",
        metadata={"help": "Fine-tuning: start the new head from the linear probe, or 'random'."},
    )
    epochs: float = field(default=3.0, metadata={"help": "Fine-tuning: epochs."})
    learning_rate: float = field(default=0.01, metadata={"help": "Fine-tuning: SGD learning rate (cosine)."})
    output_dir: str = field(
        default="outputs/transfer-finetune",
        metadata={"help": "Fine-tuning: where the fine-tuned model goes."},
    )
    batch_size: int = field(default=64, metadata={"help": "Fine-tuning batch size (feature extraction: 4x)."})
    seed: int = field(default=0, metadata={"help": "Seed of the probe and of fine-tuning."})
    device: str | None = field(
        default=None, metadata={"help": "Device (default: cuda if available, else cpu)."}
    )
    update_card: bool = field(
        default=False, metadata={"help": "Add the result to the card (README.md) of a local model folder."}
    )
    output_json: str | None = field(
        default=None, metadata={"help": "Also write the result to this JSON file."}
    )


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse arguments, run the transfer, print a table; return ``{"accuracy": ..., ["top5_accuracy": ...]}``."""
    from hf_distill.hub.recipe_args import exit_on_bad_input, parse_recipe_args

    args = parse_recipe_args(TransferArguments, argv)
    from hf_distill import transfer

    with exit_on_bad_input(ValueError):
        if args.update_card:
            transfer.card_path(
                args.model
            )  # a model that is not a local folder: the error comes before any work
        data = transfer.load_transfer_data(
            args.dataset,
            args.train_split,
            args.test_split,
            transfer.parse_classes(args.classes),
            args.image_column,
            args.label_column,
        )
        limits = {"max_train_samples": args.max_train_samples, "max_test_samples": args.max_test_samples}
        if args.finetune:
            config = transfer.FinetuneConfig(
                args.output_dir,
                args.epochs,
                args.learning_rate,
                batch_size=args.batch_size,
                seed=args.seed,
                head_init=args.finetune_head,
            )
            result = transfer.finetune(args.model, data, config, 4 * args.batch_size, args.device, **limits)
        else:
            model, spec = transfer.load_frozen_model(args.model)
            config = transfer.ProbeConfig(args.probe_c, args.probe_max_iter, args.seed)
            result = transfer.linear_probe(
                model, spec, data, config, args.model, 4 * args.batch_size, args.device, **limits
            )
        print(result.table())
        if args.update_card:
            print(f"model card updated: {transfer.write_to_card(args.model, result)}")
    metrics = result.evaluation.metrics()
    if args.output_json:
        with open(args.output_json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    **metrics,
                    "protocol": result.protocol,
                    "dataset": result.dataset_name,
                    "train": result.num_train,
                },
                f,
                indent=2,
            )
    return metrics


if __name__ == "__main__":
    main()

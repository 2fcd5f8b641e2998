#!/usr/bin/env python
"""bf16 autocast vs float32, every method side by side: loss values on one real batch and their relative gap.

    python benchmarks/precision.py                  # resnet56 (pretrained) -> resnet20, batch 64, CPU bf16
    python benchmarks/precision.py --dtype float16  # on a GPU: fp16 autocast (the trainer adds a GradScaler)

The networks run under autocast; the loss math runs in float32 (the trainer's container disables autocast for it),
so the gap measures what half-precision activations do to each loss. Nothing is asserted (the tests do that).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hf_distill.data.datasets import collate, load_image_dataset, prepare_split
from hf_distill.methods import METHODS, DataInfo, DistillationObjective, StepInfo
from hf_distill.models.loading import load_model
from hf_distill.models.normalization import TeacherInput, input_spec
from hf_distill.training.mutual import prepare_peers
from hf_distill.training.trainer import build_distillation_model

REPO = Path(__file__).resolve().parents[1]
# methods whose main-stage term is 0 by default (RepDistiller) are measured with the term switched on
KWARGS = {"crd": {"nce_k": 1024}, "ab": {"main_stage_loss": True}, "fsp": {"main_stage_loss": True}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="cifar_resnet20")
    ap.add_argument("--teacher", default=str(REPO / "assets" / "teachers" / "cifar10-resnet56-jpeg"))
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    teacher = load_model(args.teacher, role="teacher").eval().to(device)
    torch.manual_seed(0)  # the same random student on every run
    student = load_model(args.student, id2label=teacher.config.id2label).to(device)
    s_in, t_in = input_spec(student), input_spec(teacher)
    ds = load_image_dataset(str(REPO / "assets" / "cifar10-subset"), "train")
    split = prepare_split(ds, s_in.mean, s_in.std, s_in.image_size, True, max_samples=4 * args.batch_size)
    batch = {k: v.to(device) for k, v in collate([split.dataset[i] for i in range(args.batch_size)]).items()}
    x_t = TeacherInput(s_in, t_in).to(device)(batch["pixel_values"])
    print(
        f"{args.teacher.split('/')[-1]} -> {args.student}, batch {args.batch_size}, {device}, {args.dtype} autocast\n"
    )
    print("| method | float32 loss | autocast loss | relative gap |")
    print("|---|---|---|---|")
    for name in sorted(METHODS):
        torch.manual_seed(0)
        obj = DistillationObjective.from_names(name, method_kwargs={name: KWARGS.get(name, {})})
        for peer in prepare_peers(obj, student, args.student, teacher.config.id2label, 0):  # dml's peers
            peer.to(device)
        built = build_distillation_model(
            student, teacher, obj, split.dataset, data_info=DataInfo(len(split.dataset), 10, split.labels)
        )
        container = built.container.to(device).eval()
        step = StepInfo(labels=batch["labels"], index=batch["index"], epoch=30.0)
        losses = []
        for enabled in (False, True):
            with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                tf = built.teacher_tap(teacher, x_t, built.teacher_request)
                losses.append(
                    container(batch["pixel_values"], batch["labels"], batch["index"], tf, step)["loss"].item()
                )
        full, half = losses
        print(f"| {name} | {full:.6g} | {half:.6g} | {abs(half - full) / max(abs(full), 1e-12):.2e} |")


if __name__ == "__main__":
    main()

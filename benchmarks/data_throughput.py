#!/usr/bin/env python
"""Does the input pipeline keep up? Decode + augment images/s of one dataloader worker at 224 px against the images/s
of a resnet34 -> resnet18 KD training step, on the same machine, in one run.

    python benchmarks/data_throughput.py                      # 128 JPEG rows, 3 timed steps of 32 images
    python benchmarks/data_throughput.py --rows 512 --steps 5 --out benchmarks/results/data_throughput.json

Data: parquet shards of JPEG images written by the script: the CIFAR-10 images of ../shared/data/cifar10 when
present (else assets/cifar10-1k) upsampled to 224 px (bicubic) and JPEG-encoded at quality 90, as an ImageNet-like
row is read (one JPEG per row). Each worker is one process doing what a dataloader worker does for a row: read the
row from the parquet shards, decode the JPEG, apply the student's training transform (the timm pipeline of resnet18,
``hf_distill.data.transforms.model_pipeline``: RandomResizedCrop 224, flip, colour jitter, normalize), seeded per row.
It is measured in this process on one thread, one worker's worth; ``--dataloader_num_workers N`` gives about N
times as much while N cores are free.

Decoders compared on the same rows (bytes in memory): PIL (the pipeline's) and ``torchvision.io.decode_jpeg``, alone
and each followed by the same steps (RandomResizedCrop 224 bicubic, flip, colour jitter 0.4, normalize: timm's on
PIL images, ``torchvision.transforms.v2``'s on uint8 tensors). pillow-simd and DALI are not measured (not
installable here).

The step is what training consumes: teacher forward without grad, student forward and backward with cross-entropy
and KD (T 4), an SGD step, on a batch already in memory; warm-up step excluded, median over the timed steps.
Prints a table and writes JSON (``--out``), with the number of workers that delivers 1.5x the step's images/s.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import PIL.Image
import torch
import torch.nn.functional as F

from hf_distill.data.datasets import _mix
from hf_distill.data.transforms import model_pipeline
from hf_distill.methods.kd import kd_loss
from hf_distill.models.loading import load_model
from hf_distill.run.threads import apply_thread_policy

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "train.parquet"
LOCAL_CIFAR = REPO / "assets" / "cifar10-1k" / "train.parquet"
#: the loader should deliver this many times what the step consumes (issue 23's target)
HEADROOM = 1.5
LOADER_KEYS = (
    "read_decode_augment",
    "decode_pil",
    "decode_torchvision",
    "decode_augment_pil_timm",
    "decode_augment_torchvision_v2",
)


def write_shards(source: Path, rows: int, size: int, shards: int, folder: Path) -> list[str]:
    """Upsample ``rows`` images of ``source`` to ``size`` px, JPEG-encode them and write ``shards`` parquet files."""
    src = datasets.load_dataset("parquet", data_files=str(source), split="train").select(range(rows))
    image_col = next(c for c in src.column_names if isinstance(src.features[c], datasets.Image))
    label_col = next(c for c in src.column_names if c != image_col)
    features = datasets.Features({"image": datasets.Image(), "label": src.features[label_col]})
    files = []
    per = math.ceil(rows / shards)
    for k in range(shards):
        part = src.select(range(k * per, min(rows, (k + 1) * per)))
        encoded = []
        for im in part[image_col]:
            buf = io.BytesIO()
            im.convert("RGB").resize((size, size), PIL.Image.BICUBIC).save(buf, format="JPEG", quality=90)
            encoded.append({"bytes": buf.getvalue(), "path": None})
        shard = datasets.Dataset.from_dict({"image": encoded, "label": part[label_col]}, features=features)
        files.append(str(folder / f"train-{k:05d}-of-{shards:05d}.parquet"))
        shard.to_parquet(files[-1])
    return files


def rate(fn, n: int) -> float:
    """Images/s of ``fn(i)`` over rows 0..n-1."""
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def loader_rates(files: list[str], size: int) -> dict[str, float]:
    """One worker's images/s: the pipeline as the dataset runs it (parquet row read, PIL decode, timm transform);
    decoding alone from bytes in memory with PIL and with ``decode_jpeg``; each with augmentation."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import v2

    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    jpegs = [cell["bytes"] for cell in ds.cast_column("image", datasets.Image(decode=False))["image"]]
    n = len(ds)
    pipe = model_pipeline(load_model("resnet18", num_labels=10), kind="timm", image_size=size)
    tensor_aug = v2.Compose(
        [
            v2.RandomResizedCrop(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(pipe.mean), list(pipe.std)),
        ]
    )

    def read_decode_augment(i):  # what a worker does for a row of the training set
        return pipe.train(ds[i]["image"].convert("RGB"), _mix(0, 0, i))

    def pil_decode(i):
        return PIL.Image.open(io.BytesIO(jpegs[i])).convert("RGB")

    def tv_decode(i):
        return decode_jpeg(torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8), mode=ImageReadMode.RGB)

    def pil_augment(i):
        return pipe.train(pil_decode(i), _mix(0, 0, i))

    def tv_augment(i):
        torch.manual_seed(_mix(0, 0, i))
        return tensor_aug(tv_decode(i))

    rate(read_decode_augment, min(n, 8))  # warm-up (imports, first decode)
    return {
        "read_decode_augment": rate(read_decode_augment, n),
        "decode_pil": rate(pil_decode, n),
        "decode_torchvision": rate(tv_decode, n),
        "decode_augment_pil_timm": rate(pil_augment, n),
        "decode_augment_torchvision_v2": rate(tv_augment, n),
        "description": pipe.describe()["train"],
    }


def step_rate(batch_size: int, size: int, steps: int, teacher: str, student: str) -> dict[str, float]:
    """Images/s of a KD training step (teacher no-grad forward, student forward/backward, SGD) on in-memory data."""
    torch.manual_seed(0)
    t = load_model(teacher, num_labels=1000, role="teacher").eval()
    s = load_model(student, num_labels=1000).train()
    opt = torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, size, size)
    y = torch.randint(0, 1000, (batch_size,))
    times = []
    for k in range(steps + 1):
        t0 = time.perf_counter()
        with torch.no_grad():
            zt = t(pixel_values=x).logits
        zs = s(pixel_values=x).logits
        loss = 0.1 * F.cross_entropy(zs, y) + 0.9 * kd_loss(zs, zt, 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k:  # the first step is warm-up
            times.append(time.perf_counter() - t0)
    return {
        "step_images_per_s": batch_size / statistics.median(times),
        "step_seconds": statistics.median(times),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default=str(SHARED_CIFAR if SHARED_CIFAR.exists() else LOCAL_CIFAR))
    ap.add_argument("--rows", type=int, default=128, help="JPEG rows written and decoded")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--image_size", type=int, default=224)
    ap.add_argument("--batch_size", type=int, default=32, help="batch of the timed training step")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up step)")
    ap.add_argument("--teacher", default="resnet34")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads of the step (default: free cores)"
    )
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker is one thread (dataloader workers run torch single-threaded)

    with tempfile.TemporaryDirectory() as tmp:
        files = write_shards(Path(args.source), args.rows, args.image_size, args.shards, Path(tmp))
        loader = loader_rates(files, args.image_size)
    torch.set_num_threads(previous)
    threads = apply_thread_policy(args.threads)
    step = step_rate(args.batch_size, args.image_size, args.steps, args.teacher, args.student)
    per_worker = loader["read_decode_augment"]
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "step_threads": threads.describe(),
            "platform": platform.platform(),
        },
        "pil": PIL.__version__,
        "source": args.source,
        "rows": args.rows,
        "image_size": args.image_size,
        "pair": f"{args.teacher} -> {args.student}",
        "batch_size": args.batch_size,
        **loader,
        **step,
        # workers whose images/s reach HEADROOM x the step's (each worker on a core of its own)
        "workers_for_headroom": math.ceil(HEADROOM * step["step_images_per_s"] / per_worker),
        "loader_over_step_one_worker": per_worker / step["step_images_per_s"],
    }
    print(f"\n{result['pair']} KD at {args.image_size} px on {result['machine']['cpus']} CPUs")
    print(f"  step: {threads.describe()}")
    for key in LOADER_KEYS:
        print(f"  {key:32s} {result[key]:8.1f} images/s per worker")
    print(f"  {'training step':32s} {result['step_images_per_s']:8.1f} images/s (batch {args.batch_size})")
    print(
        f"  one worker delivers {result['loader_over_step_one_worker']:.2f}x what the step consumes; "
        f"{result['workers_for_headroom']} worker(s) give {HEADROOM}x"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

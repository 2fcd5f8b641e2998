#!/usr/bin/env python
"""ReviewKD's step against mdistiller's own ReviewKD distiller, side by side in one process.

    python benchmarks/mdistiller_reviewkd.py --mdistiller /path/to/mdistiller --threads 1
    python benchmarks/mdistiller_reviewkd.py --mdistiller /path/to/mdistiller --pairs resnet56-resnet20 --steps 5

``--mdistiller`` is a checkout of megvii-research/mdistiller (its root, holding ``mdistiller/distillers/ReviewKD.py``)
or a bare git clone of it (its ``HEAD`` is extracted to a temporary directory). Its code is imported from there at
run time, never copied here: ``mdistiller.distillers.ReviewKD``, its CIFAR models (``mdistiller.models.cifar``) and
its configuration ``mdistiller.engine.cfg.CFG`` with the pair's ``REVIEWKD`` settings from the REVIEWKD yaml under
its ``configs/cifar100`` (resnet32x4 -> resnet8x4; a pair without one keeps CFG's defaults, its channels and sizes
set from the models). It needs ``yacs`` (``pip install yacs``), which is not a dependency of this project.

Three steps are timed in turn on the same batches, through the harness of ``benchmarks/reviewkd_reference.py``
(:func:`benchmarks.throughput.compare_with_reference`): the limit (plain student cross-entropy step beside a frozen
teacher), mdistiller's step (``distiller.forward_train(image=x, target=y, epoch=E)``, the sum of its losses,
backward, an SGD step over ``distiller.get_learnable_parameters()`` with the yaml's solver settings, as its
``BaseTrainer.train_iter`` does) and ours (the ``DistillationTrainer`` with ``--method reviewkd``). mdistiller's
teacher and student are its own classes holding our networks' (seed-0, BN-calibrated teacher) weights, copied by
position. Before timing, each pair is checked in float64: the two networks' features, our fusion modules against
mdistiller's ABFs (structure, mid channels, shapes) and, with our fusion weights copied into mdistiller's, the loss and
its gradients; differences go to the JSON's ``notes``. Reported: medians (s), images/s, ours / mdistiller's time,
the load before/after, threads, torch version and mdistiller's commit.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from hf_distill.features import Features, FeatureSpec  # noqa: E402
from hf_distill.methods.base import DataInfo, StepInfo  # noqa: E402
from hf_distill.methods.reviewkd import ReviewKD  # noqa: E402

DEFAULT_PAIRS = "resnet32x4-resnet8x4,resnet56-resnet20"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "reviewkd_mdistiller.json"


class MdistillerError(Exception):
    """A missing or unusable mdistiller: reported as one line, exit status 2."""


@dataclass
class Mdistiller:
    """The imported pieces of an mdistiller checkout."""

    root: Path
    commit: str
    ReviewKD: type
    models: dict  # name -> (constructor, checkpoint path)
    CFG: object
    notes: list[str] = field(default_factory=list)


def _git_commit(path: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _checkout(path: Path) -> tuple[Path, str]:
    """The work tree to import from and the commit: ``path`` itself, or a bare clone's HEAD extracted."""
    if not path.is_dir():
        raise MdistillerError(
            f"--mdistiller {path}: no such directory (give a checkout of megvii-research/mdistiller)"
        )
    if (path / "mdistiller" / "distillers" / "ReviewKD.py").is_file():
        return path, _git_commit(path)
    if (path / "HEAD").is_file() and (path / "objects").is_dir():  # a bare clone
        commit = _git_commit(path)
        tmp = Path(tempfile.mkdtemp(prefix="mdistiller-"))
        atexit.register(shutil.rmtree, tmp, True)
        try:
            archive = subprocess.run(
                ["git", f"--git-dir={path}", "archive", "HEAD"], capture_output=True, check=True
            ).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, capture_output=True, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise MdistillerError(
                f"--mdistiller {path}: cannot extract the bare clone's HEAD ({e})"
            ) from None
        if (tmp / "mdistiller" / "distillers" / "ReviewKD.py").is_file():
            return tmp, commit
    raise MdistillerError(
        f"--mdistiller {path}: not an mdistiller checkout (no mdistiller/distillers/ReviewKD.py under it)"
    )


def load_mdistiller(path: str | Path) -> Mdistiller:
    """Import mdistiller's ReviewKD, CIFAR models and CFG from ``path`` (see the module docstring)."""
    root, commit = _checkout(Path(path).expanduser().resolve())
    for name in [m for m in sys.modules if m == "mdistiller" or m.startswith("mdistiller.")]:
        del sys.modules[name]  # another checkout imported before
    sys.path.insert(0, str(root))
    notes: list[str] = []
    try:
        reviewkd = importlib.import_module("mdistiller.distillers.ReviewKD").ReviewKD
        cifar = importlib.import_module("mdistiller.models.cifar")
        try:
            cfg = importlib.import_module("mdistiller.engine.cfg").CFG
        except ModuleNotFoundError as e:
            if e.name is None or e.name == "yacs" or e.name.startswith("mdistiller"):
                raise
            # mdistiller/engine/__init__.py imports its trainer (tensorboardX, wandb); the cfg module needs neither
            for name in [m for m in sys.modules if m.startswith("mdistiller.engine")]:
                del sys.modules[name]
            engine = types.ModuleType("mdistiller.engine")
            engine.__path__ = [str(root / "mdistiller" / "engine")]
            sys.modules["mdistiller.engine"] = engine
            cfg = importlib.import_module("mdistiller.engine.cfg").CFG
            notes.append(
                f"mdistiller.engine's __init__ imports its trainer, which needs {e.name} (not installed): "
                "its cfg module was imported without it"
            )
    except ModuleNotFoundError as e:
        hint = " (pip install yacs)" if e.name == "yacs" else ""
        raise MdistillerError(f"--mdistiller {path}: importing mdistiller needs {e.name}{hint}") from None
    except ImportError as e:
        raise MdistillerError(f"--mdistiller {path}: cannot import mdistiller: {e}") from None
    origin = Path(importlib.import_module("mdistiller").__file__).resolve()
    if root not in origin.parents:
        raise MdistillerError(f"--mdistiller {path}: imported mdistiller from {origin.parent}, not from it")
    return Mdistiller(root, commit, reviewkd, cifar.cifar_model_dict, cfg, notes)


def mdistiller_names(pair: str) -> tuple[str, str]:
    """mdistiller's model names of one of our CIFAR-zoo pairs (``cifar_resnet32x4`` -> ``resnet32x4``)."""
    names = throughput.PAIRS[pair] if pair in throughput.PAIRS else tuple(pair.split(":"))
    return tuple(n.removeprefix("cifar_") for n in names)  # type: ignore[return-value]


def copy_by_position(src: nn.Module, dst: nn.Module) -> None:
    """Load ``src``'s state into ``dst`` entry by entry (the same layers registered in the same order)."""
    a, b = list(src.state_dict().values()), dst.state_dict()
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b.values())):
        raise ValueError(
            f"{type(src).__name__} and {type(dst).__name__} do not have the same layers in order"
        )
    dst.load_state_dict(dict(zip(b, a)))


def _config_yamls(root: Path) -> list[Path]:
    return sorted((root / "configs" / "cifar100").rglob("*.yaml"))


def pair_config(md: Mdistiller, teacher: nn.Module, student: nn.Module, t_name: str, s_name: str):
    """mdistiller's CFG with the pair's REVIEWKD yaml merged in, and what was done (a note)."""
    import yaml  # yacs's dependency

    cfg = md.CFG.clone()
    source = None
    for path in _config_yamls(md.root):
        spec = yaml.safe_load(path.read_text()) or {}
        d = spec.get("DISTILLER", {})
        if d.get("TYPE") == "REVIEWKD" and d.get("TEACHER") == t_name and d.get("STUDENT") == s_name:
            cfg.merge_from_file(str(path))
            source = path.relative_to(md.root)
            break
    # what the models need: levels shallow to deep (student post-activation, teacher pre-activation), as its
    # forward_train reads them
    with torch.no_grad():
        _, fs = student.eval()(torch.zeros(2, 3, 32, 32))
        _, ft = teacher.eval()(torch.zeros(2, 3, 32, 32))
    s_levels = fs["feats"][1:] + [fs["pooled_feat"][:, :, None, None]]
    t_levels = ft["preact_feats"][1:] + [ft["pooled_feat"][:, :, None, None]]
    need = {
        "IN_CHANNELS": [s.shape[1] for s in s_levels],
        "OUT_CHANNELS": [t.shape[1] for t in t_levels],
        "SHAPES": [s.shape[-1] for s in s_levels][::-1],
        "OUT_SHAPES": [t.shape[-1] for t in t_levels][::-1],
    }
    have = {k: list(cfg.REVIEWKD[k]) for k in need}
    cfg.defrost()
    if source is not None and have == need:
        note = f"{source}: REVIEWKD as there (its channels and sizes fit the pair)"
    else:
        for k, v in need.items():
            cfg.REVIEWKD[k] = v
        where = (
            f"{source}" if source is not None else "no REVIEWKD yaml for this pair in configs/cifar100: CFG"
        )
        note = (
            f"{where} with REVIEWKD.IN_CHANNELS/OUT_CHANNELS/SHAPES/OUT_SHAPES set from the models ({need})"
        )
    cfg.freeze()
    return cfg, note


def build_distiller(md: Mdistiller, pair: str, teacher: nn.Module, student: nn.Module):
    """mdistiller's teacher and student (its classes) holding our networks' weights, its ReviewKD distiller, the
    config and its note."""
    t_name, s_name = mdistiller_names(pair)
    for name in (t_name, s_name):
        if name not in md.models:
            raise MdistillerError(f"pair {pair}: mdistiller has no CIFAR model {name!r}")
    m_teacher = md.models[t_name][0](num_classes=throughput.NUM_CLASSES)
    m_student = md.models[s_name][0](num_classes=throughput.NUM_CLASSES)
    copy_by_position(teacher, m_teacher)
    copy_by_position(student, m_student)
    cfg, note = pair_config(md, m_teacher, m_student, t_name, s_name)
    distiller = md.ReviewKD(m_student, m_teacher, cfg)
    return distiller, cfg, note


class MdistillerStep:
    """mdistiller's training step (its ``BaseTrainer.train_iter`` without the data loading and the meters)."""

    def __init__(self, md: Mdistiller, pair: str, limit: throughput.Limit, epoch: int) -> None:
        device = next(limit.student.parameters()).device
        self.distiller, cfg, self.config_note = build_distiller(md, pair, limit.teacher, limit.student)
        self.distiller.to(device).train()
        self.epoch = epoch
        self.opt = torch.optim.SGD(
            self.distiller.get_learnable_parameters(),
            lr=cfg.SOLVER.LR,
            momentum=cfg.SOLVER.MOMENTUM,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )

    def __call__(self, batch: dict[str, Tensor]) -> None:
        self.opt.zero_grad()
        _, losses = self.distiller(image=batch["pixel_values"], target=batch["labels"], epoch=self.epoch)
        loss = sum(v.mean() for v in losses.values())
        loss.backward()
        self.opt.step()


def _rel(a: Tensor, b: Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def check_pair(md: Mdistiller, pair: str, epoch: int, batch: int = 8) -> dict:
    """Whether mdistiller's ReviewKD and ours compute the same thing on this pair (float64, same weights)."""
    teacher, student = throughput.load_pair(pair, throughput.Options())
    teacher, student = teacher.double(), student.double().train()
    distiller, cfg, note = build_distiller(md, pair, teacher, student)
    distiller.double().train()
    data = throughput.SyntheticRows(rows=batch)
    x, y = data.images[:batch].double(), data.labels[:batch]

    # the levels each reads: student post-activation stage maps + pooled vector, teacher pre-activation ones
    maps, embedding, logits = student.forward_taps(x)
    with torch.no_grad():
        t_maps, t_embedding, _ = teacher.forward_taps(x, preact=True)
    s_feat = Features(logits=logits, embedding=embedding, maps=maps)
    t_feat = Features(embedding=t_embedding, maps=t_maps)
    m_logits, m_fs = distiller.student(x)
    with torch.no_grad():
        _, m_ft = distiller.teacher(x)
    s_spec = FeatureSpec(
        names=tuple(maps),
        maps={k: tuple(v.shape[1:]) for k, v in maps.items()},
        embedding=(embedding.shape[1],),
    )
    t_spec = FeatureSpec(
        names=tuple(t_maps),
        maps={k: tuple(v.shape[1:]) for k, v in t_maps.items()},
        embedding=(t_embedding.shape[1],),
    )
    ours = ReviewKD()
    ours.resolve_layers(s_spec.names, t_spec.names)
    ours.build(s_spec, t_spec, DataInfo(num_samples=batch, num_classes=throughput.NUM_CLASSES))
    ours.double().train()
    s_levels = ours.levels(s_feat, ours.student_layer_names)
    t_levels = ours.levels(t_feat, ours.teacher_layer_names)
    m_s_levels = m_fs["feats"][1:] + [m_fs["pooled_feat"][:, :, None, None]]
    m_t_levels = m_ft["preact_feats"][1:] + [m_ft["pooled_feat"][:, :, None, None]]
    shapes = [tuple(s.shape[1:]) for s in s_levels], [tuple(t.shape[1:]) for t in t_levels]
    m_shapes = [tuple(s.shape[1:]) for s in m_s_levels], [tuple(t.shape[1:]) for t in m_t_levels]
    feature_diff = max(
        _rel(a, b)
        for a, b in zip([*s_levels, *t_levels, logits], [*m_s_levels, *m_t_levels, m_logits], strict=True)
    )

    # fusion modules: ours shallow to deep, mdistiller's abfs deep to shallow
    abfs = list(distiller.abfs)[::-1]

    def layout(conv1, conv2, att):
        return (conv1.in_channels, conv1.out_channels, conv2.out_channels, conv2.kernel_size, att is not None)

    our_layout = [layout(f.reduce[0], f.output[0], f.attention) for f in ours.fusions]
    their_layout = [layout(a.conv1[0], a.conv2[0], a.att_conv) for a in abfs]
    for f, a in zip(ours.fusions, abfs, strict=True):
        copy_by_position(f, a)

    # the loss (its REVIEWKD_WEIGHT divided out; the warm-up factor of mdistiller's epoch E is ours at epoch E - 1)
    step = StepInfo(labels=y, epoch=float(epoch - 1))
    our_loss = ours(s_feat, t_feat, step)["reviewkd"]
    _, losses = distiller.forward_train(image=x, target=y, epoch=epoch)
    their_loss = losses["loss_kd"] / cfg.REVIEWKD.REVIEWKD_WEIGHT
    ours_params = [*student.parameters(), *ours.parameters()]
    theirs_params = [*distiller.student.parameters(), *[p for a in abfs for p in a.parameters()]]
    # (the classifier is outside this loss: no gradient on either side)
    g_ours = torch.autograd.grad(our_loss, ours_params, allow_unused=True)
    g_theirs = torch.autograd.grad(their_loss, theirs_params, allow_unused=True)
    if [g is None for g in g_ours] != [g is None for g in g_theirs]:
        grad_diff = float("inf")
    else:
        grad_diff = max(_rel(a, b) for a, b in zip(g_ours, g_theirs, strict=True) if a is not None)
    loss_diff = abs(our_loss.item() - their_loss.item()) / abs(their_loss.item())
    same = (
        shapes == m_shapes and our_layout == their_layout and max(feature_diff, loss_diff, grad_diff) < 1e-9
    )
    return {
        "same_computation": same,
        "levels_student": [list(s) for s in shapes[0]],
        "levels_teacher": [list(t) for t in shapes[1]],
        "levels_equal": shapes == m_shapes,
        "mid_channels": {"ours": our_layout[0][1], "mdistiller": their_layout[0][1]},
        "fusions_equal": our_layout == their_layout,
        "fusions": [
            {"in": a[0], "mid": a[1], "out": a[2], "kernel": list(a[3]), "attention": a[4]}
            for a in our_layout
        ],
        "features_max_rel_diff": feature_diff,
        "loss": {"ours": our_loss.item(), "mdistiller_over_weight": their_loss.item(), "rel_diff": loss_diff},
        "grads_max_rel_diff": grad_diff,
        "mdistiller_weights": {
            "REVIEWKD_WEIGHT": cfg.REVIEWKD.REVIEWKD_WEIGHT,
            "CE_WEIGHT": cfg.REVIEWKD.CE_WEIGHT,
            "WARMUP_EPOCHS": cfg.REVIEWKD.WARMUP_EPOCHS,
        },
        "mdistiller_config": note,
    }


#: differences read from both codes that do not change what is computed, only how (or a loss weight)
STATIC_NOTES = [
    "ours runs inside the Hugging Face Trainer (DistillationTrainer: its step bookkeeping and callbacks, our "
    "feature taps and objective); mdistiller's step is its distiller's forward_train, the sum of its losses, "
    "backward and SGD, without a trainer around it",
    "weight decay: mdistiller's SGD decays every learnable parameter (its yaml: 5e-4, one parameter group); the "
    "Trainer's SGD (lr 0.05, momentum 0.9, weight decay 5e-4, no clipping) leaves biases out (two groups): the "
    "same optimizer work",
    "loss weights: mdistiller's resnet32x4-resnet8x4 yaml has REVIEWKD_WEIGHT 5, our method's default is 1 (our "
    "CIFAR-100 configs set 5); a scale of the loss, no cost. Warm-up: both min(epoch / 20, 1), epoch E in "
    "mdistiller = our epoch E - 1",
    "ABF: ours computes the attention mix (cat, 1x1 conv to 2 maps, sigmoid, weighted sum with the nearest-upsampled "
    "residual) in one custom autograd function that keeps the residual at its own size; mdistiller's "
    "interpolates and concatenates, and autograd differentiates it. HCL: ours pools the 2x2 and 1x1 levels from the "
    "4x4 one, mdistiller's each from the full map. Same values (checked below)",
    "mdistiller's student also returns its stem map (feats[0]), dropped by zip in forward_train: no extra compute; "
    "its teacher's forward computes the logits too (ours as well)",
    "mdistiller's networks are its own classes with our networks' weights (copied by position: same layers, same "
    "order); the teacher's BatchNorm statistics calibrated on the synthetic images as in throughput.py",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="mdistiller_reviewkd.py", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mdistiller", required=True, help="mdistiller checkout (or bare git clone) to import from"
    )
    ap.add_argument("--pairs", default=DEFAULT_PAIRS, help="comma list of CIFAR-zoo pairs")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument(
        "--epoch", type=int, default=1, help="mdistiller's epoch (its warm-up factor: epoch / 20)"
    )
    ap.add_argument("--rows", type=int, default=throughput.TRAIN_ROWS, help="training-set size")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)"
    )
    ap.add_argument("--skip_check", action="store_true", help="time only (no float64 equality check)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="write the JSON result here")
    args = ap.parse_args(argv)
    pairs = args.pairs.split(",")
    unknown = [
        p for p in pairs if p not in throughput.PAIRS or not throughput.PAIRS[p][0].startswith("cifar_")
    ]
    if unknown:
        cifar = [p for p, (t, _) in throughput.PAIRS.items() if t.startswith("cifar_")]
        ap.error(f"unknown pair {unknown[0]!r}: choose from {', '.join(cifar)}")
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    args.pair_list = pairs
    return args


def run_pair(md: Mdistiller, pair: str, args: argparse.Namespace) -> dict:
    """One pair: the check, then limit, mdistiller's step and ours timed in turn on the same batches."""
    check = None if args.skip_check else check_pair(md, pair, args.epoch)
    steps: list[MdistillerStep] = []

    def reference(limit: throughput.Limit, _args) -> MdistillerStep:
        steps.append(MdistillerStep(md, pair, limit, args.epoch))
        return steps[-1]

    r = throughput.compare_with_reference(pair, "reviewkd", reference, args)
    b = args.batch_size
    row = {
        "pair": pair,
        "steps": r["steps"],
        "load": r["load"],
        "limit_s": r["limit_s"],
        "mdistiller_s": r["reference_s"],
        "ours_s": r["trainer_s"],
        "limit_img_s": round(b / r["limit_s"], 2),
        "mdistiller_img_s": round(b / r["reference_s"], 2),
        "ours_img_s": round(b / r["trainer_s"], 2),
        "ours_over_mdistiller": r["trainer_over_reference"],
        "ours_over_limit": r["trainer_over_limit"],
        "mdistiller_over_limit": r["reference_over_limit"],
        "spread": {
            "limit": r["spread"]["limit"],
            "mdistiller": r["spread"]["reference"],
            "ours": r["spread"]["trainer"],
        },
        "mdistiller_config": steps[0].config_note,
    }
    if check is not None:
        row["check"] = check
    return row


def save(result: dict, out: str | None) -> None:
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")


def markdown(result: dict) -> str:
    """The table of docs/speed.md (block ``mdistiller-reviewkd``) from a saved result."""
    commit = str(result.get("mdistiller", {}).get("commit", "unknown"))[:7]
    lines = [
        f"mdistiller at {commit}, batch {result['batch_size']}, {result['steps']} timed steps after "
        f"{result['warmup']} warm-up, {result['device']}, torch {result['torch']}.",
        "",
        "| pair | limit s | mdistiller s | ours s | mdistiller / limit | ours / limit | ours / mdistiller "
        "| same computation | spread (limit / mdistiller / ours) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        spread = " / ".join(f"{100 * r['spread'][k]:.0f}%" for k in ("limit", "mdistiller", "ours"))
        same = "yes" if r.get("check", {}).get("same_computation") else "not checked"
        load = "-".join(f"{v:.1f}" for v in r["load"])
        lines.append(
            f"| {r['pair']} | {r['limit_s']:.3f} | {r['mdistiller_s']:.3f} | {r['ours_s']:.3f} "
            f"| {r['mdistiller_over_limit']:.2f}x | {r['ours_over_limit']:.2f}x | {r['ours_over_mdistiller']:.2f}x "
            f"| {same} | {spread} | {load} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        md = load_mdistiller(args.mdistiller)
    except MdistillerError as e:
        print(f"mdistiller_reviewkd.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "benchmark": "ReviewKD: our DistillationTrainer step vs mdistiller's ReviewKD distiller step, with the "
        "limit, timed in turn on the same batches in one process (medians, seconds per step)",
        "mdistiller": {"commit": md.commit, "source": str(Path(args.mdistiller))},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": throughput.environment(device)["device"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "epoch": args.epoch,
        "load": {"before": [round(v, 2) for v in os.getloadavg()]},
        "runs": [],
        "notes": [*STATIC_NOTES, *md.notes],
    }
    for pair in args.pair_list:
        row = run_pair(md, pair, args)
        result["runs"].append(row)
        check = row.get("check")
        if check is not None and not check["same_computation"]:
            result["notes"].append(f"{pair}: the check found a difference, see runs[].check")
        result["load"]["after"] = [round(v, 2) for v in os.getloadavg()]
        save(result, args.out)  # after every pair: a run killed midway keeps what it measured
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

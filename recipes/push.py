#!/usr/bin/env python
"""Publish a trained student: complete its folder into a Hub repository and upload it.

    python recipes/push.py outputs/default --hub_model_id me/resnet20-kd-cifar10 --dry_run   # show, upload nothing
    python recipes/push.py outputs/default --hub_model_id me/resnet20-kd-cifar10
    python recipes/push.py outputs/default --hub_model_id me/resnet20-kd --baseline_results outputs/baseline
    python recipes/push.py outputs/default --no_push          # only complete the folder (card, processor, plot)

The folder is what ``recipes/distill.py`` (``trainer.save_model()``) wrote. The card is rendered from
``distillation_summary.json`` when the trainer wrote one, else rebuilt from the run's files (``config.json``,
``trainer_state.json``, ``all_results.json`` or ``distill_results.json``, ``training_args.json``; a pickle is never
loaded); the options below fill in what those do not record (teacher id, dataset id, baseline accuracy, ...).

What goes up is listed by ``--dry_run`` (docs/publishing.md): no checkpoints, locks, training arguments or hidden
files; every file is scanned for the token, the host name and local paths first, and code hf_distill did not write
is refused (``--allow_foreign_code``). The upload is one commit. The Hub endpoint follows ``HF_ENDPOINT``.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hf_distill.hub.publish import PushPlan


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
        default=None,
        metadata={
            "help": "Hub dataset id for the card (e.g. uoft-cs/cifar10). For a run on a local copy, this states that "
            "the copy holds the same data as that Hub dataset; the card says so."
        },
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
        metadata={"help": "Baseline run (--method none): its output folder, all_results.json or summary."},
    )
    overwrite_card: bool = field(default=False, metadata={"help": "Replace an existing README.md entirely."})
    dry_run: bool = field(
        default=False,
        metadata={
            "help": "List every file that would be uploaded (size; new or changed against the repository) and what "
            "would be deleted from it, scan them, print the card; change nothing, here or on the Hub."
        },
    )
    allow_foreign_code: bool = field(
        default=False,
        metadata={"help": "Publish .py files / a config.json auto_map that hf_distill did not write."},
    )


def baseline_from(path: str) -> tuple[float | None, float | None]:
    """Top-1/top-5 accuracy of a baseline run from its folder, its ``all_results.json`` (``distill_results.json``
    of earlier versions) or its summary.

    Args:
        path: a folder or a JSON file.

    Returns:
        (top-1, top-5), None where not recorded.

    Raises:
        ValueError: nothing readable there.
    """
    from hf_distill.hub.collect import RESULTS_FILES
    from hf_distill.hub.summary import SUMMARY_NAME

    names = (SUMMARY_NAME, *RESULTS_FILES)
    candidates = [os.path.join(path, name) for name in names] if os.path.isdir(path) else [path]
    for c in candidates:
        if os.path.isfile(c):
            with open(c, encoding="utf-8") as f:
                data = json.load(f)
            top1 = data.get("accuracy", data.get("eval_accuracy"))
            top5 = data.get("top5_accuracy", data.get("eval_top5_accuracy"))
            if top1 is not None:
                return float(top1), None if top5 is None else float(top5)
    raise ValueError(
        f"--baseline_results {path!r} has no accuracy (expected all_results.json, distill_results.json or a "
        "summary)."
    )


def _overrides(args: PushArguments) -> dict[str, object]:
    """The summary fields the command line sets."""
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
    return {k: v for k, v in overrides.items() if v is not None}


def _check_arguments(args: PushArguments) -> None:
    from hf_distill.hub.classifier import check_saved_model
    from hf_distill.hub.privacy import looks_local

    if not os.path.isdir(args.output_dir):
        raise ValueError(f"{args.output_dir!r} is not a folder: pass the output_dir of a training run.")
    if not (args.no_push or args.dry_run) and not args.hub_model_id:
        raise ValueError("Pass --hub_model_id namespace/name (or --no_push to only complete the folder).")
    if args.dataset and looks_local(args.dataset):
        raise ValueError(
            f"--dataset {args.dataset} is a local path: it takes a Hub dataset id (e.g. uoft-cs/cifar10), the one "
            "your local copy holds the same data as."
        )
    if args.base_model and args.teacher and args.base_model == args.teacher:
        raise ValueError(
            "--base_model is the student's initialization checkpoint, never the teacher (the Hub would file the "
            "student as a fine-tune of the teacher): drop it, or name the checkpoint the student started from."
        )
    check_saved_model(args.output_dir)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} B"


def dry_run_report(plan: PushPlan, repo_id: str | None, card: str, unreachable: str | None = None) -> str:
    """The dry run's text: every file with its status and size, the deletions, the scan, the card."""
    if unreachable is not None:
        against = f"not compared with {repo_id}: {unreachable}"
    elif plan.repo is None:
        against = "not compared with the Hub (no --hub_model_id)"
    elif plan.repo.exists:
        against = f"compared with {repo_id} ({len(plan.repo.files)} files there)"
    else:
        against = f"{repo_id} does not exist yet: every file is new"
    lines = [
        f"dry run: nothing is uploaded or changed; {plan.folder} -> {against}",
        f"{'status':9}{'size':>11}  file",
    ]
    lines += [f"{status:9}{_size(f.size):>11}  {f.path_in_repo}" for f, status in plan.files]
    lines += [f"{'delete':9}{'':>11}  {path} (must never be in a repository)" for path in plan.delete]
    total = sum(f.size for f in plan.upload)
    lines.append(
        f"{len(plan.files)} files, {_size(total)}; scan: no Hub token, host name or local path in any of them"
    )
    return "\n".join(lines + ["", "--- README.md ---", card.rstrip(), "---"])


def _copy_ignore(directory: str, names: list[str]) -> list[str]:
    """What the dry run's copy leaves out: checkpoints (but their trainer_state.json, which a folder without a
    summary is described from), scratch folders, peers, locks."""
    if fnmatch.fnmatch(os.path.basename(directory), "checkpoint-*"):
        return [n for n in names if n != "trainer_state.json"]
    skip = ("tmp-checkpoint-*", "init_stage", "peer[0-9]*", "_*")
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in skip)]


def _dry_run(args: PushArguments, overrides: dict[str, object]) -> dict[str, object]:
    """Complete a copy of the folder (the folder itself is left as it is), report what a push would do."""
    from hf_distill.hub import complete_folder, summary_from_folder
    from hf_distill.hub.publish import plan_push
    from hf_distill.hub.upload import HubError

    with tempfile.TemporaryDirectory(prefix="hf_distill-dry-run-") as tmp:
        copy = os.path.join(tmp, os.path.basename(os.path.normpath(args.output_dir)))
        shutil.copytree(args.output_dir, copy, ignore=_copy_ignore)
        summary = _summary(args, copy, overrides, summary_from_folder)
        complete_folder(summary, copy, dataset_name=args.dataset_name, overwrite_card=args.overwrite_card)
        unreachable = None
        try:
            plan = plan_push(
                copy, args.hub_model_id, token=args.token, revision=args.revision,
                allow_foreign_code=args.allow_foreign_code,
            )  # fmt: skip
        except HubError as e:  # offline: what would leave the machine is still known, only not compared
            unreachable = str(e).split(";")[0]
            plan = plan_push(copy, None, allow_foreign_code=args.allow_foreign_code)
        plan.folder = args.output_dir
        with open(os.path.join(copy, "README.md"), encoding="utf-8") as f:
            print(dry_run_report(plan, args.hub_model_id, f.read(), unreachable))
    return {"folder": args.output_dir, "repo_id": None, "commit_url": None, "summary": summary, "plan": plan}


def _summary(args: PushArguments, folder: str, overrides: dict[str, object], summary_from_folder) -> object:
    summary = summary_from_folder(folder, **overrides)
    # --dataset on a run over a local copy is the publisher's statement that the copy is that Hub dataset
    summary.dataset_asserted = bool(args.dataset and summary.local_dataset)
    return summary


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Complete the folder, push it; return ``{"folder", "repo_id", "commit_url", "summary"}``."""
    from hf_distill.hub.recipe_args import exit_on_bad_input, parse_recipe_args

    args = parse_recipe_args(PushArguments, argv, positional="output_dir")
    from hf_distill.hub import complete_folder, push_folder, summary_from_folder

    with exit_on_bad_input(ValueError, FileNotFoundError):
        _check_arguments(args)
        overrides = _overrides(args)
        if args.dry_run:
            return _dry_run(args, overrides)
        summary = _summary(args, args.output_dir, overrides, summary_from_folder)
        if not args.no_push and not args.allow_foreign_code:
            from hf_distill.hub.code_check import check_code

            check_code(args.output_dir)  # before the card is written: it must not advise running that code
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
                allow_foreign_code=args.allow_foreign_code,
            )
            out.update(repo_id=args.hub_model_id, commit_url=info.commit_url)
            print(f"pushed {args.output_dir} -> {args.hub_model_id} ({info.commit_url})")
        else:
            print(f"completed {args.output_dir} (README.md, processor, plot); nothing pushed")
    return out


if __name__ == "__main__":
    main()

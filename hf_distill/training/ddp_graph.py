"""How DDP learns which parameters a step uses: a static graph where that is safe, a search every step otherwise.

transformers' Trainer asks DDP to search the autograd graph for unused parameters on every step
(``find_unused_parameters=True``) for any model that is not a ``PreTrainedModel``, which the distillation container
is. That search costs a traversal of the graph per step, and when every parameter is used (the common case) each
process prints torch's "find_unused_parameters=True was specified ... but did not find any unused parameters"
warning. ``static_graph=True`` records the used set on the first step and reuses it: no search, no warning, and
parameters that are never used (a FitNet connector after its hint stage, a head a backbone skips) still work.

It is only safe when every step uses the same parameters and the first step is synchronized; two things in a
distillation run break that, and keep the per-step search:

* a method with trainable parts that needs several rows (``min_batch_size > 1``): the objective leaves it out of a
  short last batch, so its parts go unused on that step (:meth:`DistillationObjective.short_of_minimum`), unless
  ``--dataloader_drop_last`` removes short batches;
* gradient accumulation: the first micro-batch runs under ``no_sync``, which a static graph does not support on its
  first step (torch 2.x raises an internal assert in the reducer).

A user who sets ``--ddp_find_unused_parameters`` or ``--ddp_static_graph`` keeps their choice.
"""

from __future__ import annotations

from transformers import TrainingArguments

from ..methods.objective import DistillationObjective, batch_minimums


def skippable_trainable_methods(objective: DistillationObjective) -> list[str]:
    """Names of the methods (or methods they wrap) that own trainable parameters and may be left out of a short
    batch (``min_batch_size > 1``)."""
    return [
        name
        for name, method in objective.methods.items()
        if batch_minimums(method) and any(p.requires_grad for p in method.parameters())
    ]


def static_graph_obstacle(args: TrainingArguments, objective: DistillationObjective) -> str | None:
    """Why a static DDP graph is not safe for this run, in words (None: it is)."""
    if args.gradient_accumulation_steps > 1:
        return "gradient accumulation (its first micro-batch is not synchronized)"
    skippable = skippable_trainable_methods(objective)
    if skippable and not args.dataloader_drop_last:
        return (
            f"{', '.join(skippable)} may be left out of a short last batch (its trainable parts then get no "
            "gradient); --dataloader_drop_last true allows a static graph"
        )
    return None


def choose_ddp_graph(
    args: TrainingArguments, objective: DistillationObjective
) -> tuple[dict[str, bool | None], str]:
    """The DDP settings for a run of ``objective`` (``ddp_static_graph``, ``ddp_find_unused_parameters``: the user's
    when either is set) and the choice in words, for the log. ``args`` is not changed."""
    user = {
        "ddp_static_graph": args.ddp_static_graph,
        "ddp_find_unused_parameters": args.ddp_find_unused_parameters,
    }
    if args.ddp_static_graph is not None or args.ddp_find_unused_parameters is not None:
        return user, "as set (--ddp_static_graph / --ddp_find_unused_parameters)"
    obstacle = static_graph_obstacle(args, objective)
    if obstacle is None:
        settings = {"ddp_static_graph": True, "ddp_find_unused_parameters": False}
        return settings, "static graph (the parameters used are found once, on the first step)"
    settings = {"ddp_static_graph": None, "ddp_find_unused_parameters": True}
    return settings, f"unused parameters searched every step: {obstacle}"


__all__ = ["choose_ddp_graph", "skippable_trainable_methods", "static_graph_obstacle"]

"""Mutual learning's peers (``--method dml``) exported as models of their own: each peer is saved to
``peer<k>/`` in the student's format with a card naming the networks it learned with, and pushed to
``<hub_model_id>-peer<k>``. Part of the Hub layer: the training core only trains the peers."""

from __future__ import annotations

import os
from typing import Any

from ..training.mutual import _last, _peer_architecture, _peer_history, mutual_method, mutual_partners
from .publish import complete_folder, push_folder


def export_peer(trainer: Any, k: int, folder: str, **overrides: Any):
    """Save peer ``k`` (from 1) as its own model folder, in the student's format (weights, config, processor) with
    a card that says it was trained mutually and with which networks.

    Args:
        trainer: the trainer of a dml run (after training).
        k: the peer's number.
        folder: the output folder.
        **overrides: further :class:`~hf_distill.hub.summary.DistillationSummary` fields (``repo_id``, ...).

    Returns:
        The peer's summary (also saved in the folder).

    Raises:
        ValueError: no dml method, or no peer ``k``.
    """
    method = mutual_method(trainer)
    n = len(method.peer_nets) if method is not None else 0
    if not 1 <= k <= n:
        raise ValueError(f"There is no peer {k} to export: this run has {n} peer(s) (numbered from 1).")
    peer = method.peer_nets[k - 1]
    history = trainer.state.log_history
    fields = {
        "model_name": overrides.pop("model_name", None) or f"{_peer_architecture(peer)}-peer{k}",
        "student_class": type(peer).__name__,
        "student_architecture": _peer_architecture(peer),
        "num_parameters": sum(p.numel() for p in peer.parameters()),
        "accuracy": _last(history, f"eval_peer{k}_accuracy"),
        "top5_accuracy": _last(history, f"eval_peer{k}_top5_accuracy"),
        "log_history": _peer_history(history, k),
        "mutual": mutual_partners(trainer, k),
    }
    if trainer.args.should_save:
        return complete_folder(trainer, folder, student=peer, **fields, **overrides)
    return None


def export_peers(trainer: Any, output_dir: str, push: bool = False) -> list[str]:
    """Export every peer to ``output_dir/peer<k>`` (see :func:`export_peer`) and, with ``push``, push each to
    ``<hub_model_id>-peer<k>``.

    Returns:
        The folders (empty without dml).
    """
    method = mutual_method(trainer)
    folders = []
    for k in range(1, len(method.peer_nets) + 1 if method is not None else 1):
        folder = os.path.join(output_dir, f"peer{k}")
        repo_id = f"{trainer.args.hub_model_id}-peer{k}" if trainer.args.hub_model_id else None
        export_peer(trainer, k, folder, repo_id=repo_id)
        folders.append(folder)
        if push and trainer.args.should_save:
            if repo_id is None:
                raise ValueError(
                    "Pushing the peers needs --hub_model_id (peer k goes to <hub_model_id>-peer<k>)."
                )
            push_folder(folder, repo_id, token=trainer.args.hub_token, private=trainer.args.hub_private_repo)
    return folders


__all__ = ["export_peer", "export_peers"]

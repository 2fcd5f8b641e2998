"""Mutual learning around the ``dml`` method: building and attaching the peers, evaluating every peer, exporting one.

The peers are trainable parts of :class:`~hf_distill.methods.dml.DML` (inside the module the Trainer optimizes), so
the optimizer, DDP, checkpoints and resume handle them with the student. This module does what a loss may not: build
networks (:func:`prepare_peers`, used by :func:`hf_distill.run.build.build_run`), evaluate them each time the student
is evaluated (:class:`PeerEvaluation`) and save peer ``k`` as its own Hub model folder with a card that names the
networks it was trained with (:func:`hf_distill.hub.peers.export_peer`).

Python API::

    objective = DistillationObjective.from_names("dml", method_kwargs={"dml": {"peers": "cifar_resnet20"}})
    prepare_peers(objective, student, "cifar_resnet20", id2label, seed=0)
    trainer = DistillationTrainer(model=student, teacher=None, objective=objective, ...)
    trainer.add_callback(PeerEvaluation(trainer))
    trainer.train(); hf_distill.hub.peers.export_peer(trainer, 1, "outputs/peer1")
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import EvalPrediction, TrainerCallback

from ..features import LOGITS_ONLY
from ..methods.dml import DML, peer_names
from ..models.loading import load_model
from ..models.normalization import input_spec
from ..models.taps import feature_tap
from .metrics import classification_metrics

#: the registry names of mutual learning (method and preset)
MUTUAL = frozenset({"dml", "dml_ie"})

__all__ = [
    "MUTUAL",
    "PeerEvaluation",
    "attach_peers",
    "evaluate_peers",
    "mutual_method",
    "mutual_partners",
    "prepare_peers",
]


def mutual_method(model_or_objective: Any) -> DML | None:
    """The objective's ``dml`` method (from an objective, a DistillationModel or a trainer), or None."""
    obj = model_or_objective
    for attr in ("model", "module", "objective"):  # trainer -> (DDP) -> container -> objective
        obj = getattr(obj, attr, obj)
    obj = getattr(obj, "objective", obj)
    methods = getattr(obj, "methods", None)
    if not isinstance(methods, (dict, nn.ModuleDict)):
        return None
    return next((m for m in methods.values() if isinstance(m, DML)), None)


def build_peers(names: list[str], id2label: dict[int, str] | None, seed: int) -> list[nn.Module]:
    """Build each peer by name with the student's builder, peer ``k`` (from 1) initialized from seed ``seed + k``.

    The global RNG is left as it was, so the student and the rest of the run are those of a run without peers.
    """
    peers = []
    for k, name in enumerate(names, 1):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + k)
            peers.append(load_model(name, id2label=id2label, role="student"))
    return peers


def attach_peers(objective: Any, peers: list[nn.Module], student: nn.Module) -> None:
    """Give the objective's ``dml`` method its peers; with ``same_init`` each starts as a copy of the student.

    Raises:
        ValueError: the objective has no ``dml`` method, or ``same_init`` with a peer of another architecture.
    """
    method = mutual_method(objective)
    if method is None:
        raise ValueError("attach_peers needs an objective with the dml method (--method dml).")
    if method.same_init:
        for k, peer in enumerate(peers, 1):
            try:
                peer.load_state_dict(student.state_dict())
            except RuntimeError:
                raise ValueError(
                    f"--dml-same_init copies the student into every peer, but peer {k} ({type(peer).__name__}) has "
                    "another architecture; give peers of the student's architecture or drop --dml-same_init."
                ) from None
    method.attach(peers, [feature_tap(p) for p in peers], input_spec(student).image_size)


def prepare_peers(
    objective: Any, student: nn.Module, student_name: str, id2label: dict[int, str] | None, seed: int
) -> list[nn.Module]:
    """Build the peers named by ``--dml-peers`` (default: one like the student) and attach them; no-op without dml.

    Returns:
        The peers (empty without dml).
    """
    method = mutual_method(objective)
    if method is None:
        return []
    peers = build_peers(peer_names(method.peers, student_name), id2label, seed)
    attach_peers(objective, peers, student)
    return peers


def _peer_architecture(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "architecture", None) or getattr(cfg, "model_type", None) or type(model).__name__)


@torch.no_grad()
def evaluate_peers(trainer: Any, metric_key_prefix: str = "eval") -> dict[str, float]:
    """Every peer's ``compute_metrics`` on the eval set: ``eval_peer<k>_accuracy``, ``eval_peer<k>_top5_accuracy``.

    Runs on every process over its shard of the trainer's eval loader and gathers, as the Trainer's evaluation
    does; the peers' BatchNorm statistics are first taken from process 0 (as the trainer does for the student).
    """
    method = mutual_method(trainer)
    if method is None or trainer.eval_dataset is None:
        return {}
    acc = trainer.accelerator
    if acc.num_processes > 1 and torch.distributed.is_initialized():
        for b in method.peer_nets.buffers():
            torch.distributed.broadcast(b, src=0)
    loader = trainer.get_eval_dataloader()
    out: dict[str, float] = {}
    for k, peer in enumerate(method.peer_nets, 1):
        tap, was = method.peer_taps[k - 1], peer.training
        peer.eval()
        logits, labels = [], []
        for batch in loader:
            with acc.autocast():
                z = tap(peer, batch["pixel_values"], LOGITS_ONLY).logits.float()
            z, y = acc.gather_for_metrics((z, batch["labels"]))
            logits.append(z.cpu())
            labels.append(y.cpu())
        peer.train(was)
        metrics = classification_metrics(EvalPrediction(torch.cat(logits).numpy(), torch.cat(labels).numpy()))
        out.update({f"{metric_key_prefix}_peer{k}_{name}": v for name, v in metrics.items()})
    return out


class PeerEvaluation(TrainerCallback):
    """Evaluate every peer whenever the student is evaluated on the eval set; logs ``eval_peer<k>_accuracy`` and adds
    it to the metrics ``trainer.evaluate()`` returns."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if metrics is None or "eval_accuracy" not in metrics:
            return
        peers = evaluate_peers(self.trainer)
        metrics.update(peers)
        if peers:
            self.trainer.log(peers)


def _last(log_history: list[dict[str, Any]], key: str) -> float | None:
    return next((r[key] for r in reversed(log_history) if key in r), None)


def mutual_partners(trainer: Any, network: int = 0) -> list[dict[str, Any]]:
    """The networks trained together with network ``network`` (0: the student, k: peer k), for its model card:
    ``{"name", "architecture", "accuracy"}`` each, accuracy the last evaluated (None when never evaluated)."""
    method = mutual_method(trainer)
    if method is None:
        return []
    history = trainer.state.log_history
    nets = [("student", trainer.accelerator.unwrap_model(trainer.model).student, "eval_accuracy")]
    nets += [(f"peer {k}", p, f"eval_peer{k}_accuracy") for k, p in enumerate(method.peer_nets, 1)]
    return [
        {"name": name, "architecture": _peer_architecture(net), "accuracy": _last(history, key)}
        for i, (name, net, key) in enumerate(nets)
        if i != network
    ]


def _peer_history(log_history: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """The log history as peer ``k`` sees it: its eval metrics under the student's names, the student's and other
    peers' eval metrics left out (for its card's training curves)."""
    prefix, out = f"eval_peer{k}_", []
    for r in log_history:
        rec = {key: v for key, v in r.items() if not key.startswith("eval_")}
        rec.update({"eval_" + key[len(prefix) :]: v for key, v in r.items() if key.startswith(prefix)})
        if set(rec) - {"epoch", "step"}:
            out.append(rec)
    return out

"""DML: Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning" (CVPR 2018, arXiv 1706.00384); with ``ie=True`` the
inheritance/exploration split of IE-KD (Huang et al., CVPR 2021) applied between the peers (that paper combines its
framework with DML).

Mutual (online) distillation: the student and one or more peer networks are trained together from scratch, each one
matching the others' current predictions. The peers are trainable parts of this method (``peer_nets``), so one
optimizer, DDP, checkpoints and resume cover them with the student; they are built by
:func:`hf_distill.training.mutual.attach_peers` (a loss never builds networks) before the trainer is created.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    DataInfo,
    DistillationMethod,
    FeatureNeeds,
    Features,
    FeatureSpec,
    MapSelector,
    MethodNeeds,
    StepInfo,
    resolve_selectors,
)
from .factor import AutoEncoder, ConvCoder, mean_pnorm
from .iekd import _FORMS, iekd_loss
from .kd import kd_loss
from .maps import check_conv_maps, parse_single_selector
from .registry import Preset, register_method, register_preset

__all__ = ["DML", "mutual_kl", "peer_names"]

#: reads :class:`Features` from a network for a request (a model's feature tap, see ``hf_distill.models.taps``)
PeerTap = Callable[[nn.Module, Tensor, FeatureNeeds], Features]


def peer_names(peers: str, student: str) -> list[str]:
    """The peers' architecture names from ``--dml-peers`` (comma list; empty: one peer like the student)."""
    names = [p.strip() for p in str(peers or "").split(",") if p.strip()]
    return names or [student]


def mutual_kl(logits: Sequence[Tensor], temperature: float = 1.0) -> list[Tensor]:
    """Each network's mutual-learning term: the mean over the other networks ``j`` of
    ``KL(p_j || p_i)`` with ``p_j`` detached (a target, not trained through), at temperature T, times T^2.

    Args:
        logits: (B, C) logits of every network (student first).
        temperature: softmax temperature (DML: 1).

    Returns:
        One scalar per network, in the order of ``logits``.
    """
    n = len(logits)
    if n < 2:
        raise ValueError(f"dml needs at least two networks, got {n}")
    targets = [z.detach() for z in logits]
    return [
        sum(kd_loss(logits[i], targets[j], temperature) for j in range(n) if j != i) / (n - 1)
        for i in range(n)
    ]


@register_method("dml")
class DML(DistillationMethod):
    """Deep Mutual Learning: every network learns from the labels and from the others' current predictions.

    Networks: the student (index 0) and the peers ``peer_nets[k-1]`` (index k), attached by
    :func:`hf_distill.training.mutual.attach_peers` from ``peers`` (architecture names, built like the student, each from its
    own seed, or as copies of the student with ``same_init``). For network ``i`` with logits ``z_i``:
    ``L_i = CE(z_i, y) + mean_{j != i} KL(softmax(z_j/T).detach() || softmax(z_i/T)) T^2`` (DML, T=1). All networks
    are updated together by one optimizer step on the sum of their losses (the paper alternates the updates; the
    simultaneous form keeps two identical peers identical). The student's CE is the objective's ``ce`` term; this
    method returns the student's ``kl`` and each peer's ``peer<k>_ce`` and ``peer<k>_kl``, so the method's weight
    also scales the peers' CE: keep it equal to the CE weight (1, the default) for every network to get the same
    loss.

    With a teacher (``teacher_weight`` > 0) every network also matches the teacher's logits:
    ``teacher_weight * KL(softmax(z_t/τ) || softmax(z_i/τ)) τ^2`` (``kd`` / ``peer<k>_kd``).

    With ``ie``: IE-KD's split between the peers. Each network ``k`` owns an auto-encoder (``ae.<k>``, IE-KD's
    Coders) trained online to reconstruct its own (detached) map ``f_k`` (``rec`` terms), whose encoder gives the
    factor ``F_k`` that the other networks read (detached); the first half of ``f_k``'s channels (inheritance) and
    the second half (exploration) each have an encoder (``inh_encoder.<k>``, ``exp_encoder.<k>``) trained with the
    network, and ``inh_weight * L_inh(F_j, F_I,k) + exp_weight * L_exp(F_j, F_E,k)`` (:func:`iekd_loss`) is
    averaged over the other networks ``j``. The factor has ``int(rate * min_k C_k)`` channels; maps of different
    sizes are pooled to the smaller. Online training of the auto-encoders (IE-KD pretrains the teacher's for 30
    epochs) is this implementation's reading for networks trained from scratch together.

    Args:
        peers: comma list of the peers' architectures (empty: one peer of the student's architecture).
        temperature: softmax temperature of the mutual terms (1 as the paper).
        same_init: start every peer (and, with ``ie``, every network's IE parts) as a copy of the student's.
        teacher_weight: weight of every network's KD term to the teacher (0: no teacher).
        teacher_temperature: temperature of that KD term.
        ie: add IE-KD's inheritance/exploration split between the peers.
        form: "norm" or "cos" (see :func:`iekd_loss`).
        p: order of the normalized distance (form "norm").
        rate: factor channels as a fraction of the smallest map's channels.
        inh_weight: weight of the inheritance terms.
        exp_weight: weight of the exploration terms.
        student_layers: the map split by ``ie`` in every network (one selector, "last").
    """

    summary = (
        "Mutual learning: the student and its peers train together, each matching the others' predictions"
    )
    paper = "Zhang et al., Deep Mutual Learning, CVPR 2018"
    citation = (
        "@inproceedings{zhang2018deep,\n  title={Deep Mutual Learning},\n  author={Zhang, Ying and Xiang, Tao and "
        "Hospedales, Timothy M. and Lu, Huchuan},\n  booktitle={Proceedings of the IEEE Conference on Computer "
        "Vision and Pattern Recognition (CVPR)},\n  pages={4320--4328},\n  year={2018}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0

    def __init__(
        self,
        peers: str = "",
        temperature: float = 1.0,
        same_init: bool = False,
        teacher_weight: float = 0.0,
        teacher_temperature: float = 4.0,
        ie: bool = False,
        form: str = "norm",
        p: float = 1.0,
        rate: float = 0.5,
        inh_weight: float = 1.0,
        exp_weight: float = 1.0,
        student_layers: MapSelector = "last",
    ) -> None:
        super().__init__()
        if temperature <= 0 or teacher_temperature <= 0:
            raise ValueError(
                f"dml temperatures must be > 0, got temperature={temperature}, teacher_temperature={teacher_temperature}"
            )
        if teacher_weight < 0 or inh_weight < 0 or exp_weight < 0:
            raise ValueError(
                f"dml weights must be >= 0, got teacher_weight={teacher_weight}, inh_weight={inh_weight}, "
                f"exp_weight={exp_weight}"
            )
        if form not in _FORMS:
            raise ValueError(f"dml form must be one of {', '.join(_FORMS)}, got {form!r}")
        if p <= 0 or not 0 < rate <= 1:
            raise ValueError(f"dml needs p > 0 and rate in (0, 1], got p={p}, rate={rate}")
        self.peers = str(peers or "")
        self.temperature = float(temperature)
        self.same_init = bool(same_init)
        self.teacher_weight = float(teacher_weight)
        self.teacher_temperature = float(teacher_temperature)
        self.ie = bool(ie)
        self.form, self.p, self.rate = form, float(p), float(rate)
        self.inh_weight, self.exp_weight = float(inh_weight), float(exp_weight)
        self.student_layers = parse_single_selector(student_layers, "--dml-student-layers")
        self.peer_nets = nn.ModuleList()
        self.peer_taps: list[PeerTap] = []
        self._image_size = 32
        self.layer_per_network: list[str] = []

    # -- peers -----------------------------------------------------------------------------------------------------
    def attach(self, peers: Sequence[nn.Module], taps: Sequence[PeerTap], image_size: int) -> None:
        """Make ``peers`` this method's peer networks (before the trainer builds it).

        Args:
            peers: the peer networks, trained from their current weights.
            taps: each peer's feature tap.
            image_size: the input size, for the dry run that reads the peers' shapes.
        """
        if self._is_set_up:
            raise ValueError("dml peers must be attached before the method is built (before the trainer).")
        if not peers or len(peers) != len(taps):
            raise ValueError(
                f"dml needs at least one peer and one tap per peer, got {len(peers)} and {len(taps)}"
            )
        self.peer_nets = nn.ModuleList(peers)
        self.peer_taps = list(taps)
        self._image_size = int(image_size)

    @property
    def num_networks(self) -> int:
        """The student plus its peers."""
        return 1 + len(self.peer_nets)

    def _peer_request(self, k: int) -> FeatureNeeds:
        maps = (self.layer_per_network[k + 1],) if self.ie else ()
        return FeatureNeeds(logits=True, maps=maps)

    def peer_features(self, pixel_values: Tensor) -> list[Features]:
        """Every peer's features for the batch (logits, and the split map with ``ie``)."""
        return [
            tap(net, pixel_values, self._peer_request(k))
            for k, (net, tap) in enumerate(zip(self.peer_nets, self.peer_taps))
        ]

    # -- declaration -----------------------------------------------------------------------------------------------
    def needs(self) -> MethodNeeds:
        teacher = FeatureNeeds(logits=self.teacher_weight > 0)
        return MethodNeeds(
            student=FeatureNeeds(logits=True, maps=(self.student_layers,) if self.ie else ()), teacher=teacher
        )

    def resolve_layers(self, student_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        """Resolve the split map in the student and in every peer; refuse a method without peers."""
        if not self.peer_nets:
            raise ValueError(
                "dml has no peer networks: build them with hf_distill.training.mutual.attach_peers before the trainer "
                "(the recipe does it from --dml-peers)."
            )
        super().resolve_layers(student_names, teacher_names)
        if self.ie:
            names = [student_names] + [tap.names for tap in self.peer_taps]
            who = ["student"] + [f"peer {k + 1}" for k in range(len(self.peer_taps))]
            self.layer_per_network = [
                resolve_selectors([self.student_layers], n, w)[0] for n, w in zip(names, who)
            ]

    @torch.no_grad()
    def _peer_specs(self) -> list[FeatureSpec]:
        specs = []
        for k, (net, tap) in enumerate(zip(self.peer_nets, self.peer_taps)):
            param = next(net.parameters())
            was = net.training
            net.eval()
            x = torch.zeros(2, 3, self._image_size, self._image_size, device=param.device)
            f = tap(net, x, self._peer_request(k))
            net.train(was)
            specs.append(
                FeatureSpec(
                    names=tuple(tap.names),
                    maps={n: tuple(v.shape[1:]) for n, v in f.maps.items()},
                    logits=tuple(f.logits.shape[1:]),
                )
            )
        return specs

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        specs = [student] + self._peer_specs()
        for k, spec in enumerate(specs[1:], 1):
            if spec.logits != student.logits:
                raise ValueError(
                    f"dml peer {k} predicts {spec.logits} classes but the student {student.logits}: peers need the "
                    "student's label set."
                )
        if not self.ie:
            return
        chans = []
        for k, (spec, layer) in enumerate(zip(specs, self.layer_per_network)):
            who = "student" if k == 0 else f"peer {k}"
            check_conv_maps(spec, [layer], who, "dml", "--dml-student-layers")
            chans.append(spec.maps[layer][0])
        if min(chans) < 2:
            raise ValueError(
                f"dml ie splits each map into two channel groups, but a map has {min(chans)} channel."
            )
        c_factor = max(1, int(self.rate * min(chans)))
        coder = partial(ConvCoder, batch_norm=True, bias=False, leading_activation=True, he_init=True)

        def parts(c: int) -> tuple[nn.Module, nn.Module, nn.Module]:
            return (
                AutoEncoder(coder(c, c_factor), coder(c_factor, c)),
                coder(c // 2, c_factor),
                coder(c - c // 2, c_factor),
            )

        built = [parts(c) for c in (chans[:1] if self.same_init else chans)]
        if self.same_init:
            built += [copy.deepcopy(built[0]) for _ in chans[1:]]
        self.ae = nn.ModuleList(b[0] for b in built)
        self.inh_encoder = nn.ModuleList(b[1] for b in built)
        self.exp_encoder = nn.ModuleList(b[2] for b in built)

    # -- the loss --------------------------------------------------------------------------------------------------
    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        if step.pixel_values is None:
            raise ValueError("dml runs its peers on the batch's images, but StepInfo.pixel_values is None.")
        peers = [f.float() for f in self.peer_features(step.pixel_values)]
        feats = [student, *peers]
        names = [""] + [f"peer{k}_" for k in range(1, len(feats))]
        terms: dict[str, Tensor] = {}
        kls = mutual_kl([f.logits for f in feats], self.temperature)
        for k, (prefix, f) in enumerate(zip(names, feats)):
            if k > 0:
                terms[f"{prefix}ce"] = F.cross_entropy(f.logits, step.labels)
            terms[f"{prefix}kl"] = kls[k]
            if self.teacher_weight > 0:
                terms[f"{prefix}kd"] = self.teacher_weight * kd_loss(
                    f.logits, teacher.logits.detach(), self.teacher_temperature
                )
        if self.ie:
            maps = [f.maps[layer] for f, layer in zip(feats, self.layer_per_network)]
            for prefix, ie_terms in zip(names, self._ie_terms(maps)):
                terms.update({f"{prefix}{k}": v for k, v in ie_terms.items()})
        return terms

    def _ie_terms(self, maps: list[Tensor]) -> list[dict[str, Tensor]]:
        """Per network: the inheritance/exploration terms against the others' factors and its reconstruction."""
        factors, recs = [], []
        for ae, f in zip(self.ae, maps):
            factor, rec = ae(f.detach())
            factors.append(factor.detach())
            recs.append(mean_pnorm(f.detach() - rec))
        out = []
        n = len(maps)
        for k, f in enumerate(maps):
            c = f.shape[1]
            f_inh, f_exp = self.inh_encoder[k](f[:, : c // 2]), self.exp_encoder[k](f[:, c // 2 :])
            pairs = [iekd_loss(factors[j], f_inh, f_exp, self.form, self.p) for j in range(n) if j != k]
            out.append(
                {
                    "inh": self.inh_weight * sum(a for a, _ in pairs) / (n - 1),
                    "exp": self.exp_weight * sum(b for _, b in pairs) / (n - 1),
                    "rec": recs[k],
                }
            )
        return out


register_preset(
    "dml_ie",
    Preset(
        methods=(("dml", 1.0),),
        ce_weight=1.0,
        kwargs={"dml": {"ie": True}},
        description="DML with IE-KD's inheritance/exploration split between the peers (CE 1 + KL 1 + inh 1 + exp 1)",
    ),
)

"""IE-KD: Huang, Shen, Xing, Liu, Tian, Li, Deng, Huang, Hua, "Revisiting Knowledge Distillation: An Inheritance
and Exploration Framework" (CVPR 2021, arXiv 2107.00181).

Follows the authors' release (aliyun/Revisiting-Knowledge-Distillation-an-Inheritance-and-Exploration-Framework:
``processors/IE_KD.py``, ``model/auto_encoder.py``, ``loss/factor_transfer.py``, ``loss/reconstruction.py``,
``config/ie_kd.yaml``). Note that the release swaps the names: its ``student`` is the paper's (frozen) teacher.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    DataInfo,
    FeatureNeeds,
    Features,
    FeatureSpec,
    InitStage,
    MapSelector,
    MethodNeeds,
    StepInfo,
)
from .factor import AutoEncoder, ConvCoder, mean_pnorm
from .maps import check_conv_maps, parse_layer_pair, pool_to_common_size
from .registry import Preset, register_method, register_preset
from .wrapped import WrappedMethod

__all__ = ["IEKD", "cosine_factor_loss", "iekd_loss", "normalized_distance"]

#: learning rate of the auto-encoder stage in the reference (``config/ie_kd.yaml``: ``lr_decayS: base 0.1``).
REFERENCE_INIT_LR = 0.1
_SPLITS = ("natural", "random")
_FORMS = ("norm", "cos")


def _flat_unit(x: Tensor) -> Tensor:
    return F.normalize(x.flatten(1), p=2, dim=1)


def normalized_distance(x: Tensor, y: Tensor, p: float = 1.0) -> Tensor:
    """``d_p(x, y) = (mean over all elements of |n(x) - n(y)|^p)^(1/p)``, n = per-sample L2 normalization of the
    flattened factor (the reference's ``NormLoss``/``FTLoss``).

    Args:
        x: (B, ...) factor.
        y: (B, ...) factor with the same number of elements per sample.
        p: order (1 = mean absolute difference).

    Returns:
        Scalar.
    """
    return mean_pnorm(_flat_unit(x) - _flat_unit(y), p)


def cosine_factor_loss(x: Tensor, y: Tensor, negative: bool = False) -> Tensor:
    """``mean_b (1 - cos(x_b, y_b))`` (similarity) or, with ``negative``, ``mean_b |cos(x_b, y_b)|`` (dis-similarity),
    cosines of the flattened per-sample factors (the reference's ``CosLoss``).

    Args:
        x: (B, ...) factor.
        y: (B, ...) factor.
        negative: the exploration (dis-similarity) form.

    Returns:
        Scalar.
    """
    cos = (_flat_unit(x) * _flat_unit(y)).sum(dim=1)
    return cos.abs().mean() if negative else (1.0 - cos).mean()


def iekd_loss(
    factor_t: Tensor, factor_inh: Tensor, factor_exp: Tensor, form: str = "norm", p: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Inheritance and exploration losses of IE-KD.

    ``form="norm"``: ``L_inh = d_p(F_T, F_I)`` and ``L_exp = -d_p(F_T, F_E)``; ``form="cos"``:
    ``L_inh = mean (1 - cos(F_T, F_I))`` and ``L_exp = mean |cos(F_T, F_E)|``. Factors of different spatial sizes
    are adaptive-average-pooled to the smaller size first.

    Args:
        factor_t: (B, K, Ht, Wt) the teacher's factor (frozen auto-encoder).
        factor_inh: (B, K, Hs, Ws) factor of the student's inheritance channels.
        factor_exp: (B, K, Hs, Ws) factor of the student's exploration channels.
        form: "norm" or "cos".
        p: order of d_p (form "norm").

    Returns:
        ``(L_inh, L_exp)`` scalars, unweighted.
    """
    if form not in _FORMS:
        raise ValueError(f"iekd form must be one of {', '.join(_FORMS)}, got {form!r}")
    t_i, s_i = pool_to_common_size(factor_t, factor_inh)
    t_e, s_e = pool_to_common_size(factor_t, factor_exp)
    if form == "norm":
        return normalized_distance(t_i, s_i, p), -normalized_distance(t_e, s_e, p)
    return cosine_factor_loss(t_i, s_i), cosine_factor_loss(t_e, s_e, negative=True)


@register_method("iekd")
class IEKD(WrappedMethod):
    """Inheritance and Exploration KD: half of the student's channels inherit the teacher's factor, half explore.

    Features: the last feature map of both networks (before pooling). Parts:

    * teacher-side auto-encoder (``teacher_ae``): encoder ``C_t -> K`` and decoder ``K -> C_t``, each the reference's
      ``Coder`` (LeakyReLU(0.1), then three 3x3 convs ``cin -> cin -> cout -> cout`` each with BN and LeakyReLU(0.1),
      no bias, He-normal init); ``K = int(C_t * rate)`` (32 for 64-channel CIFAR resnets, as ``ie_kd.yaml``);
    * student split: the student map's channels in the order of the buffer ``channel_order`` (``split="natural"``:
      0..C_s-1; ``"random"``: a permutation drawn once in :meth:`setup` from the run's seeded RNG, checkpointed so a
      resume restores it); the first ``C_s // 2`` are the inheritance part, the rest the exploration part;
    * ``inh_encoder`` (``C_s//2 -> K``) and ``exp_encoder`` (``C_s - C_s//2 -> K``): Coders trained with the
      student (the reference trains full auto-encoders there but only uses their encoders).

    Init stage (``init_epochs`` = 30, SGD lr 0.1 as the reference's ``num_epoch_embedS``/``lr_decayS``): the
    auto-encoder alone learns to reconstruct the frozen teacher's map, ``L_rec = (mean |f_t - dec(enc(f_t))|^rec_p)
    ^(1/rec_p)``, rec_p=1. Then it is frozen: no gradients, eval mode kept (BN statistics fixed) although the trainer
    calls ``.train()``, not in the main optimizer, checkpointed with its ``frozen`` flag (re-applied on resume).

    Main loss, with ``F_T = enc_T(f_t)``, ``F_I = enc_I(f_s[:, inh])``, ``F_E = enc_E(f_s[:, exp])``:
    ``inh_weight * L_inh(F_T, F_I) + exp_weight * L_exp(F_T, F_E)`` (see :func:`iekd_loss`; ``form="norm"``,
    p=1 and both weights 1 as ``ie_kd.yaml``; the paper's exact loss pair is not in the released configs, so the
    FT-style distance with its negation is the default and ``form="cos"`` the alternative). The method's weight is
    1 and the CE weight 1 (the reference: ``CE + w_inh L_inh + w_exp L_exp``).

    Spatial mismatch (e.g. resnet32x4 8x8 vs ShuffleNetV2 4x4): the factors keep their map's size and the larger
    one is adaptive-average-pooled to the smaller before the comparison (as FT); channels meet through the
    encoders.

    Composition (the paper combines IE with KD/AT/FT): ``base`` names a registered method that is wrapped as
    ``base_method`` (:class:`~hf_distill.methods.wrapped.WrappedMethod`) with ``base_kwargs``: its needs are merged
    into this method's, its layers resolved and its parts built with this method's, and its terms returned as
    ``base_<term>`` times
    ``base_weight`` (default: the base's ``combo_weight``, else its ``default_weight``: kd 1, ft 200), so the
    objective logs e.g. ``iekd_base_kd``. A base with its own init stage (ft) is merged into this one: the stage
    lasts the longer of the two, its loss is the sum of both stage losses (each part only while its own epochs
    last), ``train_student`` is the base's, and the learning rate is ``init_learning_rate`` or, when None, the lower
    of 0.1 and the base's stage rate; at its end both parts are frozen.

    Args:
        form: "norm" (d_p similarity / -d_p) or "cos" (1 - cos / |cos|).
        p: order of d_p.
        split: "natural" (first half inherits) or "random" (fixed random permutation).
        rate: factor channels as a fraction of the teacher's channels (0.5).
        inh_weight: weight of the inheritance loss (1).
        exp_weight: weight of the exploration loss (1).
        rec_p: order of the reconstruction loss of the init stage (1).
        init_epochs: length of the auto-encoder stage (30).
        init_learning_rate: SGD rate of the stage (None: 0.1, or the base stage's rate when lower).
        student_layers: the student map to split (one selector, "last").
        teacher_layers: the teacher map to encode (one selector; empty: the student's, i.e. "last").
        base: None, or a method to combine with ("kd", "at", "ft", ...).
        base_kwargs: hyperparameters of the base method.
        base_weight: weight of the base's terms inside this method (None: the base's combo/default weight).
    """

    summary = "Inheritance & Exploration: half the student's channels mimic the teacher's auto-encoded factor, half avoid it"
    paper = (
        "Huang et al., Revisiting Knowledge Distillation: An Inheritance and Exploration Framework, CVPR 2021"
    )
    citation = (
        "@inproceedings{huang2021revisiting,\n  title={Revisiting Knowledge Distillation: An Inheritance and "
        "Exploration Framework},\n  author={Huang, Zhen and Shen, Xu and Xing, Jun and Liu, Tongliang and Tian, "
        "Xinmei and Li, Houqiang and Deng, Bing and Huang, Jianqiang and Hua, Xian-Sheng},\n  booktitle={Proceedings "
        "of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n  pages={3579--3588},\n  year={2021}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    renamed_hyperparameters = {"student_layer": "student_layers", "teacher_layer": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "last"}

    def __init__(
        self,
        form: str = "norm",
        p: float = 1.0,
        split: str = "natural",
        rate: float = 0.5,
        inh_weight: float = 1.0,
        exp_weight: float = 1.0,
        rec_p: float = 1.0,
        init_epochs: float = 30.0,
        init_learning_rate: float | None = None,
        student_layers: MapSelector = "last",
        teacher_layers: MapSelector | None = "",
        base: str | None = None,
        base_kwargs: dict[str, Any] | None = None,
        base_weight: float | None = None,
    ) -> None:
        super().__init__()
        if form not in _FORMS:
            raise ValueError(f"iekd form must be one of {', '.join(_FORMS)}, got {form!r}")
        if split not in _SPLITS:
            raise ValueError(f"iekd split must be one of {', '.join(_SPLITS)}, got {split!r}")
        if p <= 0 or rec_p <= 0:
            raise ValueError(f"iekd p and rec_p must be > 0, got p={p}, rec_p={rec_p}")
        if not 0 < rate <= 1:
            raise ValueError(f"iekd rate (factor channels / teacher channels) must be in (0, 1], got {rate}")
        if inh_weight < 0 or exp_weight < 0:
            raise ValueError(
                f"iekd weights must be >= 0, got inh_weight={inh_weight}, exp_weight={exp_weight}"
            )
        if init_epochs <= 0:
            raise ValueError(
                f"iekd init_epochs must be > 0 (the auto-encoder must be trained before it is used), got {init_epochs}"
            )
        if init_learning_rate is not None and init_learning_rate <= 0:
            raise ValueError(f"iekd init_learning_rate must be > 0 or None, got {init_learning_rate}")
        self.form = form
        self.p = float(p)
        self.split = split
        self.rate = float(rate)
        self.inh_weight = float(inh_weight)
        self.exp_weight = float(exp_weight)
        self.rec_p = float(rec_p)
        self.init_epochs = float(init_epochs)
        self.init_learning_rate = None if init_learning_rate is None else float(init_learning_rate)
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        (self._s_sel,), (self._t_sel,) = parse_layer_pair(student_layers, teacher_layers, "iekd", single=True)
        self.ie_student_layer = ""
        self.ie_teacher_layer = ""

        if base_weight is not None and base_weight < 0:
            raise ValueError(f"iekd base_weight must be >= 0, got {base_weight}")
        method = self.wrap(base, base_kwargs)
        if method is None and base_weight is not None:
            raise ValueError("iekd base_weight was given without a base method (--iekd-base kd|at|ft).")
        self.base_weight: float | None = None
        base_stage: InitStage | None = None
        if method is not None:
            cls = type(method)
            self.base_weight = float(
                base_weight
                if base_weight is not None
                else (cls.combo_weight if cls.combo_weight is not None else cls.default_weight)
            )
            base_stage = method.init_stage

        lr = self.init_learning_rate
        if lr is None:
            lr = REFERENCE_INIT_LR
            if base_stage is not None and base_stage.learning_rate is not None:
                lr = min(lr, base_stage.learning_rate)
        self._base_stage = base_stage
        self.init_stage = InitStage(
            epochs=max(self.init_epochs, base_stage.epochs if base_stage is not None else 0.0),
            learning_rate=lr,
            train_student=bool(base_stage is not None and base_stage.train_student),
        )

    # -- declaration -------------------------------------------------------------------------------------------
    def own_needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(maps=(self._s_sel,)), teacher=FeatureNeeds(maps=(self._t_sel,))
        )

    def resolve_layers(self, student_names: Sequence[str], teacher_names: Sequence[str]) -> None:
        """Resolve this method's layer and the base's; ``student_layer_names``/``teacher_layer_names`` hold their union."""
        super().resolve_layers(student_names, teacher_names)
        # WrappedMethod resolved our own selectors (``"auto"`` included: the pair auto pairing chose)
        self.ie_student_layer = self.own_student_layer_names[0]
        self.ie_teacher_layer = self.own_teacher_layer_names[0]

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        check_conv_maps(student, [self.ie_student_layer], "student", "iekd", "--iekd-student-layers")
        check_conv_maps(teacher, [self.ie_teacher_layer], "teacher", "iekd", "--iekd-teacher-layers")
        s_shape = tuple(student.maps[self.ie_student_layer])
        t_shape = tuple(teacher.maps[self.ie_teacher_layer])
        c_s, c_t = s_shape[0], t_shape[0]
        if c_s < 2:
            raise ValueError(
                f"iekd splits the student's map into two channel groups, but layer {self.ie_student_layer!r} has "
                f"{c_s} channel; pick another layer with --iekd-student-layers."
            )
        c_factor = int(c_t * self.rate)
        if c_factor < 1:
            raise ValueError(
                f"iekd rate {self.rate} gives no factor channel for the teacher's {c_t} channels; raise --iekd-rate."
            )
        # Drawn once, from the RNG the trainer seeds before setup (identical on every process); a buffer so that
        # every checkpoint carries it and a resume restores it.
        order = torch.randperm(c_s) if self.split == "random" else torch.arange(c_s)
        self.register_buffer("channel_order", order)
        n_inh = c_s // 2
        coder = partial(ConvCoder, batch_norm=True, bias=False, leading_activation=True, he_init=True)
        self.teacher_ae = AutoEncoder(coder(c_t, c_factor), coder(c_factor, c_t))
        self.inh_encoder = coder(n_inh, c_factor)
        self.exp_encoder = coder(c_s - n_inh, c_factor)

    # -- the loss ------------------------------------------------------------------------------------------------
    def split_channels(self, f_s: Tensor) -> tuple[Tensor, Tensor]:
        """The (inheritance, exploration) channel groups of the student map ``f_s`` (B, C_s, H, W)."""
        n_inh = self.channel_order.numel() // 2
        return f_s.index_select(1, self.channel_order[:n_inh]), f_s.index_select(
            1, self.channel_order[n_inh:]
        )

    def teacher_factor(self, teacher: Features) -> Tensor:
        """The frozen auto-encoder's factor of the teacher map (never trained by the main loss)."""
        with torch.no_grad():
            return self.teacher_ae.encode(teacher.maps[self.ie_teacher_layer])

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        inh_part, exp_part = self.split_channels(student.maps[self.ie_student_layer])
        l_inh, l_exp = iekd_loss(
            self.teacher_factor(teacher),
            self.inh_encoder(inh_part),
            self.exp_encoder(exp_part),
            self.form,
            self.p,
        )
        terms = {"iekd_inh": self.inh_weight * l_inh, "iekd_exp": self.exp_weight * l_exp}
        if self.base_method is not None:
            terms.update(self.base_terms(student, teacher, step, prefix="base_", weight=self.base_weight))
        return terms

    # -- initialization stage ------------------------------------------------------------------------------------
    def _part_active(self, part_epochs: float, step: StepInfo) -> bool:
        # The merged stage lasts max(epochs); the shorter part stops when its own epochs are over.
        return part_epochs >= self.init_stage.epochs or step.epoch < part_epochs

    def init_stage_loss(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        """Reconstruction loss of the teacher-side auto-encoder, plus the base's stage loss (``base_<term>``)."""
        terms: dict[str, Tensor] = {}
        if self._part_active(self.init_epochs, step):
            f_t = teacher.maps[self.ie_teacher_layer]
            _, rec = self.teacher_ae(f_t)
            terms["rec"] = mean_pnorm(f_t - rec, self.rec_p)
        if self._base_stage is not None and self._part_active(self._base_stage.epochs, step):
            for k, v in self.base_method.init_stage_loss(student, teacher, step).items():
                terms[f"base_{k}"] = v
        return terms

    def on_init_stage_end(self) -> None:
        self.teacher_ae.freeze()
        if self._base_stage is not None:
            self.base_method.on_init_stage_end()


register_preset(
    "iekd_kd",
    Preset(
        methods=(("iekd", 1.0),),
        ce_weight=1.0,
        kwargs={"iekd": {"base": "kd"}},
        description="IE-KD combined with KD: CE 1 + inheritance 1 + exploration 1 + KD (T=4) 1",
    ),
)

"""FT: Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer" (NeurIPS 2018).

Follows the Factor Transfer distiller of RepDistiller (the CRD benchmark): ``distiller_zoo/FT.py``,
``models/util.py`` (Paraphraser, Translator) and ``helper/pretrain.py`` (the initialization stage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import (
    DataInfo,
    DistillationMethod,
    FeatureNeeds,
    Features,
    FeatureSpec,
    InitStage,
    MapSelector,
    MethodNeeds,
    StepInfo,
)
from .factor import AutoEncoder, ConvCoder
from .maps import check_conv_maps, parse_layer_pair, pool_to_common_size
from .registry import register_method

__all__ = ["FT", "ft_factor", "ft_loss"]


def ft_factor(factor: Tensor, p1: float = 2.0) -> Tensor:
    """The spatial "factor" vector that FT compares: ``normalize(mean_c |f|^p1)`` flattened, per sample.

    Args:
        factor: (B, C, H, W) factor map (output of the paraphraser's encoder or of the translator).
        p1: exponent of the channel pooling (RepDistiller ``p1=2``).

    Returns:
        (B, H*W), each row of unit L2 norm.
    """
    # |f|^p1 rather than f^p1: equal for the default p1=2, and defined for non-integer p1 (factors can be negative
    # after the LeakyReLU).
    return F.normalize(factor.abs().pow(p1).mean(dim=1).flatten(1), p=2, dim=1)


def ft_loss(factor_s: Tensor, factor_t: Tensor, p1: float = 2.0, p2: float = 1.0) -> Tensor:
    """Factor-transfer loss: ``mean |ft_factor(F_s) - ft_factor(F_t)|^p2`` (p2=1: the L1 loss of the paper).

    Maps of different spatial sizes are first adaptive-average-pooled to the smaller size (as RepDistiller).

    Args:
        factor_s: (B, C, Hs, Ws) the student's translated factor.
        factor_t: (B, C', Ht, Wt) the teacher's paraphrased factor.
        p1: channel-pooling exponent.
        p2: exponent of the distance (RepDistiller uses ``|d|`` for p2=1 and ``d^p2`` otherwise; here ``|d|^p2``,
            identical for p2=1 and even p2).

    Returns:
        Scalar loss.
    """
    factor_s, factor_t = pool_to_common_size(factor_s, factor_t)
    diff = ft_factor(factor_s, p1) - ft_factor(factor_t, p1)
    return diff.abs().pow(p2).mean()


@register_method("ft")
class FT(DistillationMethod):
    """Factor Transfer: the student's translated factor imitates the teacher's paraphrased factor.

    ``L_FT = mean | n(mean_c |T(f_s)|^p1) - n(mean_c |P_enc(f_t)|^p1) |^p2`` with n = per-sample L2 normalization of
    the flattened (H*W) map, T = translator (student side, trained with the student), P = paraphraser (teacher-side
    auto-encoder, trained beforehand and frozen), f_s/f_t = the last feature maps (RepDistiller ``feat[-2]``).

    Two stages, as RepDistiller:

    1. init stage (``init_epochs`` = 30, SGD at ``init_learning_rate`` = 0.01): only the paraphraser trains, on the
       frozen teacher's map, with the MSE reconstruction loss ``mean (P_dec(P_enc(f_t)) - f_t)^2``. RepDistiller
       (``helper/pretrain.py``) uses lr 0.01 for resnet/wrn students and the main learning rate otherwise, which
       is 0.01 for MobileNetV2/ShuffleNet students and 0.05 for VGG students; ``init_learning_rate=None`` uses the
       main run's rate.
    2. main stage: the paraphraser is frozen (no gradients, eval mode kept although the trainer calls ``.train()``,
       not in the optimizer because ``requires_grad`` is False; the freeze is checkpointed and re-applied on
       resume); the translator trains with the student. Loss weight ``default_weight=200`` and CE weight 1
       (RepDistiller ``-r 1 -a 0 -b 200``).

    Modules (RepDistiller ``models/util.py``, rate k=0.5, factor channels ``int(C_t * rate)``): the paraphraser
    encoder = three 3x3 convs ``C_t -> C_t -> k -> k`` each followed by LeakyReLU(0.1), no BN (RepDistiller builds
    it with ``use_bn=False``); its decoder = three 3x3 transposed convs ``k -> k -> C_t -> C_t``; the translator =
    three 3x3 convs ``C_s -> C_s -> k -> k`` each followed by BN and LeakyReLU(0.1). Spatial sizes are preserved.

    Mixed shapes: channels are reconciled by the translator; when the student's and the teacher's maps differ in
    size (e.g. resnet32x4 8x8 vs ShuffleNetV2 4x4), the larger factor is adaptive-average-pooled to the smaller
    size before the comparison (RepDistiller does this too; here height and width are matched independently).

    Args:
        p1: channel-pooling exponent of the factor (2).
        p2: exponent of the factor distance (1 = L1).
        rate: factor channels as a fraction of the teacher's channels (RepDistiller ``k=0.5``).
        init_epochs: length of the paraphraser's initialization stage (RepDistiller ``--init_epochs 30``).
        init_learning_rate: SGD learning rate of that stage (0.01; None = the main run's rate).
        student_layers: the student map to translate (one selector; "last" = RepDistiller ``feat[-2]``).
        teacher_layers: the teacher map to paraphrase (one selector; empty: the student's, i.e. "last").
    """

    summary = (
        "Factor Transfer: student translator's factor matches the frozen teacher paraphraser's factor (L1)"
    )
    paper = (
        "Kim, Park, Kwak, Paraphrasing Complex Network: Network Compression via Factor Transfer, NeurIPS 2018"
    )
    citation = (
        "@inproceedings{kim2018paraphrasing,\n  title={Paraphrasing Complex Network: Network Compression via Factor "
        "Transfer},\n  author={Kim, Jangho and Park, SeongUk and Kwak, Nojun},\n  booktitle={Advances in Neural "
        "Information Processing Systems (NeurIPS)},\n  year={2018}\n}"
    )
    default_weight = 200.0
    default_ce_weight = 1.0
    renamed_hyperparameters = {"student_layer": "student_layers", "teacher_layer": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "last"}

    def __init__(
        self,
        p1: float = 2.0,
        p2: float = 1.0,
        rate: float = 0.5,
        init_epochs: float = 30.0,
        init_learning_rate: float | None = 0.01,
        student_layers: MapSelector = "last",
        teacher_layers: MapSelector | None = "",
    ) -> None:
        super().__init__()
        if p1 <= 0 or p2 <= 0:
            raise ValueError(f"ft exponents p1 and p2 must be > 0, got p1={p1}, p2={p2}")
        if not 0 < rate <= 1:
            raise ValueError(f"ft rate (factor channels / teacher channels) must be in (0, 1], got {rate}")
        if init_epochs <= 0:
            raise ValueError(
                f"ft init_epochs must be > 0 (the paraphraser must be trained before it is used), got {init_epochs}"
            )
        if init_learning_rate is not None and init_learning_rate <= 0:
            raise ValueError(f"ft init_learning_rate must be > 0 or None, got {init_learning_rate}")
        self.p1 = float(p1)
        self.p2 = float(p2)
        self.rate = float(rate)
        self.init_epochs = float(init_epochs)
        self.init_learning_rate = None if init_learning_rate is None else float(init_learning_rate)
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        (self._s_sel,), (self._t_sel,) = parse_layer_pair(student_layers, teacher_layers, "ft", single=True)
        self.init_stage = InitStage(
            epochs=self.init_epochs, learning_rate=self.init_learning_rate, train_student=False
        )

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(maps=(self._s_sel,)), teacher=FeatureNeeds(maps=(self._t_sel,))
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        s_name, t_name = self.student_layer_names[0], self.teacher_layer_names[0]
        check_conv_maps(student, [s_name], "student", "ft", "--ft-student-layers")
        check_conv_maps(teacher, [t_name], "teacher", "ft", "--ft-teacher-layers")
        s_shape, t_shape = tuple(student.maps[s_name]), tuple(teacher.maps[t_name])
        c_factor = int(t_shape[0] * self.rate)
        if c_factor < 1:
            raise ValueError(
                f"ft rate {self.rate} gives no factor channel for the teacher's {t_shape[0]} channels; raise --ft-rate."
            )
        self.paraphraser = AutoEncoder(
            ConvCoder(t_shape[0], c_factor, batch_norm=False, bias=True),
            ConvCoder(c_factor, t_shape[0], batch_norm=False, bias=True, transpose=True),
        )
        self.translator = ConvCoder(s_shape[0], c_factor, batch_norm=True, bias=True)

    def teacher_factor(self, teacher: Features) -> Tensor:
        """The frozen paraphraser's factor of the teacher map (no gradient: it is never trained here)."""
        with torch.no_grad():
            return self.paraphraser.encode(teacher.maps[self.teacher_layer_names[0]])

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        factor_s = self.translator(student.maps[self.student_layer_names[0]])
        return {"ft": ft_loss(factor_s, self.teacher_factor(teacher), self.p1, self.p2)}

    def init_stage_loss(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        """MSE reconstruction of the teacher's map by the paraphraser (RepDistiller ``nn.MSELoss``)."""
        f_t = teacher.maps[self.teacher_layer_names[0]]
        _, rec = self.paraphraser(f_t)
        return {"rec": F.mse_loss(rec, f_t)}

    def on_init_stage_end(self) -> None:
        self.paraphraser.freeze()

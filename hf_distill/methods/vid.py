"""VID: Ahn et al., "Variational Information Distillation for Knowledge Transfer" (CVPR 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from .maps import PairedMaps, check_layer_reduction, pool_to_common_size, reduce_layers
from .pairing import describe_module
from .registry import register_method


def vid_nll(pred_mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Gaussian negative log-likelihood (without the constant): ``mean 0.5 * ((t - mu)^2 / var + log var)``.

    Args:
        pred_mean: (B, C, H, W) predicted mean of the teacher's map.
        target: (B, C, H, W) the teacher's map.
        variance: (C,) per-channel variance (> 0), shared over positions and samples.

    Returns:
        Scalar, averaged over every element.
    """
    var = variance.view(1, -1, 1, 1)
    return (0.5 * ((pred_mean - target).pow(2) / var + var.log())).mean()


class VIDHead(nn.Module):
    """Predicts the mean of a teacher map from a student map, with a learned per-channel variance.

    ``mean = conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1`` (no biases), ``var = softplus(log_scale) + eps``, with
    ``log_scale`` initialized so that the variance starts at ``init_pred_var`` (RepDistiller ``VIDLoss``).

    Args:
        in_channels: student channels.
        mid_channels: hidden channels (RepDistiller: the teacher's channels).
        out_channels: teacher channels.
        init_pred_var: initial variance.
        eps: variance floor.
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float, eps: float
    ) -> None:
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False),
        )
        # softplus^-1(init_pred_var - eps), so that softplus(log_scale) + eps == init_pred_var at the start
        init = math.log(math.expm1(init_pred_var - eps))
        self.log_scale = nn.Parameter(torch.full((out_channels,), init))
        self.eps = eps

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        f_s, f_t = pool_to_common_size(f_s, f_t)
        return vid_nll(self.regressor(f_s), f_t, self.variance())


@register_method("vid")
class VID(PairedMaps, DistillationMethod):
    """Variational Information Distillation: maximize a variational lower bound of the mutual information between
    paired student and teacher maps, i.e. minimize the Gaussian negative log-likelihood of the teacher's map under a
    mean predicted from the student's map.

    Per pair: ``mu = r(f_s)`` (trainable 1x1-conv regressor, hidden width = teacher channels),
    ``var_c = softplus(log_scale_c) + eps`` (trainable, per teacher channel), and
    ``L = mean_{b,c,h,w} 0.5 * ((f_t - mu)^2 / var_c + log var_c)``; the pairs are summed (RepDistiller
    ``sum(loss_group)``; ``layer_reduction="mean"`` averages). Features: the intermediate stage maps (``"stages"`` =
    RepDistiller ``feat[1:-1]``), paired in order; where a pair's spatial sizes differ the larger map is
    adaptive-average-pooled to the smaller size before the regressor (RepDistiller).

    Defaults (RepDistiller ``--distill vid``: ``-r 1 -a 0 -b 1``, ``VIDLoss(s_C, t_C, t_C)``,
    ``init_pred_var=5.0``, ``eps=1e-5``): weight 1, CE weight 1. The loss can be negative (log variance).

    Args:
        student_layers: student map selectors (a selector or comma list).
        teacher_layers: teacher map selectors, paired in order (empty: the student's selectors).
        init_pred_var: initial variance of every channel.
        eps: variance floor.
        layer_reduction: ``"sum"`` (RepDistiller) or ``"mean"`` over the pairs.
    """

    summary = "Gaussian log-likelihood of the teacher's stage maps under a regressor of the student's (learned variance)"
    paper = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    citation = (
        "@inproceedings{ahn2019variational,\n  title={Variational Information Distillation for Knowledge Transfer},\n"
        "  author={Ahn, Sungsoo and Hu, Shell Xu and Damianou, Andreas and Lawrence, Neil D. and Dai, Zhenwen},\n"
        "  booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},\n  year={2019}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    renamed_hyperparameters = {"student_maps": "student_layers", "teacher_maps": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "stages"}

    def __init__(
        self,
        student_layers: str = "stages",
        teacher_layers: str = "",
        init_pred_var: float = 5.0,
        eps: float = 1e-5,
        layer_reduction: str = "sum",
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"vid eps must be > 0, got {eps}")
        if init_pred_var <= eps:
            raise ValueError(f"vid init_pred_var must be > eps ({eps}), got {init_pred_var}")
        check_layer_reduction(layer_reduction, "vid")
        self.init_pred_var = float(init_pred_var)
        self.eps = float(eps)
        self.layer_reduction = layer_reduction
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        heads = []
        for s_name, t_name in zip(self.student_layer_names, self.teacher_layer_names):
            s_c, t_c = student.maps[s_name][0], teacher.maps[t_name][0]
            heads.append(VIDHead(s_c, t_c, t_c, self.init_pred_var, self.eps))
        self.heads = nn.ModuleList(heads)

    def pair_connector(self, index: int) -> str:
        return f"mean regressor {describe_module(self.heads[index].regressor)}, learned variance"

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = student.map_list(self.student_layer_names)
        t = teacher.map_list(self.teacher_layer_names)
        losses = [head(f_s, f_t) for head, f_s, f_t in zip(self.heads, s, t, strict=True)]
        return {"vid": reduce_layers(losses, self.layer_reduction)}

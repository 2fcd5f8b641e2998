"""FitNet: Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    DataInfo,
    DistillationMethod,
    FeatureNeeds,
    Features,
    FeatureSpec,
    InitStage,
    MethodNeeds,
    StepInfo,
)
from .maps import check_conv_maps, parse_layer_pair
from .pairing import describe_module
from .registry import register_method


class HintRegressor(nn.Module):
    """Maps the student's guided-layer map onto the teacher's hint-layer map: conv -> BN -> ReLU.

    The convolution is chosen from the two spatial sizes as in RepDistiller's ``ConvReg``:

    * student twice as large: 3x3 conv, stride 2, padding 1;
    * student half as large: 4x4 transposed conv, stride 2, padding 1 (doubles the size);
    * student at least as large otherwise: a "valid" conv with kernel ``(1+H_s-H_t, 1+W_s-W_t)`` (1x1 when equal);
    * any other case (student smaller by a factor other than 2, where RepDistiller raises): 3x3 conv, padding 1,
      then bilinear upsampling to the teacher's size [our extension].

    Args:
        s_shape: student map shape (C, H, W).
        t_shape: teacher map shape (C, H, W).
        use_relu: end with ReLU (RepDistiller's FitNet does; the teacher's map is post-ReLU).
    """

    def __init__(self, s_shape: tuple[int, ...], t_shape: tuple[int, ...], use_relu: bool = True) -> None:
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        self.out_size = (t_h, t_w)
        self.resize = False
        if s_h == 2 * t_h and s_w == 2 * t_w:
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h and 2 * s_w == t_w:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h and s_w >= t_w:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1)
            self.resize = True
        self.bn = nn.BatchNorm2d(t_c)
        self.use_relu = use_relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.resize:
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        x = self.bn(x)
        return F.relu(x) if self.use_relu else x


def hint_loss(regressed_student: Tensor, teacher_map: Tensor) -> Tensor:
    """FitNets hint loss: mean squared error over every element (RepDistiller ``nn.MSELoss()``).

    Args:
        regressed_student: the regressor's output (B, C_t, H_t, W_t).
        teacher_map: the teacher's hint map, same shape.

    Returns:
        Scalar loss.
    """
    if regressed_student.shape != teacher_map.shape:
        raise ValueError(
            f"FitNet regressor output {tuple(regressed_student.shape)} does not match the teacher hint map "
            f"{tuple(teacher_map.shape)}"
        )
    return (regressed_student - teacher_map).pow(2).mean()


@register_method("fitnet")
class FitNet(DistillationMethod):
    """FitNets hint learning: regress the teacher's intermediate ("hint") map from the student's ("guided") map.

    ``L = mean (r(f_s) - f_t)^2`` where ``r`` is a trainable :class:`HintRegressor` (conv -> BN -> ReLU, RepDistiller
    ``ConvReg``, optimized with the student) and ``f_s``, ``f_t`` are the maps at position ``student_layers`` /
    ``teacher_layers`` of the networks' map lists ``[stem, stage1, stage2, ...]`` (RepDistiller ``feat[hint_layer]``).

    Defaults (RepDistiller ``--distill hint``: ``-r 1 -a 0 -b 100 --hint_layer 2``): hint layer 2 (the output of the
    second stage) on both sides, weight 100, CE weight 1, single stage: the hint loss is simply added to CE for the
    whole run, as in RepDistiller (which has no FitNet init stage). ``init_epochs > 0`` adds the original paper's
    first stage: for that many epochs only the hint loss is optimized, over the regressor and the student's layers up
    to the guided layer (``InitStage(train_student=True)``), then the main run (CE + weight * hint) follows; the
    paper's stage 2 uses KD instead, which is available as ``--method fitnet,kd``.

    Args:
        student_layers: the student's (guided) map: a position in ``[stem, stage1, ...]`` (int, or an integer
            string such as ``"2"``) or a layer name. Default 2.
        teacher_layers: the teacher's (hint) map; empty = the same selector as ``student_layers``.
        init_epochs: epochs of the optional hint-only first stage (0 = none, RepDistiller).
        init_learning_rate: learning rate of that stage (None = the main run's).
    """

    summary = "MSE between a conv regressor of the student's intermediate map and the teacher's map (hint)"
    paper = "Romero et al., FitNets: Hints for Thin Deep Nets, ICLR 2015"
    citation = (
        "@inproceedings{romero2015fitnets,\n  title={FitNets: Hints for Thin Deep Nets},\n"
        "  author={Romero, Adriana and Ballas, Nicolas and Kahou, Samira Ebrahimi and Chassang, Antoine and "
        "Gatta, Carlo and Bengio, Yoshua},\n"
        "  booktitle={International Conference on Learning Representations (ICLR)},\n  year={2015}\n}"
    )
    default_weight = 100.0
    default_ce_weight = 1.0
    resize_note = "the regressor's convolution resamples the student's map to the teacher's size"
    renamed_hyperparameters = {"guided_layer": "student_layers", "hint_layer": "teacher_layers"}
    legacy_defaults = {"teacher_layers": "2"}

    def __init__(
        self,
        student_layers: int | str = "2",
        teacher_layers: int | str | None = "",
        init_epochs: float = 0.0,
        init_learning_rate: float | None = None,
    ) -> None:
        super().__init__()
        (self._s_sel,), (self._t_sel,) = parse_layer_pair(
            student_layers, teacher_layers, "fitnet", single=True
        )
        if init_epochs < 0:
            raise ValueError(f"fitnet init_epochs must be >= 0, got {init_epochs}")
        if init_learning_rate is not None and init_learning_rate <= 0:
            raise ValueError(f"fitnet init_learning_rate must be > 0, got {init_learning_rate}")
        # stored parsed (the int position 2, not the string "2"); the signature default is a string so that the
        # command line accepts a layer name as well as a position (--fitnet-student-layers stage3 / 3)
        self.student_layers = self._s_sel
        self.teacher_layers = "" if teacher_layers is None or teacher_layers == "" else self._t_sel
        self.init_epochs = float(init_epochs)
        self.init_learning_rate = init_learning_rate
        self.init_stage = (
            InitStage(epochs=self.init_epochs, learning_rate=init_learning_rate, train_student=True)
            if self.init_epochs > 0
            else None
        )

    @classmethod
    def upgrade_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Also keep the old default of the guided (student) layer: the hint (teacher) layer."""
        out = super().upgrade_kwargs(kwargs)
        if {"hint_layer", "guided_layer"} & set(kwargs) and out.get("student_layers") in (None, ""):
            out["student_layers"] = out["teacher_layers"]
        return out

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(maps=(self._s_sel,), token_maps=True),
            teacher=FeatureNeeds(maps=(self._t_sel,), token_maps=True),
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        (s_name,), (t_name,) = self.student_layer_names, self.teacher_layer_names
        check_conv_maps(student, [s_name], "student", "fitnet", "--fitnet-student-layers")
        check_conv_maps(
            teacher, [t_name], "teacher", "fitnet", "--fitnet-teacher-layers (default: the student's)"
        )
        self.regressor = HintRegressor(student.maps[s_name], teacher.maps[t_name])

    def pair_connector(self, index: int) -> str:
        resize = "; bilinear resize to the teacher's size" if self.regressor.resize else ""
        return f"hint regressor {describe_module(self.regressor)}{resize}"

    def _loss(self, student: Features, teacher: Features) -> Tensor:
        (f_s,) = student.map_list(self.student_layer_names)
        (f_t,) = teacher.map_list(self.teacher_layer_names)
        return hint_loss(self.regressor(f_s), f_t)

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        return {"fitnet": self._loss(student, teacher)}

    def init_stage_loss(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        """Stage 1 of the original FitNets: the hint loss alone (student up to the guided layer + regressor)."""
        return {"fitnet": self._loss(student, teacher)}

"""KD: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (2015)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import DistillationMethod, FeatureNeeds, Features, MethodNeeds, StepInfo
from .logit_standardization import maybe_standardize, resolve_temperature
from .registry import register_method


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 4.0) -> Tensor:
    """KL(softmax(t/T) || softmax(s/T)) summed over classes, averaged over the batch, times T^2.

    The T^2 factor keeps the gradient scale independent of T (Hinton et al., section 2). ``temperature`` may be a
    (B, 1) tensor of per-sample temperatures; then each sample's KL is scaled by its own T^2.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
        temperature: scalar or (B, 1).

    Returns:
        Scalar loss.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1, keepdim=True)
    return (kl * temperature**2).mean()


@register_method("kd")
class KD(DistillationMethod):
    """Hinton knowledge distillation on temperature-softened logits.

    Args:
        temperature: softmax temperature T (None: 4 as RepDistiller's ``--kd_T 4``, or 2 with
            ``logit_standardize``, the paper's base temperature).
        logit_standardize: z-score both networks' logits before the softmax (Sun et al., CVPR 2024; see
            :mod:`hf_distill.methods.logit_standardization`).
    """

    summary = "KL divergence of temperature-softened class probabilities"
    paper = "Hinton et al., Distilling the Knowledge in a Neural Network, NIPS-W 2015"
    citation = (
        "@article{hinton2015distilling,\n  title={Distilling the Knowledge in a Neural Network},\n"
        "  author={Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},\n  journal={arXiv:1503.02531},\n  year={2015}\n}"
    )
    default_weight = 0.9
    default_ce_weight = 0.1
    combo_weight = 1.0

    def __init__(self, temperature: float | None = None, logit_standardize: bool = False) -> None:
        super().__init__()
        self.logit_standardize = bool(logit_standardize)
        self.temperature = resolve_temperature(temperature, self.logit_standardize, "kd")

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(logits=True), teacher=FeatureNeeds(logits=True))

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        zs, zt = maybe_standardize(student.logits, teacher.logits, self.logit_standardize)
        return {"kd": kd_loss(zs, zt, self.temperature)}

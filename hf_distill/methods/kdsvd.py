"""KDSVD: Lee, Kim, Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition" (ECCV 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ab import CONNECTOR_MODES, paired_connectors
from .base import DataInfo, DistillationMethod, Features, FeatureSpec, StepInfo
from .maps import PairedMaps
from .registry import register_method

#: the RBF kernel's bandwidth: ``exp(-d^2 / 8)`` (the authors' and RepDistiller's constant)
RBF_DENOMINATOR = 8.0


def top_singular_vectors(fmap: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The ``n`` leading right singular vectors of every sample's (H*W, C) feature matrix, and its singular values.

    The decomposition itself runs without gradient; the returned vectors are one power-iteration step from it,
    ``v = normalize(X^T X v_svd)``: the same value (``v_svd`` is a fixed point), with a gradient that stays finite
    where singular values repeat (the exact SVD gradient divides by their differences; post-ReLU maps often have
    repeated zero singular values).

    Args:
        fmap: (B, C, H, W).
        n: vectors to keep (at most min(H*W, C); missing ones are zeros).

    Returns:
        ``(v, s)``: (B, C, n) unit vectors, columns in decreasing singular-value order, and (B, n) singular values
        scaled to unit L2 norm per sample (detached).
    """
    b, c = fmap.shape[:2]
    x = fmap.reshape(b, c, -1).transpose(1, 2)  # (B, HW, C)
    with torch.no_grad():
        # half precision has no SVD kernel: decompose in float32 then
        xd = x if x.dtype in (torch.float32, torch.float64) else x.float()
        _, s, vh = torch.linalg.svd(xd, full_matrices=False)
        v0 = vh.transpose(1, 2)[:, :, :n].to(x.dtype)
        s = s[:, :n].to(x.dtype)
        if v0.shape[2] < n:
            v0 = F.pad(v0, (0, n - v0.shape[2]))
            s = F.pad(s, (0, n - s.shape[1]))
    v = F.normalize(x.transpose(1, 2) @ (x @ v0), dim=1)
    return v, F.normalize(s, dim=1)


def align_to_teacher(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For every teacher vector, the student vector of largest |cosine| with it, sign-flipped to agree.

    Args:
        v_s: (B, C, n_s) student singular vectors (unit).
        v_t: (B, C, k) teacher singular vectors (unit), same C.

    Returns:
        (B, C, k): column j is ``sign(cos) * v_s[:, :, i*]`` with ``i* = argmax_i |<v_s_i, v_t_j>|``.
    """
    cos = v_s.transpose(1, 2) @ v_t  # (B, n_s, k)
    best = cos.abs().argmax(dim=1, keepdim=True)  # (B, 1, k)
    sign = torch.sign(cos.gather(1, best))  # (B, 1, k)
    picked = v_s.gather(2, best.expand(-1, v_s.shape[1], -1))  # (B, C, k)
    return picked * sign.detach()


def rbf_relation(v_deep: Tensor, v_shallow: Tensor) -> Tensor:
    """``exp(-(v_deep[c] - v_shallow[c'])^2 / 8)`` for every channel pair, per sample and singular vector.

    Args:
        v_deep: (B, C1, k).
        v_shallow: (B, C0, k).

    Returns:
        (B, C1, C0, k).
    """
    # (B, C1, C0, k) elements, several per channel pair: every pass over them counts, so no separate neg and div
    return torch.exp((v_deep.unsqueeze(2) - v_shallow.unsqueeze(1)).square() * (-1.0 / RBF_DENOMINATOR))


#: elements of one chunk of the relation tensors on a CPU: every pass over a chunk stays in the core's cache
CPU_CHUNK_ELEMENTS = 32768


class _RelationGap(torch.autograd.Function):
    """``nansum((rbf_relation(a, b) - rbf_relation(a_t, b_t))^2)`` with its gradient, fused and chunked.

    The relation tensors have B x C1 x C0 x k elements (64 x 512 x 256 for a ResNet-18's last two stages): every pass
    over them costs more than the student's own step on a small network. The teacher's relation, the student's and
    the gradient are computed together, a few samples at a time, and only the gradient's two reductions are kept:
    with d = a - b, R = exp(-d^2 / 8) and e = R - R_t, d loss / d a = sum_c0 -e R d / 2 and d loss / d b = -(the
    same summed over c1). On a CPU a chunk (``CPU_CHUNK_ELEMENTS``) fits in the cache, so its ~15 passes cost cache
    bandwidth instead of memory bandwidth, and no tensor of the full size is allocated or kept for backward;
    elsewhere the whole batch is one chunk. The elements and the per-sample reductions are the unchunked ones; only
    the loss's sum is taken chunk by chunk (a rounding-level difference).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, a_t: Tensor, b_t: Tensor) -> Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        per_sample = a.shape[1] * b.shape[1] * a.shape[2]
        chunk = max(1, CPU_CHUNK_ELEMENTS // per_sample) if a.device.type == "cpu" else a.shape[0]
        loss = a.new_zeros(())
        grad_a, grad_b = (torch.empty_like(a), torch.empty_like(b)) if need_grad else (None, None)
        for i in range(0, a.shape[0], chunk):
            rows = slice(i, i + chunk)
            r_t = _rbf_of_squares_((a_t[rows].unsqueeze(2) - b_t[rows].unsqueeze(1)).square_())
            d = a[rows].unsqueeze(2) - b[rows].unsqueeze(1)
            r = _rbf_of_squares_(
                d.square() if need_grad else d.square_()
            )  # d itself is kept for the gradient
            e = torch.sub(r, r_t, out=r_t)
            if need_grad:
                g = r.mul_(e).mul_(d)  # e R d, the gradient before its reductions and scale
                torch.sum(g, 2, out=grad_a[rows])
                torch.sum(g, 1, out=grad_b[rows])
            # the reference zeroes non-finite elements; an element is in [0, 1] or NaN (exp of a NaN distance,
            # never inf), so nansum is exactly that. The gradient at a NaN element stays NaN, as through autograd.
            loss += e.square_().nansum()
        if need_grad:
            ctx.save_for_backward(grad_a, grad_b)
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        g_a, g_b = ctx.saved_tensors
        scale = grad * (-4.0 / RBF_DENOMINATOR)  # d/dd of (exp(-d^2/8) - r_t)^2 = 2 e R (-2 d / 8)
        return scale * g_a, -scale * g_b, None, None


def _rbf_of_squares_(sq: Tensor) -> Tensor:
    """``exp(-sq / 8)`` in place of the squared distances ``sq``: :func:`rbf_relation`'s last two passes."""
    return sq.mul_(-1.0 / RBF_DENOMINATOR).exp_()


def relation_gap(a: Tensor, b: Tensor, a_t: Tensor, b_t: Tensor) -> Tensor:
    """``sum((rbf_relation(a, b) - rbf_relation(a_t, b_t))^2)`` over the finite elements (fused forward and
    backward, see :class:`_RelationGap`); ``a_t`` and ``b_t`` (the teacher's vectors) are constants."""
    return _RelationGap.apply(a, b, a_t.detach(), b_t.detach())


def kdsvd_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], k: int = 1) -> Tensor:
    """KDSVD over paired layers, shallow to deep (RepDistiller ``distiller_zoo/KDSVD.py``).

    Per layer: the teacher's k leading right singular vectors ``V_t`` and the student's k + 3, the student's aligned
    to the teacher's (:func:`align_to_teacher`), both scaled by the teacher's normalized singular values. Between
    consecutive layers l-1, l: ``L_l = sum (R_s - R_t)^2 / B`` with ``R = rbf_relation(V_l, V_{l-1})``; non-finite
    elements count 0. ``L = sum_l L_l``.

    Args:
        student_maps: (B, C_l, H, W) maps, channels equal to the teacher's of the same layer.
        teacher_maps: (B, C_l, H', W') maps (spatial sizes may differ: the vectors live in channel space).
        k: the teacher's singular vectors per layer.

    Returns:
        Scalar loss.
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(
            f"kdsvd relates consecutive layers: it needs at least 2 paired maps, got {len(student_maps)} student "
            f"and {len(teacher_maps)} teacher maps"
        )
    batch = student_maps[0].shape[0]
    total = student_maps[0].new_zeros(())
    prev_s = prev_t = None
    for f_s, f_t in zip(student_maps, teacher_maps):
        v_t, s_t = top_singular_vectors(f_t.detach(), k)
        v_s, _ = top_singular_vectors(f_s, k + 3)
        v_s = align_to_teacher(v_s, v_t.detach())
        scale = s_t.unsqueeze(1)
        v_t, v_s = v_t * scale, v_s * scale
        if prev_s is not None:
            total = total + relation_gap(v_s, prev_s, v_t, prev_t) / batch
        prev_s, prev_t = v_s, v_t
    return total


@register_method("kdsvd")
class KDSVD(PairedMaps, DistillationMethod):
    """Match how the leading singular vectors of consecutive layers relate (SVD-compressed feature relations).

    Every layer's map (B, C, H, W) is read as a (H*W, C) matrix per sample; its leading right singular vectors (in
    channel space) summarize the map; the relation between two consecutive layers is the RBF kernel of every pair
    of entries of their vectors, and the student's relations are pulled to the teacher's (:func:`kdsvd_loss`).
    Defaults from RepDistiller's ``KDSVD(k=1)`` on ``feat[1:-1]`` (the stage maps, post-activation).

    Mismatched widths (our extension; RepDistiller requires equal channels): where a student layer has other
    channels than its teacher layer, a trainable 1x1 convolution + BatchNorm (AB's connector) maps it to the
    teacher's channels first (``connector="auto"``; ``"always"`` everywhere). Spatial sizes may differ freely.
    Weight 1, CE weight 1 [inferred: RepDistiller's scripts give no ``-b`` for KDSVD]. Gradient: see
    :func:`top_singular_vectors`.

    Args:
        k: teacher singular vectors per layer (the student keeps k + 3 candidates).
        connector: "auto" or "always".
        student_layers: student map selectors (at least two layers).
        teacher_layers: teacher map selectors, paired in order (empty: as ``student_layers``).
    """

    summary = "RBF relations between the leading singular vectors of consecutive layers"
    paper = "Lee et al., Self-supervised Knowledge Distillation Using Singular Value Decomposition, ECCV 2018"
    citation = (
        "@inproceedings{lee2018self,\n  title={Self-supervised Knowledge Distillation Using Singular Value "
        "Decomposition},\n  author={Lee, Seung Hyun and Kim, Dae Ha and Song, Byung Cheol},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n  year={2018}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0

    def __init__(
        self, k: int = 1, connector: str = "auto", student_layers: str = "stages", teacher_layers: str = ""
    ) -> None:
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"kdsvd k must be >= 1, got {k}")
        if connector not in CONNECTOR_MODES:
            raise ValueError(f"kdsvd connector must be one of {CONNECTOR_MODES}, got {connector!r}")
        self.k = int(k)
        self.connector = connector
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        if len(self.student_layer_names) < 2:
            raise ValueError(
                "kdsvd relates consecutive layers: select at least two with --kdsvd-student-layers "
                f"(got {', '.join(self.student_layer_names)})."
            )
        pairs = list(zip(self.student_layer_names, self.teacher_layer_names))
        self.connectors = paired_connectors(student, teacher, pairs, self.connector, "kdsvd")

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        s = [c(f) for c, f in zip(self.connectors, student.map_list(self.student_layer_names))]
        return {"kdsvd": kdsvd_loss(s, teacher.map_list(self.teacher_layer_names), self.k)}


__all__ = ["KDSVD", "align_to_teacher", "kdsvd_loss", "rbf_relation", "relation_gap", "top_singular_vectors"]

"""OFA-KD: Hao, Guo, Han, Tang, Hu, Wang, Xu, "One-for-All: Bridge the Gap Between Heterogeneous Architectures in
Knowledge Distillation" (NeurIPS 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import DataInfo, DistillationMethod, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .maps import parse_selectors
from .registry import register_method

#: the branch designs: ``auto`` picks ``vit`` for token layers (N, D) and ``cnn`` for maps (C, H, W)
BRANCHES = ("auto", "cnn", "vit")
#: a token branch merges 2x2 patches while the grid stays at least this wide (the authors' 7 x 7 = 49 patches)
FINAL_PATCH_GRID = 7
#: the most transformer blocks one token branch has (the shallowest of four stages: 3, then 2, 1, 1)
MAX_TOKEN_BLOCKS = 3
#: attention heads of the token branches' blocks (fewer when the width is not a multiple)
TOKEN_HEADS = 4


def ofa_loss(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, eps: float = 1.0, temperature: float = 1.0
) -> Tensor:
    """OFA loss: cross-entropy of the student against the teacher's probabilities, the target class enhanced.

    With ``p_s = softmax(z_s / T)``, ``p_t = softmax(z_t / T)`` and ``y`` the ground-truth class, per sample

        L = -((1 + p_t[y])^eps - 1) log p_s[y] - sum_{c != y} p_t[c]^eps log p_s[c]

    averaged over the batch (no ``T^2`` factor). With ``eps = 1`` this is the cross-entropy with the teacher's
    probabilities, i.e. KD's KL divergence plus the teacher's entropy (a constant). With ``eps > 1`` the target
    class's weight ``(1 + p_t[y])^eps - 1`` grows above ``p_t[y]`` the more confident the teacher is, and the
    non-target weights ``p_t[c]^eps`` shrink: the student is pushed towards the target class, the more so where the
    teacher is sure of it.

    Args:
        student_logits: (B, C).
        teacher_logits: (B, C).
        labels: (B,) ground-truth classes.
        eps: the exponent (> 0).
        temperature: softmax temperature T.

    Returns:
        Scalar loss.
    """
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    p_t = F.softmax(teacher_logits / temperature, dim=1)
    target = F.one_hot(labels, p_t.shape[1]).to(p_t.dtype)
    weight = (p_t + target).pow(eps) - target
    return -(weight * log_p_s).sum(dim=1).mean()


class SepConv(nn.Sequential):
    """Two depthwise-separable 3x3 convolutions, the first with stride 2 (halves the map), each followed by a 1x1
    convolution, BatchNorm and ReLU: the downsampling block of OFA-KD's CNN branch.

    Args:
        in_channels: input channels.
        out_channels: output channels (of the second 1x1 convolution).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        c = in_channels
        super().__init__(
            nn.Conv2d(c, c, 3, stride=2, padding=1, groups=c, bias=False),
            nn.Conv2d(c, c, 1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False),
            nn.Conv2d(c, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


def halvings(size: tuple[int, int], target: tuple[int, int]) -> int:
    """How many stride-2 convolutions (each ``ceil(h / 2)``) bring a map of ``size`` down to ``target`` or below."""
    (h, w), n = size, 0
    while h > target[0] or w > target[1]:
        h, w, n = math.ceil(h / 2), math.ceil(w / 2), n + 1
    return n


def cnn_branch(
    shape: tuple[int, ...], target_size: tuple[int, int], width: int, num_classes: int
) -> nn.Sequential:
    """OFA-KD's branch for a (C, H, W) map: :class:`SepConv` blocks down to ``target_size`` (channels doubling,
    the last one to ``width``), or a 1x1 convolution to ``width`` for a map already that small; then global
    average pooling and a linear classifier."""
    c = shape[0]
    n = halvings(tuple(shape[1:]), target_size)
    blocks: list[nn.Module] = []
    for i in range(n):
        out = width if i == n - 1 else 2 * c
        blocks.append(SepConv(c, out))
        c = out
    if n == 0:
        blocks.append(nn.Conv2d(c, width, 1))
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


class PatchMerge(nn.Module):
    """Concatenate every 2x2 neighbourhood of a (B, g*g, D) patch grid, LayerNorm, then a linear map to ``dim``
    (Swin's patch merging): (B, (g/2)^2, dim)."""

    def __init__(self, grid: int, dim: int, activation: bool) -> None:
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, dim, bias=False)
        self.act = nn.GELU() if activation else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        b, _, d = x.shape
        g = self.grid
        x = x.reshape(b, g // 2, 2, g // 2, 2, d).permute(0, 1, 3, 4, 2, 5).reshape(b, (g // 2) ** 2, 4 * d)
        return self.act(self.reduce(self.norm(x)))


class TokenBranch(nn.Module):
    """OFA-KD's branch for transformer tokens (B, N, D): a linear map to ``width`` (when D differs), patch merging
    while the grid stays at least 7 wide, ``depth`` transformer blocks, then the first prefix (class) token, or the
    mean of the patch tokens when there is none, through a linear classifier.

    A (B, C, H, W) map is taken as H*W patch tokens without prefix.

    Args:
        prefix: tokens before the patch grid (class / distillation / register tokens).
        grid: the patch grid's side.
        dim: the tokens' width D.
        width: the branch's width.
        depth: transformer blocks.
        num_classes: outputs.
    """

    def __init__(self, prefix: int, grid: int, dim: int, width: int, depth: int, num_classes: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block  # timm is imported only when a token branch is built

        self.prefix = prefix
        self.proj = nn.Linear(dim, width) if dim != width else nn.Identity()
        merges: list[nn.Module] = []
        while grid % 2 == 0 and grid // 2 >= FINAL_PATCH_GRID:
            merges.append(PatchMerge(grid, width, activation=True))
            grid //= 2
        if merges:
            merges[-1].act = nn.Identity()  # no activation after the last merge, as in the reference
        self.merge = nn.Sequential(*merges)
        heads = next(h for h in range(TOKEN_HEADS, 0, -1) if width % h == 0)
        self.blocks = nn.Sequential(*(Block(width, num_heads=heads) for _ in range(depth)))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            x = x.flatten(2).transpose(1, 2)
        x = self.proj(x)
        x = torch.cat([x[:, : self.prefix], self.merge(x[:, self.prefix :])], dim=1)
        x = self.blocks(x)
        return self.head(x[:, 0] if self.prefix else x.mean(dim=1))


def token_grid(num_tokens: int) -> tuple[int, int]:
    """(prefix tokens, grid side) of a ViT's N tokens: the largest square of patches, the rest in front.

    Right for the usual layouts (1 class token, + 1 distillation token, + up to 2k registers for a k x k grid).
    """
    grid = math.isqrt(num_tokens)
    return num_tokens - grid * grid, grid


def init_branch(module: nn.Module) -> None:
    """The reference's initialization of the branches: He-normal convolutions (fan out), BatchNorm at identity,
    linear layers truncated-normal (std 0.02) with zero bias."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@register_method("ofa")
class OFA(DistillationMethod):
    """One-for-all KD: every selected student stage gets a branch that maps its features to class logits, and each
    branch, and the student's own logits, learn the teacher's predictions with the OFA loss (:func:`ofa_loss`).
    Features are compared in the logit space only, so teacher and student may be of any architectures.

    ``L = stage_weight * sum_stages OFA(branch_s(f_s), z_t) + logits_weight * OFA(z_s, z_t)`` (terms
    ``ofa_<layer>`` and ``ofa_logits``), with

        OFA(z, z_t) = -((1 + p_t[y])^eps - 1) log p[y] - sum_{c != y} p_t[c]^eps log p[c]

    (batch mean, ``p = softmax(z / T)``). This is the loss of the authors' code (Hao840/OFAKD, ``distillers/ofa.py``:
    ``-((p_t + onehot)^eps - onehot) * log p_s``, summed over classes); the paper writes the enhancement as the
    target term ``(1 + p_t)^eps`` [unsure from memory whether its equation also raises the non-target probabilities
    to ``eps`` as the code does, and whether the ``- 1`` on the target term is in the paper; implemented: the code].

    Branches (trainable, built in :meth:`setup` from the dry run's shapes, optimized and checkpointed with the
    student; initialized as the reference's ``init_weights``):

    * ``cnn`` for a (C, H, W) map: :class:`SepConv` blocks (depthwise 3x3 stride 2 + 1x1, twice) halve the map down
      to the size of the deepest selected map, channels doubling and the last block going to ``width``; the deepest
      map gets a 1x1 convolution to ``width``; then global average pooling and a linear layer to the classes. On a
      4-stage CNN this is the reference's ``4 - stage`` blocks.
    * ``vit`` for tokens (N, D): a linear map to ``width`` if needed, 2x2 patch merging while the grid stays at
      least 7 x 7, transformer blocks (timm ``Block``, 4 heads), the class token (or the mean of the patch tokens),
      a linear layer. The i-th of K selected layers (1 = shallowest) gets ``max(min(K - i, 3), 1)`` blocks: the
      reference's 3, 2, 1, 1 for four stages. ``branch=vit`` also takes a (C, H, W) map as H*W tokens (timm ViTs
      give their blocks' outputs as maps on the patch grid).

    Defaults, from the authors' ``train.py``: ``eps`` 1 (``--ofa-eps`` default; their ImageNet command uses
    ``--ofa-eps 1.5``), T 1 (``--ofa-temperature``), branch and logits weights 1 (``--ofa-loss-weight``,
    ``--kd-loss-weight``), CE weight 1 (``--gt-loss-weight``; their configs train with label smoothing 0.1, a recipe
    setting outside this loss), stages: all of the student's (``--ofa-stage 1 2 3 4``). Our deviations:
    ``width`` defaults to the channels (or token width) of the deepest selected student layer, where the reference
    uses the larger of the student's and the teacher's final feature widths (reading the teacher's features would
    rule out the teacher cache: only the teacher's logits are read); one ``eps`` for every branch (the reference
    accepts one per branch). For a 12-block ViT student the reference taps blocks 1, 3, 9, 11
    (``--ofa-student-layers 1,3,9,11`` with timm's names ``blocks.<i>``); the default ``stages`` taps every block.

    Args:
        eps: exponent of the target enhancement (> 0; 1 = plain soft cross-entropy).
        temperature: softmax temperature T of the OFA loss.
        stage_weight: weight of the branches' terms.
        logits_weight: weight of the student's own logits' term (0 leaves it out).
        branch: ``auto``, ``cnn`` or ``vit`` (see above).
        width: the branches' width (None: the deepest selected student layer's channels or token width).
        student_layers: the student's layers that get a branch (selectors, shallow to deep).
        teacher_layers: must stay empty: the teacher gives only its logits.
    """

    summary = "per-stage branches project student features to logits; all learn the teacher's predictions, target-enhanced"
    paper = "Hao et al., One-for-All: Bridge the Gap Between Heterogeneous Architectures in Knowledge Distillation, NeurIPS 2023"
    citation = (
        "@inproceedings{hao2023ofa,\n  title={One-for-All: Bridge the Gap Between Heterogeneous Architectures in "
        "Knowledge Distillation},\n  author={Hao, Zhiwei and Guo, Jianyuan and Han, Kai and Tang, Yehui and Hu, Han "
        "and Wang, Yunhe and Xu, Chang},\n  booktitle={Advances in Neural Information Processing Systems (NeurIPS)},"
        "\n  year={2023}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0

    def __init__(
        self,
        eps: float = 1.0,
        temperature: float = 1.0,
        stage_weight: float = 1.0,
        logits_weight: float = 1.0,
        branch: str = "auto",
        width: int | None = None,
        student_layers: str = "stages",
        teacher_layers: str = "",
    ) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"ofa eps must be > 0, got {eps}")
        if temperature <= 0:
            raise ValueError(f"ofa temperature must be > 0, got {temperature}")
        if stage_weight < 0 or logits_weight < 0:
            raise ValueError(
                f"ofa stage_weight and logits_weight must be >= 0, got {stage_weight} and {logits_weight}"
            )
        if branch not in BRANCHES:
            raise ValueError(f"ofa branch must be one of {BRANCHES}, got {branch!r}")
        if width is not None and width < 1:
            raise ValueError(f"ofa width must be a positive integer (or None: automatic), got {width}")
        if teacher_layers not in (None, ""):
            raise ValueError(
                f"ofa reads only the teacher's logits, so --ofa-teacher-layers must stay empty, got {teacher_layers!r}"
            )
        self.eps = float(eps)
        self.temperature = float(temperature)
        self.stage_weight = float(stage_weight)
        self.logits_weight = float(logits_weight)
        self.branch = branch
        self.width = width
        self.student_layers = student_layers
        self.teacher_layers = ""
        self._student_sel = parse_selectors(student_layers, "--ofa-student-layers")

    def needs(self) -> MethodNeeds:
        return MethodNeeds(
            student=FeatureNeeds(logits=True, maps=self._student_sel), teacher=FeatureNeeds(logits=True)
        )

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        names = self.student_layer_names
        shapes = [tuple(student.maps[n]) for n in names]
        tokens = [len(s) == 2 for s in shapes]
        bad = [n for n, s in zip(names, shapes) if len(s) not in (2, 3)]
        if bad or (self.branch == "cnn" and any(tokens)):
            n = (bad or [n for n, t in zip(names, tokens) if t])[0]
            raise ValueError(
                f"ofa: the student's layer {n!r} has shape {tuple(student.maps[n])}; the cnn branch needs a "
                "(C, H, W) map, the vit branch (N, D) tokens or a map: use --ofa-branch auto or vit, or other "
                "layers with --ofa-student-layers."
            )
        num_classes = student.logits[0] if student.logits else data.num_classes
        maps = [s for s in shapes if len(s) == 3]
        target = (min(s[1] for s in maps), min(s[2] for s in maps)) if maps else (1, 1)
        width = self.width or shapes[-1][0 if len(shapes[-1]) == 3 else 1]
        branches = []
        for i, shape in enumerate(shapes, start=1):
            if self.branch == "cnn" or (self.branch == "auto" and len(shape) == 3):
                branches.append(cnn_branch(shape, target, width, num_classes))
                continue
            if len(shape) == 2:
                (prefix, grid), dim = token_grid(shape[0]), shape[1]
            else:  # a map as tokens; a non-square grid (0 here) is not merged
                prefix, grid, dim = 0, shape[1] if shape[1] == shape[2] else 0, shape[0]
            depth = max(min(len(shapes) - i, MAX_TOKEN_BLOCKS), 1)
            branches.append(TokenBranch(prefix, grid, dim, width, depth, num_classes))
        self.branches = nn.ModuleList(branches)
        init_branch(self.branches)

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        z_t, y = teacher.logits, step.labels
        out = {}
        for name, branch in zip(self.student_layer_names, self.branches):
            z = branch(student.maps[name])
            out[f"ofa_{name}"] = self.stage_weight * ofa_loss(z, z_t, y, self.eps, self.temperature)
        if self.logits_weight:
            out["ofa_logits"] = self.logits_weight * ofa_loss(
                student.logits, z_t, y, self.eps, self.temperature
            )
        return out


__all__ = ["BRANCHES", "OFA", "PatchMerge", "SepConv", "TokenBranch", "cnn_branch", "ofa_loss", "token_grid"]

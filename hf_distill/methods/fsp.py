"""FSP: Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and
Transfer Learning" (CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .ab import CONNECTOR_MODES, paired_connectors
from .base import DataInfo, Features, FeatureSpec
from .init_stage_then_ce import InitStageThenCE
from .maps import PairedMaps, pool_to_common_size, reduce_layers
from .registry import register_method


def fsp_matrix(bottom: Tensor, top: Tensor) -> Tensor:
    """The FSP ("flow of solution procedure") matrix between two maps of one network.

    The larger map is adaptive-average-pooled to the smaller spatial size (RepDistiller), then
    G[b, j, i] = mean over positions p of top[b, j, p] * bottom[b, i, p].

    Args:
        bottom: (B, C1, H1, W1), the shallower map.
        top: (B, C2, H2, W2), the deeper map.

    Returns:
        (B, C2, C1).
    """
    bottom, top = pool_to_common_size(bottom, top)
    hw = bottom.shape[-2] * bottom.shape[-1]
    # A batched product instead of broadcasting: never materializes (B, C2, C1, H*W).
    return torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / hw


def fsp_matrices(maps: Sequence[Tensor]) -> list[Tensor]:
    """FSP matrices of consecutive maps: (maps[0], maps[1]), (maps[1], maps[2]), ...

    Args:
        maps: (B, C_k, H_k, W_k) maps of one network, shallow to deep.

    Returns:
        ``len(maps) - 1`` tensors of shape (B, C_{k+1}, C_k).
    """
    return [fsp_matrix(maps[k], maps[k + 1]) for k in range(len(maps) - 1)]


def fsp_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor]) -> Tensor:
    """FSP loss: the mean squared difference of every pair of FSP matrices, summed over the pairs (RepDistiller).

    Args:
        student_maps: student maps, shallow to deep (at least two).
        teacher_maps: teacher maps at the same positions, with the same channel counts (spatial sizes may differ:
            an FSP matrix does not depend on them).

    Returns:
        Scalar loss.

    Raises:
        ValueError: fewer than two maps, or different numbers of maps or channels on the two sides.
    """
    if len(student_maps) != len(teacher_maps) or len(student_maps) < 2:
        raise ValueError(
            f"FSP needs the same number (>= 2) of student and teacher maps, got {len(student_maps)} and "
            f"{len(teacher_maps)}"
        )
    terms = []
    for gs, gt in zip(fsp_matrices(student_maps), fsp_matrices(teacher_maps)):
        if gs.shape[1:] != gt.shape[1:]:
            raise ValueError(
                f"FSP matrices differ in shape: student {tuple(gs.shape)}, teacher {tuple(gt.shape)}"
            )
        terms.append((gs - gt).pow(2).mean())
    return reduce_layers(terms, "sum")


#: ``"none"``: equal channels required (RepDistiller); otherwise AB's connector modes
FSP_CONNECTORS = ("none", *CONNECTOR_MODES)


@register_method("fsp")
class FSP(PairedMaps, InitStageThenCE):
    """Flow of Solution Procedure: match the Gram matrices between consecutive feature maps.

    Formula (RepDistiller ``distiller_zoo/FSP.py``): for consecutive maps F_k (C_k channels) and F_{k+1} of one
    network, after pooling the larger to the smaller spatial size (H x W),

        G_k[j, i] = 1/(H W) * sum_{h,w} F_{k+1}[j, h, w] * F_k[i, h, w]          (a C_{k+1} x C_k matrix)
        L_FSP = sum_k mean_{b, j, i} (G_k^S - G_k^T)^2

    Features: the stem and every stage map of both networks (RepDistiller ``feat[:-1]``; ``student_layers="all"``),
    post-activation.

    Requirements: the student's and the teacher's maps must have equal channel counts position by position, since
    their FSP matrices are compared entry by entry (the benchmark table has FSP "N/A" for wrn_40_2 -> wrn_40_1);
    :meth:`setup` raises a clear error naming the layers otherwise. Spatial sizes may differ between the two
    networks (an FSP matrix has no spatial axes). Our extension for pairs of other widths (KDSVD's): ``connector``
    ``"auto"`` maps every student map whose channels differ from its teacher map's through a trainable 1x1
    convolution + BatchNorm (AB's connector) first, ``"always"`` every student map; ``"none"`` (RepDistiller) refuses.

    Schedule (RepDistiller ``train_student.py --distill fsp``, ``helper/pretrain.py``): an initialization stage of
    ``init_epochs`` = 30 epochs trains the student with L_FSP alone (no CE); the main stage then trains with CE
    only (RepDistiller sets ``loss_kd = 0`` for FSP although it passes ``-b 50``). That is the default here: the
    main-stage term is a constant 0 (logged as ``fsp``); ``main_stage_loss=True`` keeps weight * L_FSP in it.

    Defaults and sources: weight 50, CE weight 1 (RepDistiller ``-b 50 -r 1``); init stage 30 epochs at the main
    learning rate (``--init_epochs 30``); no trainable parts, no buffers.

    Args:
        init_epochs: length of the initialization stage (0: none; then ``main_stage_loss`` must be on).
        main_stage_loss: keep the FSP term in the main stage (RepDistiller: off).
        connector: "none" (RepDistiller: equal channels required), "auto" or "always" (see above).
        student_layers: map selectors for both networks ("all", "stages", names, positions; comma-separated; >= 2 maps).
        teacher_layers: selectors for the teacher only (empty: same as ``student_layers``).
    """

    summary = "Match the FSP (Gram) matrices between consecutive feature maps, init stage"
    paper = "Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer Learning, CVPR 2017"
    citation = (
        "@inproceedings{yim2017gift,\n  title={A Gift from Knowledge Distillation: Fast Optimization, Network "
        "Minimization and Transfer Learning},\n  author={Yim, Junho and Joo, Donggyu and Bae, Jihoon and Kim, "
        "Junmo},\n  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},\n  year={2017}\n}"
    )
    default_weight = 50.0
    pair_requirement = "paired layers need equal channel counts without a connector"
    default_ce_weight = 1.0
    renamed_hyperparameters = {"layers": "student_layers", "layers_teacher": "teacher_layers"}

    def __init__(
        self,
        init_epochs: float = 30.0,
        main_stage_loss: bool = False,
        student_layers: str = "all",
        teacher_layers: str = "",
        connector: str = "none",
    ) -> None:
        super().__init__()
        if connector not in FSP_CONNECTORS:
            raise ValueError(f"fsp connector must be one of {FSP_CONNECTORS}, got {connector!r}")
        self.set_schedule(init_epochs, main_stage_loss)
        self.connector = connector
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        if len(self.student_layer_names) < 2:
            raise ValueError(
                f"FSP compares consecutive maps and needs at least two layers, got {self.student_layer_names}; "
                "use --fsp-student-layers all (the default) or list two or more layers."
            )
        pairs = list(zip(self.student_layer_names, self.teacher_layer_names))
        if self.connector != "none":
            self.connectors = paired_connectors(student, teacher, pairs, self.connector, "fsp")
            return
        bad = [
            f"{student.layer('student', sn)} has {student.maps[sn][0]} channels, "
            f"{teacher.layer('teacher', tn)} has {teacher.maps[tn][0]}"
            for sn, tn in pairs
            if student.maps[sn][0] != teacher.maps[tn][0]
        ]
        if bad:
            raise ValueError(
                "FSP compares the student's and the teacher's FSP matrices entry by entry, so "
                f"{self.pair_requirement}, but {bad[0]}. Pass --fsp-connector auto (a 1x1 conv + "
                "BN per student map of other width), pick layers with matching channels via --fsp-student-layers / "
                "--fsp-teacher-layers, or use another method (wrn_40_2 -> wrn_40_1 is N/A in the CRD benchmark)."
            )
        self.connectors = nn.ModuleList(nn.Identity() for _ in pairs)

    def distill_term(self, student: Features, teacher: Features) -> Tensor:
        """L_FSP for one batch."""
        s = [c(f) for c, f in zip(self.connectors, student.map_list(self.student_layer_names))]
        return fsp_loss(s, teacher.map_list(self.teacher_layer_names))

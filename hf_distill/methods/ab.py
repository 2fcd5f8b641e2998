"""AB: Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden
Neurons" (AAAI 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from .base import DataInfo, Features, FeatureSpec
from .init_stage_then_ce import InitStageThenCE
from .maps import PairedMaps, pool_to_common_size, reduce_layers
from .registry import register_method

#: RepDistiller's ``ABLoss`` divides every layer's sum by the batch size and multiplies it by 3/1000.
AB_SCALE = 3.0 / 1000.0


def ab_criterion(source: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """The AB "alternative L2" criterion, summed over every element.

    A hinge-like squared loss on the student's pre-activation ``source`` that only looks at the *sign* of the
    teacher's pre-activation ``target``: where the teacher neuron is off (t <= 0) the student is pushed below -margin,
    where it is on (t > 0) above +margin; elements already on the right side of the margin cost nothing.

        l = (s + m)^2 * [s > -m and t <= 0] + (s - m)^2 * [s <= m and t > 0]

    Args:
        source: student pre-activations (after the connector), any shape.
        target: teacher pre-activations, same shape.
        margin: m.

    Returns:
        Scalar: the sum of ``l`` over all elements.
    """
    off = ((target <= 0) & (source > -margin)).to(source.dtype)
    on = ((target > 0) & (source <= margin)).to(source.dtype)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


def ab_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor], margin: float = 1.0) -> Tensor:
    """AB loss over paired layers, weighted and scaled as RepDistiller's ``ABLoss``.

    Layer i of n (shallow to deep) gets weight 2^(i - n + 1) (the deepest 1, each shallower one half the next);
    every layer's criterion sum is divided by the batch size and multiplied by 3/1000.

    Args:
        student_maps: (B, C_i, H_i, W_i) student maps already mapped to the teacher's channels (connectors).
        teacher_maps: (B, C_i, H_i, W_i) teacher pre-activation maps of the same shapes.
        margin: the criterion's margin.

    Returns:
        Scalar loss.
    """
    n = len(student_maps)
    if n != len(teacher_maps) or n == 0:
        raise ValueError(f"ab_loss needs the same non-zero number of maps, got {n} and {len(teacher_maps)}")
    batch = student_maps[0].shape[0]
    terms = [
        2.0 ** (i - n + 1) * ab_criterion(s, t, margin)
        for i, (s, t) in enumerate(zip(student_maps, teacher_maps))
    ]
    return reduce_layers(terms, "sum") / batch * AB_SCALE


def make_connector(s_channels: int, t_channels: int) -> nn.Sequential:
    """A 1x1 convolution + BatchNorm mapping student channels to teacher channels (AB's connector).

    He-normal initialization (fan-out) of the convolution, BN at identity: as the AB authors' code.
    The convolution has no bias: the BN that follows cancels it.
    """
    conv = nn.Conv2d(s_channels, t_channels, kernel_size=1, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / t_channels))
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


#: ``"auto"``: identity where the channel counts already match (RepDistiller); ``"always"``: a connector everywhere
CONNECTOR_MODES = ("auto", "always")


def paired_connectors(
    student: FeatureSpec, teacher: FeatureSpec, pairs: Sequence[tuple[str, str]], mode: str, method: str
) -> nn.ModuleList:
    """One :func:`make_connector` per (student layer, teacher layer) pair, or the identity where ``mode`` is
    ``"auto"`` and the two channel counts match.

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode not in CONNECTOR_MODES:
        raise ValueError(f"{method} connector must be one of {CONNECTOR_MODES}, got {mode!r}")
    parts: list[nn.Module] = []
    for sn, tn in pairs:
        cs, ct = student.maps[sn][0], teacher.maps[tn][0]
        parts.append(nn.Identity() if cs == ct and mode == "auto" else make_connector(cs, ct))
    return nn.ModuleList(parts)


@register_method("ab")
class AB(PairedMaps, InitStageThenCE):
    """Activation Boundaries: the student learns where the teacher's neurons switch on and off.

    Formula (RepDistiller ``distiller_zoo/AB.py``): for paired pre-activation maps S_i (student, through a connector
    r_i) and T_i (teacher), i = 0..n-1 shallow to deep, with margin m,

        L_AB = 3/1000 * (1/B) * sum_i 2^(i-n+1) * sum_{elements} [ (r_i(S_i) + m)^2 * 1{r_i(S_i) > -m, T_i <= 0}
                                                                  + (r_i(S_i) - m)^2 * 1{r_i(S_i) <= m, T_i > 0} ]

    Features: pre-activation (before the final ReLU) stage maps of both networks (RepDistiller ``preact=True``,
    ``feat[1:-1]``; ``student_layers="stages"``); only CIFAR-zoo models give pre-activation maps.

    Trainable parts: one connector per pair, a 1x1 convolution + BatchNorm from the student's to the teacher's
    channel count (AB paper / authors' code); as in RepDistiller the connector is the identity where the channel
    counts already match (``connector="auto"``; ``"always"`` builds one everywhere).

    Schedule (RepDistiller ``train_student.py --distill abound``, ``helper/pretrain.py``): an initialization stage of
    ``init_epochs`` = 30 epochs trains the connectors and the student with L_AB alone (no CE), then the main stage
    trains with CE only: RepDistiller sets the AB term to 0 there (``loss_kd = 0``). That is the default here: the
    main-stage term is a constant 0 (logged as ``ab``). ``main_stage_loss=True`` keeps L_AB (weighted by the method
    weight) in the main stage as well; the connectors then keep training (a choice of ours: RepDistiller has no
    such mode).

    Defaults and sources: margin 1, layer weights 2^(i-n+1), scale 3/1000 (RepDistiller ``ABLoss``); weight 1, CE
    weight 1 (RepDistiller ``-b 1 -r 1``); init stage 30 epochs at the main learning rate (RepDistiller
    ``--init_epochs 30``).

    Mismatched spatial sizes (a design choice; RepDistiller's connector only handles factor-2 differences): the
    larger map of a pair is adaptive-average-pooled to the smaller size first: the student's map before its
    connector, or the teacher's pre-activation map before its sign is taken. The selected student and teacher
    layers must pair one to one.

    Args:
        margin: m (> 0).
        init_epochs: length of the initialization stage (0: none; then ``main_stage_loss`` must be on).
        main_stage_loss: keep the AB term in the main stage (RepDistiller: off).
        connector: "auto" (identity where the channel counts match, as RepDistiller) or "always".
        student_layers: map selectors for both networks ("stages", "last", "all", names, positions; comma-separated).
        teacher_layers: selectors for the teacher only (empty: same as ``student_layers``).
    """

    summary = "Hinge loss on the sign of the teacher's pre-activations (activation boundaries), init stage"
    paper = "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019"
    citation = (
        "@inproceedings{heo2019knowledge,\n  title={Knowledge Transfer via Distillation of Activation Boundaries "
        "Formed by Hidden Neurons},\n  author={Heo, Byeongho and Lee, Minsik and Yun, Sangdoo and Choi, Jin Young},\n"
        "  booktitle={AAAI Conference on Artificial Intelligence},\n  year={2019}\n}"
    )
    default_weight = 1.0
    default_ce_weight = 1.0
    renamed_hyperparameters = {"layers": "student_layers", "layers_teacher": "teacher_layers"}
    preact_maps = True

    def __init__(
        self,
        margin: float = 1.0,
        init_epochs: float = 30.0,
        main_stage_loss: bool = False,
        connector: str = "auto",
        student_layers: str = "stages",
        teacher_layers: str = "",
    ) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"ab margin must be > 0, got {margin}")
        self.set_schedule(init_epochs, main_stage_loss)
        if connector not in CONNECTOR_MODES:
            raise ValueError(f"ab connector must be one of {CONNECTOR_MODES}, got {connector!r}")
        self.margin = float(margin)
        self.connector = connector
        self.select_layers(student_layers, teacher_layers)

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.check_maps(student, teacher)
        pairs = list(zip(self.student_layer_names, self.teacher_layer_names))
        self.connectors = paired_connectors(student, teacher, pairs, self.connector, "ab")

    def distill_term(self, student: Features, teacher: Features) -> Tensor:
        """L_AB for one batch (pooling, connectors, criterion)."""
        s_maps, t_maps = [], []
        for conn, s, t in zip(
            self.connectors,
            student.map_list(self.student_layer_names),
            teacher.map_list(self.teacher_layer_names),
        ):
            s, t = pool_to_common_size(s, t)
            s_maps.append(conn(s))
            t_maps.append(t)
        return ab_loss(s_maps, t_maps, self.margin)

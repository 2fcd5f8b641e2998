"""CC: Peng et al., "Correlation Congruence for Knowledge Distillation" (ICCV 2019), as run in RepDistiller."""

from __future__ import annotations

from torch import Tensor, nn

from .base import DataInfo, DistillationMethod, FeatureNeeds, Features, FeatureSpec, MethodNeeds, StepInfo
from .distributed import gather_pair
from .registry import register_method


def cc_loss(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """RepDistiller's correlation-congruence loss on embedded features.

    With ``delta = |e_s - e_t|`` (B, D): ``L = mean_{i=1..B-1} sum_d delta[i-1, d] * delta[i, d]``, i.e. the mean
    over consecutive sample pairs of the inner product of their absolute embedding discrepancies (the "delta" form
    of the correlation-congruence term, code the CC authors shared with RepDistiller).

    Args:
        student_embedding: (B, D).
        teacher_embedding: (B, D).

    Returns:
        Scalar loss (needs B >= 2).
    """
    if student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            f"cc embeddings differ in shape: student {tuple(student_embedding.shape)}, "
            f"teacher {tuple(teacher_embedding.shape)}"
        )
    if student_embedding.shape[0] < 2:
        raise ValueError("cc compares consecutive samples and needs a batch of at least 2")
    delta = (student_embedding - teacher_embedding).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


@register_method("cc")
class CC(DistillationMethod):
    """Correlation Congruence, in RepDistiller's form.

    Both penultimate vectors (RepDistiller ``feat[-1]``) go through their own trainable linear embedding to
    ``feat_dim`` (RepDistiller ``LinearEmbed``: ``embed_s`` on the student, ``embed_t`` on the teacher; both are
    optimized with the student, so the teacher's embedding head learns too while the teacher stays frozen). With
    ``delta = |embed_s(f_s) - embed_t(f_t)|``: ``L = mean_i sum_d delta_{i-1,d} delta_{i,d}`` over consecutive samples
    of the batch (RepDistiller ``Correlation``, the authors' code). Note this is RepDistiller's implementation, not
    the paper's kernel (Gaussian RBF / Taylor) correlation matrix; we follow RepDistiller since its numbers are the
    benchmark.

    Defaults (RepDistiller ``--distill correlation``: ``-r 1 -a 0 -b 0.02``, ``--feat_dim 128``): feat_dim 128,
    weight 0.02, CE weight 1. ``gather=True`` computes the loss over the global batch (process order, so pairs
    straddling two processes count, exactly as one process with the whole batch).

    Args:
        feat_dim: output size of both linear embeddings.
        gather: compute the loss over the global batch under DDP.
    """

    summary = "Correlation congruence of linearly embedded penultimate features (RepDistiller's CC)"
    paper = "Peng et al., Correlation Congruence for Knowledge Distillation, ICCV 2019"
    citation = (
        "@inproceedings{peng2019correlation,\n  title={Correlation Congruence for Knowledge Distillation},\n"
        "  author={Peng, Baoyun and Jin, Xiao and Liu, Jiaheng and Li, Dongsheng and Wu, Yichao and Liu, Yu and "
        "Zhou, Shunfeng and Zhang, Zhaoning},\n"
        "  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n  year={2019}\n}"
    )
    default_weight = 0.02
    default_ce_weight = 1.0
    min_batch_size = 2  # correlations of consecutive samples

    def __init__(self, feat_dim: int = 128, gather: bool = False) -> None:
        super().__init__()
        if feat_dim < 1:
            raise ValueError(f"cc feat_dim must be >= 1, got {feat_dim}")
        self.feat_dim = int(feat_dim)
        self.gather = bool(gather)

    def needs(self) -> MethodNeeds:
        return MethodNeeds(student=FeatureNeeds(embedding=True), teacher=FeatureNeeds(embedding=True))

    def setup(self, student: FeatureSpec, teacher: FeatureSpec, data: DataInfo) -> None:
        self.embed_s = nn.Linear(student.embedding[0], self.feat_dim)
        self.embed_t = nn.Linear(teacher.embedding[0], self.feat_dim)

    def forward(self, student: Features, teacher: Features, step: StepInfo) -> dict[str, Tensor]:
        e_s = self.embed_s(student.embedding.flatten(1))
        e_t = self.embed_t(teacher.embedding.flatten(1))
        e_s, e_t = gather_pair(e_s, e_t, self.gather)
        return {"cc": cc_loss(e_s, e_t)}

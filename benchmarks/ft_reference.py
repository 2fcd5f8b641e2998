#!/usr/bin/env python
"""FT's and IE-KD's steps against reference implementations', side by side in one process.

    python benchmarks/ft_reference.py --threads 1                    # FT, timm resnet18 -> mobilenetv3_small
    python benchmarks/ft_reference.py --method iekd --threads 1      # IE-KD
    python benchmarks/ft_reference.py --pair resnet56-resnet20 --steps 10 --out /tmp/ft_reference.json

Both methods compare "factors" of the last feature maps made by small convolutional networks of their own; the
references are written here from the papers the way the released code builds them, with 3x3 convolutions at the
maps' size:

* FT (Kim et al., NeurIPS 2018; RepDistiller's Paraphraser/Translator): the frozen paraphraser's encoder on the
  teacher's map (three 3x3 convs with LeakyReLU(0.1), ``C_t -> C_t -> C_t/2 -> C_t/2``, no grad), the translator on
  the student's (three 3x3 convs with BatchNorm and LeakyReLU, ``C_s -> C_s -> C_t/2 -> C_t/2``), the L1 distance of
  the L2-normalized channel means of the squared factors, weight 200;
* IE-KD (Huang et al., CVPR 2021; the authors' ``Coder``: LeakyReLU, then three 3x3 convs with BatchNorm and
  LeakyReLU, no bias): the frozen teacher encoder on the teacher's map, an inheritance encoder on the first half of
  the student's channels and an exploration encoder on the second, ``d(F_T, F_I) - d(F_T, F_E)`` with d the mean
  absolute difference of the L2-normalized flattened factors.

Three steps are timed in turn on the same batches: the bare loop of ``benchmarks/throughput.py`` (the limit), the
reference step, and the ``DistillationTrainer`` with ``--method ft`` or ``iekd`` (the main stage: the initialization
stage's network is trained and frozen, as in the references' main stage).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: the repository's hf_distill and benchmarks
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from hf_distill.features import FeatureNeeds  # noqa: E402

METHODS = ("ft", "iekd")


def coder(cin: int, cout: int, batch_norm: bool, bias: bool, leading: bool = False) -> nn.Sequential:
    """Three 3x3 convolutions ``cin -> cin -> cout -> cout``, each followed by (BatchNorm and) LeakyReLU(0.1)."""
    layers: list[nn.Module] = [nn.LeakyReLU(0.1)] if leading else []
    for a, b in ((cin, cin), (cin, cout), (cout, cout)):
        layers += [nn.Conv2d(a, b, 3, padding=1, bias=bias)]
        layers += [nn.BatchNorm2d(b)] if batch_norm else []
        layers += [nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def unit(x: Tensor) -> Tensor:
    return F.normalize(x.flatten(1), dim=1)


class ReferenceFT(nn.Module):
    def __init__(self, c_s: int, c_t: int) -> None:
        super().__init__()
        self.paraphraser = coder(c_t, c_t // 2, batch_norm=False, bias=True).eval().requires_grad_(False)
        self.translator = coder(c_s, c_t // 2, batch_norm=True, bias=True)

    def forward(self, s, t, batch) -> Tensor:
        (f_s,), (f_t,) = s.maps.values(), t.maps.values()
        factor_t = self.paraphraser(f_t)
        factor_s = self.translator(f_s)
        return 200 * (unit(factor_s.pow(2).mean(1)) - unit(factor_t.pow(2).mean(1))).abs().mean()


class ReferenceIEKD(nn.Module):
    def __init__(self, c_s: int, c_t: int) -> None:
        super().__init__()
        self.half = c_s // 2
        k = c_t // 2
        self.teacher_encoder = coder(c_t, k, True, False, leading=True).eval().requires_grad_(False)
        self.inh = coder(self.half, k, True, False, leading=True)
        self.exp = coder(c_s - self.half, k, True, False, leading=True)

    def forward(self, s, t, batch) -> Tensor:
        (f_s,), (f_t,) = s.maps.values(), t.maps.values()
        factor_t = unit(self.teacher_encoder(f_t))
        inh, exp = unit(self.inh(f_s[:, : self.half])), unit(self.exp(f_s[:, self.half :]))
        return (factor_t - inh).abs().mean() - (factor_t - exp).abs().mean()


def reference_of(method: str):
    module = ReferenceFT if method == "ft" else ReferenceIEKD

    def reference(limit: throughput.Limit, args) -> throughput.ReferenceStep:
        needs = FeatureNeeds(maps=("last",))
        build = lambda s, t: module(*(next(iter(f.maps.values())).shape[1] for f in (s, t)))  # noqa: E731
        return throughput.ReferenceStep(limit, needs, needs, build)

    return reference


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = "ft"
    if "--method" in argv:  # the shared command line has no --method: take it off first
        i = argv.index("--method")
        method = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i : i + 2]
    if method not in METHODS:
        raise SystemExit(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    return throughput.reference_main(method, reference_of(method), __doc__, argv)


if __name__ == "__main__":
    main()

"""The contract every registered method keeps, parametrized over the registry (as timm's ``tests/test_models.py``
is over ``list_models``): a method registered later is covered without writing a test for it.

Per method: its declaration (paper, hyperparameters that round-trip, the layer vocabulary, deprecated names), and on
every zoo pair a build as a run builds it (the trainer's dry run of the two networks, after the recipe has given the
method the networks it owns) followed by finite loss terms whose gradient reaches the student. A method may refuse a
pair only as it declares: ``pair_requirement`` says what pairs it needs, and the refusal is one line naming the
method and quoting that requirement. Methods that compare the samples of a batch declare the smallest batch they need,
and a smaller one is refused at setup.
"""

from __future__ import annotations

import functools

import pytest
import torch

from hf_distill.methods import (
    METHODS,
    DataInfo,
    DistillationMethod,
    DistillationObjective,
    Features,
    StepInfo,
)
from hf_distill.methods.objective import check_batch_size
from hf_distill.methods.registry import instantiate
from hf_distill.methods.wrapped import WrappedMethod
from hf_distill.training.mutual import prepare_peers
from tests.methods._common import ZOO_PAIRS, built, random_features, zoo_model, zoo_spec

#: collected from the registry when this module is imported, so every method present then is covered
METHOD_NAMES = sorted(METHODS)
#: methods whose minimum batch depends on a hyperparameter: (name, kwargs)
BATCH_METHODS = [(n, {}) for n in METHOD_NAMES if METHODS[n].min_batch_size > 1] + [
    ("crd", {"negatives": "batch"})
]
_DATA = DataInfo(num_samples=64, num_classes=10, labels=torch.arange(64) % 10)


def _leaf(f: Features) -> Features:
    def g(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.detach().clone().requires_grad_(True)

    return Features(logits=g(f.logits), embedding=g(f.embedding), maps={k: g(v) for k, v in f.maps.items()})


def _step(batch: int) -> StepInfo:
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))  # for dml's peers
    return StepInfo(labels=torch.arange(batch) % 10, index=torch.arange(batch), pixel_values=images)


def _student_gradient(method, s_spec, t_spec, batch: int, seed: int = 0) -> tuple[list[torch.Tensor], float]:
    """The loss terms (main stage, plus the init stage when the method has one) on random features of ``batch``
    samples, and the norm of their gradient with respect to the student's features."""
    s = _leaf(random_features(s_spec, batch, seed=seed))
    t = random_features(t_spec, batch, seed=seed + 1)
    terms = list(method(s, t, _step(batch)).values())
    if method.init_stage is not None:
        terms += list(method.init_stage_loss(s, t, _step(batch)).values())
    feats = [x for x in (s.logits, s.embedding, *s.maps.values()) if x is not None]
    grads = torch.autograd.grad(sum(terms), feats, allow_unused=True)
    norm = sum(float(g.detach().norm()) ** 2 for g in grads if g is not None) ** 0.5
    return terms, norm


# -- declaration ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_declaration(name):
    cls = METHODS[name]
    assert cls.name == name and cls.summary and cls.paper and cls.citation.startswith("@")
    m = instantiate(name)
    # the recorded hyperparameters (logs, model cards) rebuild the same method
    assert instantiate(name, m.hparams()).hparams() == m.hparams()
    # one vocabulary: a method that selects feature maps does it with student_layers / teacher_layers
    own = m.own_needs() if isinstance(m, WrappedMethod) else m.needs()
    if own.student.maps or own.teacher.maps:
        assert {"student_layers", "teacher_layers"} <= set(cls.hyperparameters())
    # deprecated names point at current ones and are not hyperparameters themselves
    assert set(cls.renamed_hyperparameters.values()) <= set(cls.hyperparameters())
    assert not set(cls.renamed_hyperparameters) & set(cls.hyperparameters())
    assert isinstance(cls.min_batch_size, int) and cls.min_batch_size >= 1


@pytest.mark.parametrize("name", [n for n in METHOD_NAMES if METHODS[n].renamed_hyperparameters])
def test_deprecated_names_warn_and_mean_what_they_meant(name):
    cls = METHODS[name]
    for old, new in cls.renamed_hyperparameters.items():
        value = instantiate(name).hparams()[new] or "last"
        with pytest.warns(FutureWarning, match=rf"{old!r}.*deprecated.*use {new!r}"):
            m = instantiate(name, {old: value})
        assert m.hparams()[new] in (value, int(value) if str(value).isdigit() else value)
        with pytest.raises(ValueError, match="give only"):
            instantiate(name, {old: value, new: value})


def test_old_settings_keep_their_meaning():
    from hf_distill.run.config import parse_method_flags

    with pytest.warns(FutureWarning):
        # SP's old teacher_maps defaulted to "last" on its own; the new teacher_layers follows the student's
        assert instantiate("sp", {"student_maps": 2}).needs().teacher.maps == ("last",)
        # FitNet's old guided (student) layer defaulted to the hint (teacher) layer
        fit = instantiate("fitnet", {"hint_layer": 3})
        flags = parse_method_flags(["--nst-layers", "stage2", "--nst-layers_teacher", "1"], ["nst"])
        nst = instantiate("nst", flags["nst"])
    assert fit.needs().student.maps == (3,) and fit.needs().teacher.maps == (3,)
    assert nst.needs().student.maps == ("stage2",) and nst.needs().teacher.maps == (1,)


# -- every method on every zoo pair ----------------------------------------------------------------------------
@functools.cache
def _network(arch: str, seed: int) -> torch.nn.Module:
    """One zoo network per (architecture, seed), shared by the builds: a build only reads it (its dry run)."""
    return zoo_model(arch, seed=seed)


def _built_as_a_run_builds_it(name: str, teacher: str, student: str) -> DistillationMethod:
    """``name`` built as the recipe and the trainer build it: the networks the method owns attached first
    (:func:`~hf_distill.training.mutual.prepare_peers`: dml's peers, from ``--dml-peers``; a no-op for the others),
    then :func:`~hf_distill.training.distillation_model.build_distillation_model`'s dry run of the two zoo networks,
    which gives the method what it asks of them (OFD: the BatchNorm in front of each teacher map)."""
    m = instantiate(name)
    s_net, t_net = _network(student, 0), _network(teacher, 1)
    objective = DistillationObjective({name: m}, {name: 1.0})
    prepare_peers(objective, s_net, f"cifar_{student}", s_net.config.id2label, seed=0)
    return built(m, s_net, t_net, _DATA)


@pytest.mark.parametrize("teacher, student", ZOO_PAIRS)
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_zoo_pair(name, teacher, student):
    torch.manual_seed(0)
    try:
        m = _built_as_a_run_builds_it(name, teacher, student)
    except ValueError as e:  # only the refusal the method declares, in one line that names the method
        requirement, msg = METHODS[name].pair_requirement, str(e)
        assert requirement, f"{name} refuses {teacher} -> {student} but declares no pair_requirement: {msg}"
        assert requirement in msg and name in msg.lower() and "\n" not in msg, msg
        return
    s_spec, t_spec = zoo_spec(student), zoo_spec(teacher)
    terms, grad = _student_gradient(m.train(), s_spec, t_spec, batch=max(8, m.min_batch_size))
    assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms)
    assert grad > 0, f"{name}: no gradient reaches the student's features"


# -- the minimum batch ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kwargs", BATCH_METHODS)
def test_min_batch_size_is_what_the_loss_needs(name, kwargs):
    """At the declared minimum the loss teaches the student; one sample fewer and it does not: its gradient is
    under 1/1000 of that (a near-constant loss), it is not finite, or it is refused."""
    s_spec, t_spec = zoo_spec("resnet20"), zoo_spec("resnet56")
    torch.manual_seed(0)
    m = built(instantiate(name, kwargs), s_spec, t_spec, _DATA).train()
    need = m.min_batch_size
    terms, grad = _student_gradient(m, s_spec, t_spec, need)
    assert all(torch.isfinite(v) for v in terms) and grad > 0
    try:
        terms, small = _student_gradient(m, s_spec, t_spec, need - 1)
        degenerate = small < 1e-3 * grad or not all(torch.isfinite(v) for v in terms)
    except ValueError:
        degenerate = True
    assert degenerate, f"{name} learns from a batch of {need - 1}: its min_batch_size {need} is too high"


@pytest.mark.parametrize("name, kwargs", BATCH_METHODS)
def test_a_smaller_batch_is_refused_in_one_line(name, kwargs):
    m = instantiate(name, kwargs)
    need = m.min_batch_size
    check_batch_size({name: m}, need)  # enough
    with pytest.raises(ValueError) as err:
        check_batch_size({name: m}, need - 1)
    msg = str(err.value)
    assert (
        "\n" not in msg
        and msg.startswith(name)
        and f"at least {need}" in msg
        and f"batch of {need - 1}" in msg
    )


def test_with_gather_the_global_batch_counts_and_wrapped_bases_are_checked():
    sp = instantiate("sp", {"gather": True})
    check_batch_size({"sp": sp}, per_device=1, num_processes=2)  # 2 processes x 1 = the global batch of 2
    with pytest.raises(ValueError, match=r"global batch of 1 \(1 per device x 1 processes"):
        check_batch_size({"sp": sp}, per_device=1, num_processes=1)
    with pytest.raises(
        ValueError, match="batch of 1 per device"
    ):  # without gather each process's batch counts
        check_batch_size({"sp": instantiate("sp")}, per_device=1, num_processes=8)
    skd = instantiate("skd", {"base": "cskd"})
    with pytest.raises(ValueError, match=r"^skd \(its base cskd\) .* at least 2"):
        check_batch_size({"skd": skd}, per_device=1)
    check_batch_size({"kd": instantiate("kd"), "crd": instantiate("crd")}, per_device=1)  # no minimum


def test_the_trainer_refuses_a_batch_too_small_at_setup(tmp_path, tiny):
    from hf_distill import DistillationTrainer
    from tests.helpers import CIFAR_SPEC, trainer_args
    from tests.methods._common import zoo_model

    with pytest.raises(ValueError, match=r"^rkd compares the samples .* at least 3 .* batch of 1 per device"):
        DistillationTrainer(
            model=zoo_model("resnet8"),
            teacher=zoo_model("resnet20", seed=1),
            objective=DistillationObjective.from_names("rkd"),
            args=trainer_args(tmp_path / "out", per_device_train_batch_size=1),
            train_dataset=tiny.dataset,
            student_input=CIFAR_SPEC,
            teacher_input=CIFAR_SPEC,
        )

import pytest

from hf_distill.methods import DistillationObjective, resolve_objective
from hf_distill.methods.base import resolve_selectors
from hf_distill.methods.registry import instantiate
from hf_distill.run.config import parse_method_flags


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError) as e:
        resolve_objective("kdd")
    msg = str(e.value)
    assert "Unknown distillation method 'kdd'" in msg and "kd" in msg and "none" in msg


def test_weight_list_of_wrong_length():
    with pytest.raises(ValueError, match=r"--method_weights has 2 value\(s\) but the methods are 1: kd"):
        resolve_objective("kd", [1.0, 0.8])


def test_single_method_uses_its_own_defaults():
    spec = resolve_objective("kd")
    assert spec.methods == ("kd",) and spec.weights == (0.9,) and spec.ce_weight == 0.1


def test_explicit_weights_and_ce_weight():
    spec = resolve_objective("kd", [0.5], 1.0)
    assert spec.weights == (0.5,) and spec.ce_weight == 1.0


def test_baseline_has_no_methods_and_cannot_be_combined():
    spec = resolve_objective("none")
    assert spec.methods == () and spec.ce_weight == 1.0
    assert not DistillationObjective.from_spec(spec).needs_teacher
    with pytest.raises(ValueError, match="cannot be combined"):
        resolve_objective("none,kd")


def test_duplicate_method_rejected():
    with pytest.raises(ValueError, match="more than once"):
        resolve_objective("kd,kd")


def test_unknown_hyperparameter_names_valid_ones():
    with pytest.raises(ValueError, match=r"has no hyperparameter\(s\) temp\b.*temperature=None"):
        instantiate("kd", {"temp": 2})


def test_method_flags_are_parsed_and_checked():
    assert parse_method_flags(["--kd-temperature", "2"], ["kd"]) == {"kd": {"temperature": 2.0}}
    assert parse_method_flags(["--kd_temperature=3"], ["kd"]) == {"kd": {"temperature": 3.0}}
    with pytest.raises(ValueError, match="has no hyperparameter 'temp'"):
        parse_method_flags(["--kd-temp", "2"], ["kd"])
    with pytest.raises(ValueError, match="Unknown argument '--foo'"):
        parse_method_flags(["--foo", "1"], ["kd"])
    with pytest.raises(ValueError, match="is not selected"):
        parse_method_flags(["--kd-temperature", "2"], [])


def test_selectors_resolve_and_bad_name_lists_valid_names():
    names = ["stem", "stage1", "stage2", "stage3"]
    assert resolve_selectors(["stages"], names) == ["stage1", "stage2", "stage3"]
    assert resolve_selectors(["last"], names) == ["stage3"]
    assert resolve_selectors(["all"], names) == names
    assert resolve_selectors([2, "stage1"], names) == ["stage2", "stage1"]
    with pytest.raises(
        ValueError, match="'layer9' does not exist in the student. Valid layer names: stem, stage1"
    ):
        resolve_selectors(["layer9"], names, "student")
    with pytest.raises(ValueError, match="out of range"):
        resolve_selectors([7], names)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--ce_weight", "-1"], "--ce_weight is -1"),
        (["--method_weights", "-0.9"], "kd's weight in --method_weights is -0.9"),
        (["--method", "kd,crd", "--method_weights", "1,-1"], "crd's weight in --method_weights is -1"),
        (["--method_weights", "nan"], "kd's weight in --method_weights is nan"),
    ],
)
def test_a_negative_or_non_finite_weight_is_refused_in_one_line(argv, named):
    """A negative weight trains by gradient ascent on its term (its loss heads below zero): refused where the
    arguments are parsed, before anything runs."""
    from hf_distill.run.config import parse_args

    with pytest.raises(ValueError) as err:
        parse_args(argv)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(named) and "must be finite and >= 0" in msg and "Use 0" in msg
    parse_args(["--method", "kd,crd", "--method_weights", "1,0", "--ce_weight", "0"])  # 0 switches a term off


def test_the_objective_itself_refuses_a_negative_weight():
    with pytest.raises(ValueError, match="^the weight of kd is -1: loss weights must be finite and >= 0"):
        DistillationObjective({"kd": instantiate("kd")}, {"kd": -1.0})
    with pytest.raises(ValueError, match="^--ce_weight is -0.5"):
        DistillationObjective.from_names("kd", ce_weight=-0.5)

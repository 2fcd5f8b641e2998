"""The feature-map helpers shared by the map-based methods (hf_distill.methods.maps)."""

import numpy as np
import pytest
import torch

from hf_distill.methods import FeatureSpec
from hf_distill.methods.ab import AB
from hf_distill.methods.maps import (
    check_conv_maps,
    check_pairing,
    parse_selectors,
    parse_single_selector,
    pool_to_common_size,
    reduce_layers,
)
from hf_distill.methods.nst import NST
from hf_distill.methods.vid import VID


def test_pool_to_common_size_pools_the_larger_per_dimension():
    a, b = pool_to_common_size(torch.rand(1, 2, 8, 4), torch.rand(1, 3, 4, 8))
    assert a.shape == (1, 2, 4, 4) and b.shape == (1, 3, 4, 4)
    x, y = torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2, 2)
    px, py = pool_to_common_size(x, y)
    assert py is y  # already at the common size: untouched
    torch.testing.assert_close(px, x.reshape(1, 2, 2, 2, 2, 2).mean(dim=(3, 5)))


def test_parse_selectors():
    assert parse_selectors("stages", "x") == ("stages",)
    assert parse_selectors(" stage1 , -1,+2 ", "x") == ("stage1", -1, 2)
    assert parse_selectors(3, "x") == (3,)
    assert parse_selectors(np.int64(2), "x") == (2,)
    assert parse_selectors(["last", "2", 0], "x") == ("last", 2, 0)
    with pytest.raises(ValueError, match="--at-student-layers contains an empty layer selector"):
        parse_selectors("stage1,,stage2", "--at-student-layers")
    with pytest.raises(ValueError, match="selects no feature layer"):
        parse_selectors("", "--nst-student-layers")
    with pytest.raises(ValueError, match="selects no feature layer"):
        parse_selectors([], "--nst-student-layers")
    with pytest.raises(ValueError, match="must select feature maps"):
        parse_selectors(True, "x")
    with pytest.raises(ValueError, match="bad layer selector"):
        parse_selectors(["stage1", None], "x")
    with pytest.raises(ValueError, match="got float"):
        parse_selectors(1.5, "x")


def test_parse_single_selector():
    assert parse_single_selector("2", "x") == 2
    assert parse_single_selector("-1", "x") == -1
    assert parse_single_selector("last", "x") == "last"
    for bad in ("stages", "all", "stage1,stage2"):
        with pytest.raises(ValueError, match="--ft-student-layers must select exactly one feature map"):
            parse_single_selector(bad, "--ft-student-layers")


def test_pairing_and_conv_map_errors_name_layers_and_flags():
    with pytest.raises(
        ValueError, match=r"2 student and 1 teacher.*student: a, b; teacher: c.*--at-student-layers"
    ):
        check_pairing(["a", "b"], ["c"], "at", "--at-student-layers / --at-teacher-layers")
    with pytest.raises(ValueError, match="0 student and 0 teacher"):
        check_pairing([], [], "NST", "--nst-student-layers")
    check_pairing(["a"], ["c"], "at", "--at-student-layers / --at-teacher-layers")
    spec = FeatureSpec(names=("conv", "tok"), maps={"conv": (4, 2, 2), "tok": (5, 8)})
    check_conv_maps(spec, ["conv"], "student", "at", "--at-student-layers")
    with pytest.raises(
        ValueError, match=r"the teacher's layer 'tok' has shape \(5, 8\).*--ft-teacher-layers"
    ):
        check_conv_maps(spec, ["conv", "tok"], "teacher", "ft", "--ft-teacher-layers")
    with pytest.raises(ValueError, match="'gone' has no recorded shape"):
        check_conv_maps(spec, ["gone"], "student", "AB", "--ab-student-layers")


def test_paired_maps_selection_needs_and_checks():
    nst = NST(student_layers="stage2,stage3", teacher_layers="1,2")
    assert nst.needs().student.maps == ("stage2", "stage3") and nst.needs().teacher.maps == (1, 2)
    assert not nst.needs().student.preact
    assert NST().needs().teacher.maps == ("stages",)  # layers selects both sides
    ab = AB(teacher_layers="stage1")
    assert ab.needs().student.preact and ab.needs().teacher.preact
    assert ab.needs().student.maps == ("stages",) and ab.needs().teacher.maps == ("stage1",)
    assert ab.hparams()["student_layers"] == "stages" and ab.hparams()["teacher_layers"] == "stage1"
    with pytest.raises(ValueError, match="--nst-teacher-layers contains an empty"):
        NST(teacher_layers="a,,b")
    vid = VID(student_layers="stage1", teacher_layers="stage1,stage2")
    assert vid.hparams()["student_layers"] == "stage1"
    vid.student_layer_names, vid.teacher_layer_names = ["stage1"], ["stage1", "stage2"]
    with pytest.raises(ValueError, match="VID pairs .* --vid-student-layers / --vid-teacher-layers"):
        vid.check_maps()
    spec = FeatureSpec(names=("stage1", "stage2"), maps={"stage1": (4, 2, 2), "stage2": (5, 8)})
    vid.teacher_layer_names = ["stage2"]
    vid.check_maps(spec)  # the student's map is convolutional; the teacher's spec is not checked
    with pytest.raises(ValueError, match=r"VID needs convolutional \(C, H, W\).*teacher's layer 'stage2'"):
        vid.check_maps(spec, spec)


def test_reduce_layers():
    losses = [torch.tensor(1.0), torch.tensor(2.0), torch.tensor(6.0)]
    assert reduce_layers(losses, "sum").item() == 9.0
    assert reduce_layers(losses, "mean").item() == 3.0
    with pytest.raises(ValueError, match="no per-layer losses"):
        reduce_layers([], "sum")

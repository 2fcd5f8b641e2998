"""The suite's own scheduling: the long tests are handed out first (see tests/conftest.py)."""

import pytest

from tests.conftest import long_tests_first


class _Item:
    def __init__(self, name: str, *marks: str):
        self.name, self.marks = name, set(marks)

    def get_closest_marker(self, name: str):
        return name if name in self.marks else None


def test_long_tests_move_to_the_front_and_each_group_keeps_its_order():
    items = [
        _Item("a"),
        _Item("b", "slow"),
        _Item("c"),
        _Item("d", "multiprocess", "slow"),
        _Item("e", "multiprocess"),
    ]
    assert [i.name for i in long_tests_first(items)] == ["b", "d", "e", "a", "c"]


@pytest.mark.slow
def test_this_collection_started_with_the_long_tests(request):
    items = request.session.items
    long = [bool(i.get_closest_marker("slow") or i.get_closest_marker("multiprocess")) for i in items]
    assert long == sorted(long, reverse=True)

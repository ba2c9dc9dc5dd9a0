"""Sketches: adding many values at once leaves exactly the bins one add per value would."""

from __future__ import annotations

from ddsketch.mapping import LogarithmicMapping
from hypothesis import given
from hypothesis import strategies as st

from actors.sketch import RELATIVE_ACCURACY, add_all, key, new_sketch

values = st.floats(min_value=0.0, max_value=86_400.0, allow_nan=False)


@given(st.lists(st.floats(min_value=1e-300, max_value=1e300), min_size=1, max_size=200))
def test_sketch_key_is_the_libraries_own_mapping_bit_for_bit(xs):
    mapping = LogarithmicMapping(RELATIVE_ACCURACY)
    assert [key(x) for x in xs] == [mapping.key(x) for x in xs]


def ranks(sketch):
    """The value at every rank: the whole distribution of the bins, read through the public API."""
    n = int(sketch.count)
    return n, [sketch.get_quantile_value(k / (n - 1)) for k in range(n)] if n > 1 else sketch.get_quantile_value(0)


@given(st.lists(values, max_size=300), st.lists(values, max_size=30))
def test_sketch_add_all_leaves_the_bins_and_count_of_one_add_each(first, then):
    one_by_one, at_once = new_sketch(), new_sketch()
    for v in first + then:
        one_by_one.add(v)
    add_all(at_once, first)
    add_all(at_once, then)
    assert ranks(at_once) == ranks(one_by_one)
    assert abs(at_once.sum - one_by_one.sum) <= RELATIVE_ACCURACY * one_by_one.sum + 1e-12


def test_sketch_add_all_values_of_one_bin_read_back_as_that_bin_and_zeros_as_zero():
    s = new_sketch()
    add_all(s, [0.001] * 500 + [0.0010001] * 500 + [0.0] * 3)
    n, values = ranks(s)
    assert n == 1003 and values[:3] == [0, 0, 0] and len(set(values[3:])) == 1
    assert abs(values[3] - 0.001) <= 0.01 * 0.001


def test_sketch_add_all_values_on_and_beside_every_bin_edge_land_where_the_library_puts_them():
    import math

    from actors.sketch import _MULTIPLIER

    edges = [2 ** (k / _MULTIPLIER) for k in range(-1700, 1500, 3)]  # ~1e-7 ... 3e6 seconds
    values = [x for v in edges for x in (math.nextafter(v, 0.0), v, math.nextafter(v, math.inf))]
    one_by_one, at_once = new_sketch(), new_sketch()
    for v in values:
        one_by_one.add(v)
    add_all(at_once, values)
    assert ranks(at_once) == ranks(one_by_one)

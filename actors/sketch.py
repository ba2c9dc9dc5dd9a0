"""The latency sketches of `actors.metrics`: DDSketch at 1 % relative accuracy, and adding
many values at once.

`add_all(sketch, values)` leaves the sketch's bins and counts exactly as one `sketch.add(v)`
per value would, at a fraction of the cost: each value's bin key is computed here with the
sketch's own mapping (`LogarithmicMapping`, the same floating-point operations, checked
against the library in the tests), in C (`map`), and each bin then takes its values in one
weighted add to the sketch's store. Percentiles, counts and merges read only bins and
counts, so they are unchanged; the sketch's sum is the batch's sum (equal to one add each
up to rounding), its min and max exact. Nothing in Triage reads those three (the Prometheus
totals keep their own exact sums).
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import repeat
from math import ceil, log
from operator import mul

from ddsketch import LogCollapsingLowestDenseDDSketch as Sketch
from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
BIN_LIMIT = 1024
MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)  # the one each sketch makes for itself
# LogarithmicMapping's key: ceil(log2(v) * multiplier) + offset, multiplier = log(2) / log1p(m),
# computed as the library does (1 / log1p(m), then times log(2)), so keys match bit for bit.
_GAMMA_MANTISSA = 2 * RELATIVE_ACCURACY / (1 - RELATIVE_ACCURACY)
_MULTIPLIER = 1 / math.log1p(_GAMMA_MANTISSA)
_MULTIPLIER *= math.log(2)
_MIN_POSSIBLE = MAPPING.min_possible
_ABOVE_LOW = _MIN_POSSIBLE.__lt__
_BASE_2, _BY_MULTIPLIER = repeat(2), repeat(_MULTIPLIER)  # endless: map stops with the values
# Below this many values a plain add each is as cheap.
_FEW = 4


def new_sketch() -> Sketch:
    return Sketch(relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


def key(value: float) -> int:
    """The bin key of a positive value (above the mapping's `min_possible`)."""
    return int(math.ceil(math.log(value, 2) * _MULTIPLIER))


def add_all(sketch: Sketch, values: list[float]) -> None:
    """`sketch.add(v)` for each of `values` (non-negative), one weighted add per bin.

    The per-value work runs in C (`filter`, `map`, `Counter`); each bin then goes straight to
    the sketch's store, and its count, sum, min and max are updated once for the batch, as
    `sketch.add` updates them (ddsketch's own attributes: guarded by tests/kernel/test_sketch.py
    and test_metrics_sketch_add_all_matches_ddsketch, which compare with one add per value).
    """
    n = len(values)
    if n < _FEW:
        for v in values:
            sketch.add(v)
        return
    if not any(values):  # all zero (no queue wait): the zero count, in one add
        sketch.add(values[0], n)
        return
    positive = list(filter(_ABOVE_LOW, values))  # v > min_possible, as `sketch.add` tests it
    zeros = n - len(positive)
    if zeros:  # zero (no queue wait, a clamped duration): the sketch's zero count, in one add
        sketch.add(next(v for v in values if not v > _MIN_POSSIBLE), zeros)
    if not positive:
        return
    store_add = sketch._store.add
    for k, count in Counter(map(ceil, map(mul, map(log, positive, _BASE_2), _BY_MULTIPLIER))).items():
        store_add(k, count)
    sketch._count += len(positive)
    sketch._sum += sum(positive)
    low, high = min(positive), max(positive)
    if low < sketch._min:
        sketch._min = low
    if high > sketch._max:
        sketch._max = high

"""The latency sketches of `actors.metrics`: DDSketch at 1 % relative accuracy, and adding
many values at once.

`add_all(sketch, values)` leaves the sketch's bins and count exactly as one `sketch.add(v)`
per value would, at a fraction of the cost: each value's bin key is computed here with the
sketch's own mapping (`LogarithmicMapping`, the same floating-point operations, checked
against the library in the tests), and each bin then takes its values in one weighted
`add`. Percentiles, counts and merges read only bins and counts, so they are unchanged.
The representative value of a bin is its values' mean (or, should rounding carry the mean
across the bin's edge, its first value), so the sketch's sum stays the values' sum.
"""

from __future__ import annotations

import math

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
# Below this many values a plain add each is as cheap.
_FEW = 4


def new_sketch() -> Sketch:
    return Sketch(relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


def key(value: float) -> int:
    """The bin key of a positive value (above the mapping's `min_possible`)."""
    return int(math.ceil(math.log(value, 2) * _MULTIPLIER))


def add_all(sketch: Sketch, values: list[float]) -> None:
    """`sketch.add(v)` for each of `values` (non-negative), one weighted add per bin."""
    if len(values) < _FEW:
        for v in values:
            sketch.add(v)
        return
    log, ceil, multiplier = math.log, math.ceil, _MULTIPLIER
    bins: dict[int, list] = {}
    for v in values:
        if v > _MIN_POSSIBLE:
            k = int(ceil(log(v, 2) * multiplier))
            b = bins.get(k)
            if b is None:
                bins[k] = [v, 1, v]
            else:
                b[0] += v
                b[1] += 1
        else:
            sketch.add(v)  # zero (a clamped duration): the sketch's zero count
    add = sketch.add
    for k, (total, n, first) in bins.items():
        if n == 1:
            add(first)
        else:
            mean = total / n
            add(mean if key(mean) == k else first, n)

"""The latency sketches of `actors.metrics`: DDSketch at 1 % relative accuracy, and adding
many values at once.

`add_all(sketch, values)` leaves the sketch exactly as one `sketch.add(v)` per value would
(bins, counts, sum, min, max), at half the cost: ddsketch's add arithmetic in one loop, its
usual case (a key inside the store's range) done in place. `key(value)` is the bin key the
sketch's own mapping (`LogarithmicMapping`) gives, computed as the library does.
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


def new_sketch() -> Sketch:
    return Sketch(relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


def key(value: float) -> int:
    """The bin key of a positive value (above the mapping's `min_possible`)."""
    return int(math.ceil(math.log(value, 2) * _MULTIPLIER))


def add_all(sketch: Sketch, values: list[float]) -> None:
    """`sketch.add(v)` for each clamped value (0 <= v <= MAX_VALUE_S), in order, in one loop.

    Every guarded call and request adds two values; ddsketch's `add` takes ~0.65 µs a value
    here, mostly four method calls around a few lines of arithmetic, and this loop ~0.33 µs
    (128 values of 0.2-0.6 ms at a time, a loaded 2-core machine). It is that arithmetic (its
    LogarithmicMapping's key, the dense store's bin) with the usual case, a key inside the
    store's range, done in place, and everything else left to ddsketch's store. Leaves the
    sketch exactly as the adds would (same bins, counts, sum, min, max). Reads ddsketch 3's
    private fields: pinned by test_metrics_sketch_add_all_matches_ddsketch and tests/kernel/test_sketch.py.
    """
    mapping, store = sketch._mapping, sketch._store
    floor, multiplier, key_offset = mapping.min_possible, mapping._multiplier, mapping._offset
    log, ceil = math.log, math.ceil
    bins, offset, min_key, max_key = store.bins, store.offset, store.min_key, store.max_key
    total, low, high = sketch._sum, sketch._min, sketch._max
    zeros = in_place = 0  # whole counts: adding them at the end is exact, as 1.0 at a time is
    for value in values:
        if value > floor:
            key = int(ceil(log(value, 2) * multiplier) + key_offset)
            if min_key <= key <= max_key:
                bins[key - offset] += 1.0
                in_place += 1
            else:  # outside the range: ddsketch grows (or collapses) the store
                store.add(key, 1.0)
                bins, offset, min_key, max_key = store.bins, store.offset, store.min_key, store.max_key
        else:
            zeros += 1
        total += value
        if value < low:
            low = value
        if value > high:
            high = value
    store.count += in_place
    sketch._zero_count += zeros
    sketch._count += len(values)
    sketch._sum, sketch._min, sketch._max = total, low, high

"""Rate limiter: the pure core (no I/O, no trio, no clock reads).

Two algorithms, chosen per policy (`PolicySpec.algorithm`): ``"gcra"`` below, and
``"sliding_window"``, an exact log of the admitted units (`actors.sliding_window`): at
most `limit` in any window, at 8 bytes a unit of the limit, so meant for small limits.
Both share the key table, its LRU order, eviction, expiry and compaction described here.

Algorithm: GCRA (generic cell rate algorithm, the "virtual scheduling" form of a
leaky bucket). A policy is `limit` requests per `window_s` seconds with a burst of
`limit`. Its emission interval is ``T = window_s / limit``. The whole state of a key
is one number, its theoretical arrival time TAT. A request of cost ``c`` at ``now``:

    tat = max(TAT, now)
    allowed  iff  tat + c*T - now <= limit*T        (= window_s)
    if allowed: TAT = tat + c*T                     (a refusal changes nothing)

so a fresh key can make exactly `limit` requests at one instant, then one more
every T, and has its full quota back `window_s` after a burst. Over any interval
of length D at most ``limit + floor(D / T)`` cost units are allowed.

Why GCRA: one float per key (a fixed-window counter needs a count and a window
start and lets 2x the limit through at a window edge; a sliding log needs `limit`
timestamps per key: offered as `sliding_window`, for small limits), exact burst and rate, O(1) per decision, and every number a
client wants (remaining, reset, retry-after) follows from TAT without more state.

Time. ``now`` (seconds, monotonic) is the only clock. It is quantised to whole
microseconds on entry and all arithmetic is done on integral microsecond values
held in floats, which is exact below 2**53 us (285 years), so bursts and the
"one more every T" step are exact (0.6 s is not a binary fraction; 600000 us is).
T is rounded *up* to whole microseconds when window_s/limit is not a whole number
of microseconds: the effective window is then ``limit * T`` (longer than window_s
by less than `limit` microseconds), never shorter. The five spec policies are
exact. ``now`` is expected to be non-decreasing; a step backwards is tolerated (it
is treated as an earlier request) but the guarantees below assume monotonic time.

Idle keys. When ``TAT <= now`` the key is indistinguishable from a key never
seen: ``max(TAT, now) == now`` in every formula. Dropping such a key therefore
changes no later decision (for non-decreasing ``now``), which is what `expire()`
does and what lets the table forget keys freely.

The key table (memory). One dict for all policies, mapping ``prefix + key`` to
TAT (a float, microseconds), where ``prefix`` is a single character naming the
policy (``chr(i)`` for the i-th policy). Per key that is one str (the key plus one
character: 61 bytes for "user:123456"), one float (24 bytes) and a share of the
dict (a 16-byte entry and a 4-byte index per slot of a str-keyed dict: 31-38 bytes
per key when compact, up to 64 before a rebuild, see below). Measured with
tracemalloc (scripts/bench/limiter_core.py, keys "user:<i>"): 122 B/key at 100k
keys and 116 at 1M freshly filled; 123 and 148 in the steady state of a full table
under churn. A sliding-window key holds its log instead of a float: a bytearray of
8 * limit bytes (32 + 8 * limit bytes more than a float; see `actors.sliding_window`).
Rejected alternatives: a dict per policy needs a second structure
for one LRU order across policies; ``(policy, key)`` tuples cost 56 bytes more
per key; an int TAT costs 8 more (ints are 28-32 bytes, floats 24); ``hash(key)``
ints instead of strings save ~30 bytes of key but turn the dict into a general
one (24-byte entries: 10-20 bytes more per key), and two keys with equal hashes
would share one quota, so the exact string is kept.

Eviction. The dict's insertion order is the LRU order: every check, allowed or
not, pops the key and re-inserts it at the end (a refused client is an active one;
evicting it would hand it a fresh quota). At most `max_keys` keys are stored; a
new key arriving at a full table evicts the least-recently-used keys from the
front, ``max(1, max_keys // 256)`` at a time. CPython finds the front of a dict by
scanning past the deleted slots there, one by one from the start, and they pile
up until the dict is next resized; evicting one key at a time therefore costs
O(evictions so far) per eviction (measured: 31 us per check at 100k keys against
1.5 us in batches). Evicting a key that is not idle loses its state (its owner
gets a fresh quota), the price of bounded memory. `peek()` does not refresh a key.

Compaction. CPython never shrinks a dict, and when a dict whose slots are used up
by deleted entries (LRU pops, evictions, expiry) needs room, it re-allocates for
3 x len: 77 bytes per key for the dict alone at 100k keys. Every
``max(1024, len // 64)`` checks, and on every `expire()`, the table compares
``sys.getsizeof`` of its dict (O(1)) with `_DICT_MAX_BYTES_PER_KEY` (64) per key
and, above it, rebuilds the dict: an O(len) copy that CPython sizes for
1.5 x len, about 7 ms for 100k keys and 160 ms for 1M (a pause of the same order
as CPython's own resize). That also returns the memory of expired keys.

Lending (`lend` > 0; the limiter actor lends, see `actors.limiter`). After deciding on a key
the table may lend it: its state moves into a `Lease` (the dict keeps the key, valued by the
lease, so counts, LRU place and eviction still see it) listed in `lent`, where callers decide
on it themselves (`LentKeys.check` / `peek`) with the same `_decide` the table uses, counted
in the same policy stats. The owner reaches a lent key's state through its lease (a check,
peek, expiry) and takes leases back: `review_lent()` returns those no caller used since the
last review, reset drops them with their keys. Eviction passes over lent keys (they are in
use; their LRU place is only refreshed at reviews). At most `lend` keys are lent at once.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from itertools import islice

import msgspec

from actors.sliding_window import LogDecision, fresh_log, log_idle, log_peek, log_take
from messages.errors import InvalidArgument, InvalidArgumentType, TriageError

__all__ = ["ALGORITHMS", "Lease", "LentKeys", "LimiterTable", "PolicySpec", "RateDecision",
           "UnknownPolicy", "check_cost"]

ALGORITHMS = ("gcra", "sliding_window")

_US = 1_000_000  # microseconds per second
# Largest effective window (limit * T, microseconds): keeps TAT arithmetic exact in floats.
_MAX_WINDOW_US = 2**50
# Rebuild the key dict when it holds more than this many bytes per live key (see module doc).
_DICT_MAX_BYTES_PER_KEY = 64
_DICT_SLACK_BYTES = 16_384  # small dicts: don't rebuild for a few kilobytes
_MAINTAIN_MIN_OPS = 1024
_ALL: frozenset[str] = frozenset({"\x00every key: rate limiting is disabled"})  # a sentinel
_floor = math.floor


class RateDecision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The answer to one check (or peek). Instants are on the caller's ``now`` clock and,
    like every duration here, exact to the microsecond (``now`` is rounded to one)."""

    allowed: bool
    policy: str
    limit: int
    remaining: int  # 0..limit, requests still allowed right now after this decision
    reset_at: float  # instant when the quota is fully restored
    reset_after_s: float  # reset_at - now, >= 0
    # Instant when more quota is available (the next unit back: the draft's `t`); now when
    # nothing is used. GCRA: a unit every T; sliding window: the oldest counted unit leaves.
    # (No `more_after_s` beside it: one field less to build per decision on the hot path.)
    more_at: float
    retry_after_s: float  # 0 when allowed; else seconds until a request of this cost is allowed
    # Why a refusal can never turn into an allowance: "cost_exceeds_limit" (retry_after_s = inf).
    reason: str | None = None


class PolicySpec(msgspec.Struct, frozen=True, kw_only=True):
    """`limit` requests per `window_s` seconds: GCRA with burst = limit, or an exact window."""

    limit: int
    window_s: float
    algorithm: str = "gcra"

    def __post_init__(self) -> None:
        if type(self.limit) is not int:
            raise TypeError(f"limit must be an int, got {self.limit!r}")
        if self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if isinstance(self.window_s, bool) or not isinstance(self.window_s, int | float):
            raise TypeError(f"window_s must be a number of seconds, got {self.window_s!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0, got {self.window_s!r}")
        if round(self.window_s * _US) < 1:
            raise ValueError(f"window_s must be at least 1 microsecond, got {self.window_s!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {self.algorithm!r}")
        if _interval_us(self) * self.limit > _MAX_WINDOW_US:
            raise ValueError(f"limit={self.limit} per window_s={self.window_s!r} is too large")


class UnknownPolicy(TriageError, KeyError):
    """A check named a policy the table was not built with."""

    def __init__(self, policy: str, known: Iterable[str] = ()) -> None:
        self.policy = policy
        self.known = tuple(known)
        super().__init__(
            f"unknown rate-limit policy {policy!r}; known: {', '.join(self.known) or '(none)'}"
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


def _interval_us(spec: PolicySpec) -> int:
    """Emission interval T in whole microseconds (rounded up, never zero)."""
    return max(1, -(-round(spec.window_s * _US) // spec.limit))


class _Rate:
    """A PolicySpec turned into microsecond constants (floats holding integers)."""

    __slots__ = ("limit", "interval", "window", "spec", "sliding")

    def __init__(self, spec: PolicySpec, algorithm: str | None = None) -> None:
        if not isinstance(spec, PolicySpec):
            raise TypeError(f"expected a PolicySpec, got {spec!r}")
        t = _interval_us(spec)
        self.spec = spec
        self.limit = spec.limit
        self.interval = float(t)  # T
        # A key's override keeps its policy's algorithm (`algorithm`), whatever its own spec says.
        self.sliding = (algorithm or spec.algorithm) == "sliding_window"
        # GCRA: limit * T, the effective window (burst tolerance + T); a log: the window itself.
        self.window = float(round(spec.window_s * _US) if self.sliding else t * spec.limit)


class _Policy(_Rate):
    __slots__ = ("name", "prefix", "overrides", "allowed", "rejected", "exempted", "keys")

    def __init__(self, name: str, prefix: str, spec: PolicySpec, overrides: dict | None) -> None:
        super().__init__(spec)
        self.name = name
        self.prefix = prefix
        self.overrides = overrides  # key -> _Rate, or None when the policy has none
        self.allowed = 0
        self.rejected = 0
        self.exempted = 0
        self.keys = 0


class Lease:
    """One key's state lent to callers (see "Lending" in the module doc)."""

    __slots__ = ("state", "policy", "rate", "used")

    def __init__(self, state: float | bytearray, policy: _Policy, rate: _Rate) -> None:
        self.state, self.policy, self.rate = state, policy, rate
        self.used = True  # since the last review


class LentKeys:
    """The callers' side of lending: a decision on a lent key (or a bypassed one) made in the
    caller's task with the table's own `_decide`, or None when the caller must ask the owner.

    Nothing here awaits, so a caller's lookup and its decision see the same lease; the owner
    takes leases back only in its own step, which never runs between the two.
    """

    __slots__ = ("_policies", "_leases", "_bypass", "_exempt")

    def __init__(self, policies: dict[str, _Policy], leases: dict[str, Lease],
                 bypass: frozenset | None, exempt: frozenset) -> None:
        self._policies, self._leases = policies, leases
        self._bypass, self._exempt = bypass, exempt

    def __len__(self) -> int:
        return len(self._leases)

    def check(self, policy: str, key: str, now: float, cost: int = 1) -> RateDecision | None:
        """`LimiterTable.check` for a lent or bypassed key; None for any other (ask the owner).
        `cost` must already be valid (`check_cost`)."""
        p = self._policies.get(policy)
        if p is None:
            return None  # the owner answers UnknownPolicy
        bypass = self._bypass
        if bypass is not None and (bypass is _ALL or key in bypass):
            r = p if p.overrides is None else p.overrides.get(key, p)
            return _free_pass(p, r, key, now, self._exempt)
        lease = self._leases.get(p.prefix + key)
        if lease is None or cost > lease.rate.limit:
            return None  # not lent, or a refusal the owner words (cost_exceeds_limit)
        lease.used = True
        lease.state, decision = _decide(p, lease.rate, lease.state, _floor(now * 1e6 + 0.5), cost)
        return decision

    def peek(self, policy: str, key: str, now: float) -> RateDecision | None:
        """`LimiterTable.peek` for a lent or bypassed key; None for any other (ask the owner)."""
        p = self._policies.get(policy)
        if p is None:
            return None
        bypass = self._bypass
        if bypass is not None and (bypass is _ALL or key in bypass):
            return _pass(policy, (p if p.overrides is None else p.overrides.get(key, p)).limit, now)
        lease = self._leases.get(p.prefix + key)
        if lease is None:
            return None
        return _peek(policy, lease.rate, lease.state, _floor(now * 1e6 + 0.5))


class LimiterTable:
    """Per (policy, key) GCRA quotas in a bounded LRU table. Not thread-safe; one owner.

    `lend` > 0: up to that many keys at once are lent to callers (see "Lending" in the module
    doc) through `lent`; 0 (the default): every decision is the owner's, `lent` decides none.
    """

    def __init__(
        self,
        policies: dict[str, PolicySpec],
        *,
        max_keys: int = 100_000,
        overrides: dict[str, dict[str, PolicySpec]] | None = None,
        exempt: frozenset[str] = frozenset(),
        enabled: bool = True,
        lend: int = 0,
    ) -> None:
        if type(max_keys) is not int or max_keys < 1:
            raise ValueError(f"max_keys must be an int >= 1, got {max_keys!r}")
        if type(lend) is not int or lend < 0:
            raise ValueError(f"lend must be an int >= 0, got {lend!r}")
        overrides = overrides or {}
        for name in overrides:
            if name not in policies:
                raise UnknownPolicy(name, tuple(policies))
        self._policies: dict[str, _Policy] = {}
        self._by_prefix: dict[str, _Policy] = {}
        for i, (name, spec) in enumerate(policies.items()):
            if not isinstance(name, str):
                raise TypeError(f"policy names must be str, got {name!r}")
            own = overrides.get(name)
            ov = {k: _Rate(s, spec.algorithm) for k, s in own.items()} if own else None
            p = _Policy(name, chr(i), spec, ov)
            self._policies[name] = p
            self._by_prefix[p.prefix] = p
        self._max_keys = max_keys
        self._evict_batch = max(1, max_keys // 256)
        self._exempt = frozenset(exempt)
        self._enabled = bool(enabled)
        # One attribute test on the hot path: None, or _ALL (disabled), or the exempt keys.
        self._bypass = _ALL if not self._enabled else (self._exempt or None)
        self._tat: dict[str, float | bytearray | Lease] = {}  # TAT, or a log; or lent: its Lease
        self._lend = lend
        self._lent: dict[str, Lease] = {}  # never rebound: `lent` reads it
        self.lent = LentKeys(self._policies, self._lent, self._bypass, self._exempt)
        self._evictions = 0
        self._expired = 0
        self._compactions = 0
        self._tick = _MAINTAIN_MIN_OPS

    # -- decisions ---------------------------------------------------------------------------

    def check(self, policy: str, key: str, now: float, cost: int = 1) -> RateDecision:
        """Decide one request of `cost` units for `key` under `policy` at `now`, and record it."""
        try:
            p = self._policies[policy]
        except KeyError:
            raise UnknownPolicy(policy, tuple(self._policies)) from None
        r = p if p.overrides is None else p.overrides.get(key, p)
        if cost != 1:
            check_cost(cost)
        bypass = self._bypass
        if bypass is not None and (bypass is _ALL or key in bypass):
            return _free_pass(p, r, key, now, self._exempt)
        if cost > r.limit:
            return self._beyond_limit(p, key, now)
        self._tick -= 1
        if self._tick <= 0:
            self._maintain()
        nu = _floor(now * 1e6 + 0.5)  # whole microseconds
        k = p.prefix + key
        d = self._tat
        state = d.pop(k, None)  # pop + re-insert: the dict's order is the LRU order
        if state is None:
            if len(d) >= self._max_keys:
                self._evict()
            p.keys += 1
            state = fresh_log(r.limit) if r.sliding else 0.0
        elif type(state) is Lease:  # lent, yet asked here (callers raced the loan): stays lent
            lease = state
            lease.state, decision = _decide(p, r, lease.state, nu, cost)
            d[k] = lease
            return decision
        state, decision = _decide(p, r, state, nu, cost)
        if self._lend and self._lend > len(self._lent):
            d[k] = self._lent[k] = Lease(state, p, r)
        else:
            d[k] = state
        return decision

    def peek(self, policy: str, key: str, now: float) -> RateDecision:
        """The state of `key` as a cost-1 check would see it, consuming nothing.

        `allowed` says whether a cost-1 check would pass now, `remaining` how many would,
        `retry_after_s` when the next one would. Nothing is recorded: no quota, no stats,
        no LRU position, no new key.
        """
        try:
            p = self._policies[policy]
        except KeyError:
            raise UnknownPolicy(policy, tuple(self._policies)) from None
        r = p if p.overrides is None else p.overrides.get(key, p)
        bypass = self._bypass
        if bypass is not None and (bypass is _ALL or key in bypass):
            return _pass(policy, r.limit, now)
        state = self._tat.get(p.prefix + key)
        if type(state) is Lease:
            state = state.state
        return _peek(policy, r, state, _floor(now * 1e6 + 0.5))

    def _beyond_limit(self, p: _Policy, key: str, now: float) -> RateDecision:
        """A cost above the limit can never be allowed: a refusal that says so, consuming nothing."""
        p.rejected += 1
        seen = self.peek(p.name, key, now)
        return msgspec.structs.replace(seen, allowed=False, retry_after_s=math.inf,
                                       reason="cost_exceeds_limit")

    # -- lending -------------------------------------------------------------------------------

    def review_lent(self) -> int:
        """Take back the leases no caller used since the last review; return how many.

        A lease still in use stays lent and moves to the LRU end (its key is in use: that is
        its LRU refresh); one taken back keeps its LRU place, its state back in the table.
        """
        d, lent = self._tat, self._lent
        back = [k for k, lease in lent.items() if not lease.used]
        for k in back:
            d[k] = lent.pop(k).state  # an existing key: its LRU place is kept
        for k, lease in lent.items():
            lease.used = False
            del d[k]
            d[k] = lease
        return len(back)

    # -- table maintenance -------------------------------------------------------------------

    def reset(self, policy: str | None = None, key: str | None = None) -> None:
        """Forget quota state: everything, one policy's keys, one key in every policy, or one
        (policy, key). Counters in `stats()` are cumulative and are not reset."""
        if policy is not None and policy not in self._policies:
            raise UnknownPolicy(policy, tuple(self._policies))
        d = self._tat
        if key is not None:
            pols = [self._policies[policy]] if policy is not None else self._policies.values()
            for p in pols:
                if d.pop(p.prefix + key, None) is not None:
                    self._lent.pop(p.prefix + key, None)
                    p.keys -= 1
                    self._tick -= 1
        elif policy is not None:
            p = self._policies[policy]
            prefix = p.prefix
            self._tat = {k: v for k, v in d.items() if k[0] != prefix}
            for k in [k for k in self._lent if k[0] == prefix]:
                del self._lent[k]
            p.keys = 0
        else:
            self._tat = {}
            self._lent.clear()
            for p in self._policies.values():
                p.keys = 0

    def expire(self, now: float, budget: int = 1000) -> int:
        """Drop idle keys (TAT <= now) among the `budget` least-recently-used ones; return how
        many were dropped.

        Dropping an idle key never changes a later decision (see the module doc), so this can
        run at any time. It looks at no more than `budget` keys per call (plus a C-level skip
        over deleted dict slots at the front, ~1 ns each), so it can run often in small
        slices. Keys are examined in LRU order: a key last used more than its window ago is
        idle, so the oldest keys go first; an active key at the front stays where it is (it
        is not rotated, which would falsify the LRU order) and goes idle within its window.
        Each call is also the table's maintenance point (see "Compaction" in the module doc).
        """
        if budget < 1:
            return 0
        nu = _floor(now * 1e6 + 0.5)
        d = self._tat
        idle = [k for k, v in islice(d.items(), budget) if (v <= nu if type(v) is float else _idle(v, nu))]
        by_prefix, lent = self._by_prefix, self._lent
        for k in idle:
            del d[k]
            by_prefix[k[0]].keys -= 1
            if lent:
                lent.pop(k, None)
        self._expired += len(idle)
        self._maintain()  # O(1) unless the dict needs a rebuild (amortised O(1) per key)
        return len(idle)

    def _evict(self) -> None:
        """Make room for a new key: drop the least-recently-used batch from the front."""
        d, lent, batch = self._tat, self._lent, self._evict_batch
        if not lent:
            victims = list(islice(d, batch))
        else:
            # A lent key is in use by callers (its LRU place is refreshed only at reviews): it
            # is passed over and goes to the LRU end, unless only lent keys are left.
            victims, passed = [], []
            for k in islice(d, batch + len(lent)):
                (passed if k in lent else victims).append(k)
                if len(victims) == batch:
                    break
            if victims:
                for k in passed:
                    d[k] = d.pop(k)
            else:
                victims = passed[:batch]
                for k in victims:
                    del lent[k]
        by_prefix = self._by_prefix
        for k in victims:
            del d[k]
            by_prefix[k[0]].keys -= 1
        self._evictions += len(victims)
        self._tick -= len(victims)

    def _maintain(self) -> None:
        """Rebuild the key dict if deleted slots and slack cost more than the per-key bound."""
        d = self._tat
        n = len(d)
        size = sys.getsizeof(d)
        if size > _DICT_MAX_BYTES_PER_KEY * n + _DICT_SLACK_BYTES:
            new = dict(d)  # CPython sizes a copy of a dict with holes for 1.5 x len
            if sys.getsizeof(new) >= size:  # a hole-free dict is cloned as is: re-insert instead
                new = {k: v for k, v in d.items()}
            self._tat = new
            self._compactions += 1
        self._tick = max(_MAINTAIN_MIN_OPS, n >> 6)

    def __len__(self) -> int:
        """Number of (policy, key) states held."""
        return len(self._tat)

    def key_dict_bytes(self) -> int:
        """Bytes of the key dict itself (what compaction keeps near 64 a key), O(1)."""
        return sys.getsizeof(self._tat)

    def stats(self) -> dict:
        """Counters: per policy allowed / rejected (violations) / exempt / keys; table totals."""
        return {
            "enabled": self._enabled,
            "keys": len(self._tat),
            "max_keys": self._max_keys,
            "evictions": self._evictions,
            "expired": self._expired,
            "compactions": self._compactions,
            "lent": len(self._lent),
            "policies": {
                name: {
                    "limit": p.limit,
                    "window_s": float(p.spec.window_s),
                    "allowed": p.allowed,
                    "rejected": p.rejected,
                    "exempt": p.exempted,
                    "keys": p.keys,
                }
                for name, p in self._policies.items()
            },
        }


def _pass(policy: str, limit: int, now: float) -> RateDecision:
    """Exempt key or limiting disabled: allowed, nothing consumed."""
    return RateDecision(
        allowed=True,
        policy=policy,
        limit=limit,
        remaining=limit,
        reset_at=now,
        reset_after_s=0.0,
        more_at=now,
        retry_after_s=0.0,
    )


def _free_pass(p: _Policy, r: _Rate, key: str, now: float, exempt: frozenset) -> RateDecision:
    p.allowed += 1
    if key in exempt:
        p.exempted += 1
    return _pass(p.name, r.limit, now)


def _decide(p: _Policy, r: _Rate, state: float | bytearray, nu: float,
            cost: int) -> tuple[float | bytearray, RateDecision]:
    """The one decision: `cost` units at `nu` (whole µs) for a key whose state is `state`.

    Returns the key's new state (a window log is updated in place) and the answer, counted in
    the policy's stats. The owner (`LimiterTable.check`) and callers on lent keys
    (`LentKeys.check`) both decide here. (A second gate, such as fleet-wide credits, would
    plug in here: consulted once the local rule allows, before the new state is kept.)
    """
    if r.sliding:
        allowed, remaining, more, reset, retry = log_take(state, nu, r.window, cost)  # type: ignore[arg-type]
    else:  # GCRA, see the module doc
        tat = state if state > nu else nu  # type: ignore[operator]
        interval, window = r.interval, r.window
        new = tat + cost * interval
        if new - nu <= window:
            allowed, state, reset, retry = True, new, new, nu
            remaining = int((nu + window - new) // interval)
            more = new - window + (remaining + 1) * interval  # when `remaining` next grows by one
        else:  # refused: TAT unchanged (and > now, as cost <= limit)
            left = nu + window - tat  # < 0 only if `now` went backwards
            remaining = int(left // interval) if left > 0 else 0
            allowed, state, reset, retry = False, tat, tat, new - window
            more = tat - window + (remaining + 1) * interval
    if allowed:
        p.allowed += 1
    else:
        p.rejected += 1
    return state, RateDecision(allowed=allowed, policy=p.name, limit=r.limit, remaining=remaining,
                               reset_at=reset / 1e6, reset_after_s=(reset - nu) / 1e6,
                               more_at=more / 1e6, retry_after_s=(retry - nu) / 1e6)


def _peek(policy: str, r: _Rate, state: float | bytearray | None, nu: float) -> RateDecision:
    """What a cost-1 `_decide` would answer, changing nothing."""
    if r.sliding:
        return _from_log(policy, r.limit, nu, log_peek(state, nu, r.limit))  # type: ignore[arg-type]
    tat = nu if state is None or state < nu else state  # type: ignore[operator]
    interval, window = r.interval, r.window
    new = tat + interval
    allowed = new - nu <= window
    left = nu + window - tat
    units = int(left // interval) if left > 0 else 0
    more = nu if units >= r.limit else tat - window + (units + 1) * interval
    return RateDecision(allowed=allowed, policy=policy, limit=r.limit, remaining=units,
                        reset_at=tat / 1e6, reset_after_s=(tat - nu) / 1e6, more_at=more / 1e6,
                        retry_after_s=0.0 if allowed else (new - window - nu) / 1e6)


def _idle(v: float | bytearray | Lease, nu: float) -> bool:
    if type(v) is Lease:
        v = v.state
    return log_idle(v, nu) if type(v) is bytearray else v <= nu


def _from_log(policy: str, limit: int, nu: float, out: LogDecision) -> RateDecision:
    allowed, remaining, more, reset, retry = out
    return RateDecision(
        allowed=allowed,
        policy=policy,
        limit=limit,
        remaining=remaining,
        reset_at=reset / 1e6,
        reset_after_s=(reset - nu) / 1e6,
        more_at=more / 1e6,
        retry_after_s=(retry - nu) / 1e6,
    )


def check_cost(cost: object) -> None:
    """A cost is a whole number of units >= 1 (above the limit is a refusal, not an error)."""
    if type(cost) is not int:
        raise InvalidArgumentType(f"cost must be an int, got {cost!r}")
    if cost < 1:
        raise InvalidArgument(f"cost must be >= 1, got {cost}")

"""The fleet gate: a global limit per (policy, key) from leased credits, no round trip per request.

Theory of operation. `mon.check_rate` asks the local limiter first (today's decision, per
instance); only a local allow comes here (`admit`). The gate holds, per key, credits leased
from Redis (`actors.fleet.lease`) that expire tau after their grant. Spending one is a dict
lookup and a subtraction. When a key's credits fall to half a batch, the key is queued for a
refill and the background task (`run`) sends every queued lease and every due refund of one
tick in one pipeline — one round trip. Only a request on a key this instance holds no credit
for waits, for at most the Redis timeout. A zero grant is remembered until Redis said the
next token is due: refusals cost no round trip either. Credits that expire unspent are
refunded.

    batch (want) = clamp(ceil(rate * tau / 2), 1, max_batch)     rate = limit / window

Modes per policy (`modes`, for /metrics and the fleet view): ``global`` while Redis answers;
when its breaker opens (`actors.fleet.link`), the policy's `on_fleet_down`: ``local`` (the
local decision stands: L per instance) or ``share`` (L / N each, N the last live count from
the heartbeats, at least 1 a key: each instance keeps a table of its own at that limit).
A request whose refill fails or times out before the breaker has opened gets its policy's
fallback too. Never fail closed. Credits held when Redis goes are dropped (not spent), so the
bounds hold across the switch; recovery is the breaker's trial call succeeding.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Any

import trio
from loguru import logger
from msgspec.structs import replace

from actors.fleet.lease import LEASE_LUA, REFUND_LUA, US, interval_us
from actors.fleet.link import RedisLink, RedisUnavailable
from actors.limiter_core import LimiterTable, PolicySpec, RateDecision
from messages.config import Config

__all__ = ["FleetGate", "lease_want"]

LEASE_SHA = hashlib.sha1(LEASE_LUA.encode()).hexdigest()
REFUND_SHA = hashlib.sha1(REFUND_LUA.encode()).hexdigest()
WINDOW_TAU_SHARE = 10  # a sliding window's tau is at most window / this (see actors.fleet.lease)

log = logger.bind(actor="fleet")


def lease_want(limit: int, window_s: float, tau_s: float, max_batch: int) -> int:
    return max(1, min(max_batch, math.ceil(limit / window_s * tau_s / 2)))


class _Rate:
    """One policy (or one key's override) as the scripts need it."""

    __slots__ = ("algo", "span", "limit", "want", "tau_s", "tau_us", "window_s")

    def __init__(self, limit: int, window_s: float, algorithm: str, tau_s: float, max_batch: int) -> None:
        self.limit, self.window_s = limit, window_s
        self.algo = "gcra" if algorithm == "gcra" else "window"
        if self.algo == "window":
            tau_s = min(tau_s, window_s / WINDOW_TAU_SHARE)
        self.span = interval_us(limit, window_s) if self.algo == "gcra" else round(window_s * US)
        self.tau_s, self.tau_us = tau_s, round(tau_s * US)
        self.want = lease_want(limit, window_s, tau_s, max_batch)


class _Entry:
    """A key's credits: batches [left, expires_at, lease_id, granted], oldest first."""

    __slots__ = ("rkey", "rate", "batches", "credits", "pending", "zero_until", "failed", "event",
                 "remaining", "demand", "answered_at", "debt")

    def __init__(self, rkey: str, rate: _Rate) -> None:
        self.rkey, self.rate = rkey, rate
        self.batches: list[list] = []
        self.credits = 0
        self.pending = False
        self.zero_until = -math.inf
        self.failed = False
        self.event = trio.Event()
        self.remaining = rate.limit  # what Redis said is left beyond the grants
        self.demand = False          # refused by the zero cache since the last grant
        self.answered_at = -math.inf  # Redis's last answer for this key
        self.debt = 0                # admitted by a fallback while Redis was late: paid from the next grants


class FleetGate:
    def __init__(self, config: Config, link: RedisLink, live_count: Callable[[], int]) -> None:
        f = config.fleet
        self.link, self.live_count = link, live_count
        self.prefix = f"{f.key_prefix}rl:"
        self.exempt = frozenset(config.limiter.exempt_keys)
        self.rates = {name: _Rate(p.limit, p.window_s, p.resolved_algorithm(), f.credit_ttl_s, f.max_batch)
                      for name, p in config.policies.items()}
        self.overrides = {pol: {k: _Rate(v.limit, v.window_s, config.policies[pol].resolved_algorithm(),
                                         f.credit_ttl_s, f.max_batch) for k, v in keys.items()}
                          for pol, keys in config.limiter.overrides.items()}
        self.down = {name: p.resolved_on_fleet_down(name) for name, p in config.policies.items()}
        self.modes = {name: "global" for name in config.policies}
        self._config = config
        self._entries: dict[str, _Entry] = {}
        self._wanted: dict[_Entry, int] = {}
        self._refunds: list[tuple[_Entry, list]] = []
        self._expiries: list[tuple[float, int, _Entry]] = []
        self._dues: list[tuple[float, int, _Entry]] = []  # zero grants: when the next token is due
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._scripts_on: Any = None  # the client the scripts were loaded on
        self._share: tuple[int, LimiterTable] | None = None
        self.fallbacks = self.refused = self.waits = 0
        self.fallback_admitted = dict.fromkeys(config.policies, 0)
        self.granted = self.refunded = self.leases = 0

    # -- the hot path ------------------------------------------------------------------------

    def refusal(self, policy: str, key: str) -> RateDecision | None:
        """The fleet's cached refusal for (policy, key), asked before the local gate: a key the
        fleet has no token for is refused without spending the local quota (spent there, the
        local gate would refuse what the fleet allows later)."""
        entry = self._entries.get(f"{self.prefix}{policy}:{key}")
        if entry is None or entry.credits:
            return None
        now = trio.current_time()
        if entry.zero_until <= now or self.modes.get(policy) != "global":
            return None
        self.refused += 1
        entry.demand = True
        rate, wait = entry.rate, entry.zero_until - now
        full = wait + (rate.limit - 1) * rate.span / US if rate.algo == "gcra" else rate.window_s + rate.tau_s
        return RateDecision(allowed=False, policy=policy, limit=rate.limit, remaining=0,
                            reset_at=now + full, reset_after_s=full, more_at=entry.zero_until,
                            retry_after_s=wait)

    async def admit(self, decision: RateDecision, key: str, cost: int) -> RateDecision:
        """The fleet's answer for a locally allowed `decision`."""
        policy = decision.policy
        if key in self.exempt or policy not in self.rates:
            return decision
        now = trio.current_time()
        if self.modes[policy] != "global":
            return self._fallback(decision, key, cost, now)
        rkey = f"{self.prefix}{policy}:{key}"
        entry = self._entries.get(rkey)
        if entry is None:
            rate = self.overrides.get(policy, {}).get(key) or self.rates[policy]
            entry = self._entries[rkey] = _Entry(rkey, rate)
        answer = self._spend(entry, decision, cost, now)
        if answer is not None:  # no checkpoint of its own: the local decision's ask was one
            return answer
        self.waits += 1  # no credit here: wait for a lease, never past the Redis timeout
        deadline = now + self.link.timeout_s
        while True:
            self._want(entry, max(cost, entry.rate.want))
            event = entry.event
            with trio.move_on_at(deadline) as waited:
                await event.wait()
            now = trio.current_time()
            if self.modes[policy] != "global":
                return self._fallback(decision, key, cost, now)
            if entry.failed or waited.cancelled_caught:  # Redis is late or failed, not known gone
                if entry.remaining == 0 and now - entry.answered_at < entry.rate.tau_s:
                    return self._busy(decision, entry, now)  # out of tokens a moment ago
                return self._owe(entry, self._fallback(decision, key, cost, now), cost)
            answer = self._spend(entry, decision, cost, now)
            if answer is not None:
                return answer

    def _spend(self, entry: _Entry, decision: RateDecision, cost: int, now: float) -> RateDecision | None:
        batches = entry.batches
        if batches and batches[0][1] <= now:
            self._expire_entry(entry, now)
        if entry.credits < cost:
            if entry.zero_until > now:
                return self._zero(entry, decision, now)
            return None
        entry.credits -= cost
        first = batches[0]
        if first[0] > cost:  # the common case: one batch pays
            first[0] -= cost
        else:
            while cost:
                batch = batches[0]
                used = min(cost, batch[0])
                batch[0] -= used
                cost -= used
                if batch[0] == 0:
                    batches.pop(0)
        if entry.credits * 2 <= entry.rate.want and not entry.pending:
            self._want(entry, entry.rate.want)
        left = entry.credits + entry.remaining
        return decision if left >= decision.remaining else replace(decision, remaining=left)

    def _zero(self, entry: _Entry, decision: RateDecision, now: float) -> RateDecision:
        self.refused += 1
        entry.demand = True
        wait = entry.zero_until - now
        return replace(decision, allowed=False, remaining=0, more_at=entry.zero_until,
                       retry_after_s=wait, reset_at=max(decision.reset_at, entry.zero_until),
                       reset_after_s=max(decision.reset_after_s, wait))

    def _busy(self, decision: RateDecision, entry: _Entry, now: float) -> RateDecision:
        """A refusal for a key Redis said was out of tokens, while its next lease is late."""
        self.refused += 1
        wait = max(entry.zero_until - now, entry.rate.span / US if entry.rate.algo == "gcra" else entry.rate.tau_s)
        return replace(decision, allowed=False, remaining=0, more_at=now + wait, retry_after_s=wait,
                       reset_at=max(decision.reset_at, now + wait), reset_after_s=max(decision.reset_after_s, wait))

    def _owe(self, entry: _Entry, decision: RateDecision, cost: int) -> RateDecision:
        """A fallback's allow while Redis is up is a debt on the key, paid from its next grants,
        so Redis counts it (late, not never): a slow Redis does not add the fallback's limit
        to the global one."""
        if decision.allowed:
            entry.debt += cost
            self._want(entry, entry.rate.want + entry.debt)
        return decision

    def _want(self, entry: _Entry, n: int) -> None:
        if not entry.pending:
            entry.pending = True
            self._wanted[entry] = n
            self._wake.set()
        elif n > self._wanted.get(entry, n):  # queued, not yet sent: ask for more
            self._wanted[entry] = n

    # -- fallback: Redis unreachable ----------------------------------------------------------

    def _fallback(self, decision: RateDecision, key: str, cost: int, now: float) -> RateDecision:
        self.fallbacks += 1
        if self.down[decision.policy] != "local":
            decision = self._share_table().check(decision.policy, key, now, cost)
        if decision.allowed:  # beyond the fleet's bound while Redis is up: counted, per policy
            self.fallback_admitted[decision.policy] += cost
        return decision

    def _share_table(self) -> LimiterTable:
        n = max(1, self.live_count())
        if self._share is None or self._share[0] != n:
            c = self._config
            spec = {name: PolicySpec(limit=max(1, p.limit // n), window_s=p.window_s,
                                     algorithm=p.resolved_algorithm()) for name, p in c.policies.items()}
            overrides = {pol: {k: PolicySpec(limit=max(1, v.limit // n), window_s=v.window_s)
                               for k, v in keys.items()} for pol, keys in c.limiter.overrides.items()}
            self._share = (n, LimiterTable(spec, max_keys=c.limiter.max_keys, overrides=overrides))
        return self._share[1]

    def link_changed(self, up: bool) -> None:
        """The Redis breaker moved: every policy's mode follows; held credits are dropped."""
        for name in self.modes:
            self.modes[name] = "global" if up else self.down[name]
        if not up:
            self._drop_all()

    def forget(self, policy: str | None, key: str | None) -> tuple[list[str], list[str]]:
        """A reset (`mon.reset_rate`): drop what this instance holds for the matching keys (its
        credits, cached refusals, the share table's counts). Returns the Redis keys of the
        fleet's counts to delete: (exact keys, SCAN patterns of whole policies)."""
        policies = [policy] if policy is not None else list(self.rates)
        if key is None:
            starts = tuple(f"{self.prefix}{p}:" for p in policies)
            gone, exact, patterns = [k for k in self._entries if k.startswith(starts)], [], \
                [f"{_glob_escape(start)}*" for start in starts]
        else:
            gone = exact = [f"{self.prefix}{p}:{key}" for p in policies]
            patterns = []
        for rkey in gone:
            entry = self._entries.pop(rkey, None)
            if entry is not None:  # a waiter on it finishes with what its lease brings
                entry.batches.clear()
                entry.credits = entry.debt = 0
                entry.zero_until = -math.inf
        if self._share is not None:
            self._share[1].reset(policy, key)
        return [*exact, *(f"{k}:seq" for k in exact)], patterns

    def _drop_all(self) -> None:
        for entry in self._entries.values():
            entry.batches.clear()
            entry.credits, entry.pending, entry.failed = 0, False, True
            entry.event.set()
            entry.event = trio.Event()
        self._entries.clear()
        self._wanted.clear()
        self._refunds.clear()
        self._expiries.clear()
        self._dues.clear()

    # -- the background task: one pipeline per tick --------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            deadline = min(self._expiries[0][0] if self._expiries else math.inf,
                           self._dues[0][0] if self._dues else math.inf)
            with trio.move_on_at(deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            now = trio.current_time()
            self._expire_due(now)
            self._refill_due(now)
            wanted, self._wanted = self._wanted, {}
            refunds, self._refunds = self._refunds, []
            if wanted or refunds:
                await self._tick(wanted, refunds)

    async def _tick(self, wanted: dict[_Entry, int], refunds: list[tuple[_Entry, list]]) -> None:
        leases = list(wanted.items())

        async def send(client: Any) -> list:
            if self._scripts_on is not client:
                await client.script_load(LEASE_LUA)
                await client.script_load(REFUND_LUA)
                self._scripts_on = client
            async with client.pipeline(transaction=False) as pipe:
                replies = [pipe.evalsha(LEASE_SHA, keys=[e.rkey, e.rkey + ":seq"],
                                        args=[e.rate.algo, e.rate.span, e.rate.limit, n, e.rate.tau_us, ""])
                           for e, n in leases]
                for e, batch in refunds:
                    pipe.evalsha(REFUND_SHA, keys=[e.rkey],
                                 args=[e.rate.algo, e.rate.span, batch[0], "", batch[2], batch[3]])
            return [await r for r in replies]

        try:
            replies = await self.link.call(send)
        except RedisUnavailable:
            self._scripts_on = None
            retry = trio.current_time() + self.link.cfg.redis_retry_s
            for entry, _ in leases:
                entry.pending, entry.failed = False, True
                heapq.heappush(self._expiries, (retry, next(self._seq), entry))  # forgotten then
                self._wakeup(entry)
            return  # refunds are lost: fewer tokens, never more
        now = trio.current_time()
        for (entry, _), reply in zip(leases, replies, strict=True):
            self._granted(entry, reply, now)

    def _granted(self, entry: _Entry, reply: list, now: float) -> None:
        granted, wait_us, remaining, lease_id = int(reply[0]), int(reply[1]), int(reply[2]), reply[4]
        entry.pending, entry.failed, entry.remaining = False, False, remaining
        entry.answered_at, entry.demand = now, False
        self.leases += 1
        self.granted += granted
        expires = now + entry.rate.tau_s
        if entry.debt and granted:
            paid = min(entry.debt, granted)
            entry.debt -= paid
            granted -= paid
        if granted > 0:
            entry.batches.append([granted, expires, lease_id, int(reply[0])])
            entry.credits += granted
        if entry.credits == 0:
            entry.zero_until = now + max(wait_us, 1) / US
            expires = max(expires, entry.zero_until)
            heapq.heappush(self._dues, (entry.zero_until, next(self._seq), entry))
        heapq.heappush(self._expiries, (expires, next(self._seq), entry))  # refund or forget then
        self._wakeup(entry)

    def _wakeup(self, entry: _Entry) -> None:
        event, entry.event = entry.event, trio.Event()
        event.set()

    # -- expiry and refunds ------------------------------------------------------------------

    def _expire_due(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, _, entry = heapq.heappop(self._expiries)
            self._expire_entry(entry, now)
            if not entry.batches and not entry.pending and entry.zero_until <= now \
                    and self._entries.get(entry.rkey) is entry:
                del self._entries[entry.rkey]  # nothing held, nothing owed: forget the key

    def _refill_due(self, now: float) -> None:
        """A key refused for want of tokens gets its lease when the next token is due, so the
        next request finds a credit instead of waiting for a round trip."""
        while self._dues and self._dues[0][0] <= now:
            _, _, entry = heapq.heappop(self._dues)
            if entry.demand and not entry.pending and self._entries.get(entry.rkey) is entry:
                entry.demand = False
                entry.pending = True
                self._wanted[entry] = entry.rate.want

    def _expire_entry(self, entry: _Entry, now: float) -> None:
        while entry.batches and entry.batches[0][1] <= now:
            batch = entry.batches.pop(0)
            entry.credits -= batch[0]
            if batch[0] > 0:
                self.refunded += batch[0]
                self._refunds.append((entry, batch))
                self._wake.set()

    def statistics(self) -> dict[str, Any]:
        return {"modes": dict(self.modes), "keys": len(self._entries), "waits": self.waits,
                "fallbacks": self.fallbacks, "fallback_admitted": dict(self.fallback_admitted),
                "refused": self.refused, "leases": self.leases,
                "granted": self.granted, "refunded": self.refunded,
                "credits": sum(e.credits for e in self._entries.values())}


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)

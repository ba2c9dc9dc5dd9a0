"""The fleet breaker agent: a tier's breaker the whole fleet agrees on, over Redis.

Theory of operation. Each instance's breakers stay local actors (`actors/breaker.py`);
this agent is their link to the fleet, and Redis — an engine other than the one that
failed — carries the news (the database cannot carry news of its own death):

* **Publish.** Every transition of a shared tier is written to a TTL'd key
  `<prefix>brk:<tier>:<instance_id>` (the truth, refreshed every heartbeat) and published
  on `<prefix>brk:<tier>` (the fast path: pub/sub is at most once, so the keys count).
* **Quorum.** Every heartbeat, and at once on a peer's OPEN message, the agent counts the
  live peers whose key says OPEN and reports `FleetQuorum(open, live)`: the core opens a
  CLOSED breaker when a majority of live instances (⌊N/2⌋ + 1, this one included in N)
  report OPEN, so an instance that saw no failure of its own stops sending queries to a
  database its peers found dead.
* **One prober.** A shared breaker whose recovery timeout elapses emits `ProbeDue` and
  stays OPEN. The agent tries the lease `SET <prefix>probe:<tier> <id> NX PX <recovery>`;
  the winner gets `ProbeLease` (its core goes HALF_OPEN and runs the trial), the others
  wait. The prober's verdict is published and written to `<prefix>verdict:<tier>` (TTL one
  recovery period, so a verdict older than a follower's OPEN period has expired by the
  time that follower is due); followers get `FleetVerdict` and follow it. A prober that
  dies holds its lease for one recovery period at most; then another takes it.
* **Redis down.** Every Redis call is bounded (`timeout_s`); one that fails or times out
  turns the fleet off for these tiers (`FleetShared(shared=False)`: breakers local only, as
  without a fleet, a due recovery starts at once), logged once; the first heartbeat that
  reaches Redis again turns it back on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec
import trio
from loguru import logger

from actors.fleet.link import listen
from actors.runtime.mailbox import AsyncValue
from messages.commands import FleetQuorum, FleetShared, FleetVerdict, ProbeLease
from messages.events import BreakerTransition, ProbeDue

# A key written every heartbeat lives this many heartbeats: a dead instance's state is gone
# within 3 heartbeats, like its heartbeat.
KEY_TTL_HEARTBEATS = 3

# Every key Triage writes has a TTL; the verdict counter lives a day after the last verdict.
VERDICT_SEQ_TTL_MS = 86_400_000

# The probe lease: taken when free, kept (extended) by its holder, refused to anyone else.
_ACQUIRE = ("local v = redis.call('GET', KEYS[1]) "
            "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
            "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
            "return 0")
# Compare-and-extend: only the holder may keep its lease.
_EXTEND = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
           "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")


class PeerState(msgspec.Struct, frozen=True):
    """What a key and a pub/sub message say about one instance's breaker of one tier."""

    id: str
    state: str
    epoch: int
    verdict: str | None = None   # "ok" / "failed": this message is the prober's verdict
    seq: int = 0                 # the verdict's sequence number (INCR on Redis)
    # The newest recovery ("ok" verdict) the instance knew of when it entered `state`: an OPEN
    # from before the fleet's latest recovery is stale (that peer is about to follow it) and
    # counts for no quorum, so a recovered breaker is not re-opened by peers still catching up.
    known_ok: int = 0


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(PeerState).decode


class _Unreachable(Exception):
    """A Redis call failed or took longer than its bound."""


class BreakerAgent:
    """Links this instance's shared breakers to the fleet (see the module's docstring)."""

    def __init__(self, mon: Any, redis: Any = None, *, prefix: str, instance_id: str,
                 tiers: Iterable[str], follow: str = "half_open", heartbeat_s: float = 1.0,
                 timeout_s: float = 0.05,
                 live_ids: Callable[[], Awaitable[set[str]]] | None = None,
                 run: Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]] | None = None,
                 pubsub_client: Callable[[], Any] | None = None,
                 unavailable: tuple[type[BaseException], ...] = ()) -> None:
        """`redis`: a coredis client, each call bounded by `timeout_s`; or, in a system, `run`
        (``await run(fn)`` is ``await fn(client)``: the fleet's RedisLink.call, its breaker
        and bounds), `pubsub_client` (the client to subscribe with, None while none) and
        `unavailable` (the exceptions `run` raises when Redis cannot be had)."""
        self.mon, self.redis, self.prefix, self.id = mon, redis, prefix, instance_id
        self._run = run or self._direct
        self._pubsub_client = pubsub_client or (lambda: redis)
        self._unavailable = unavailable
        self.tiers = tuple(t for t in tiers if t in mon.breakers)
        self.follow, self.heartbeat_s, self.timeout_s = follow, heartbeat_s, timeout_s
        self._live_ids = live_ids or self._scan_heartbeats
        self.shared = False            # the fleet is on (Redis answered the last heartbeat)
        self.probing: dict[str, int] = {}  # tier -> the OPEN epoch this instance won the lease for
        self._verdict_seen: dict[str, int] = {t: 0 for t in self.tiers}
        self._last_ok: dict[str, int] = {t: 0 for t in self.tiers}     # newest "ok" verdict known
        self._entered_ok: dict[str, int] = {t: 0 for t in self.tiers}  # ... when the state was entered
        # The breaker's epoch as of the last transition this agent handled, per tier: while the
        # published epoch differs, a transition's event is still on its way and no count is made.
        self._epoch: dict[str, int] = {t: mon.breakers[t].statistics().epoch for t in self.tiers}
        self._lagging: set[str] = set()
        self.probes: dict[str, int] = {t: 0 for t in self.tiers}    # leases won (probes run)
        self.live: int = 1
        # Heartbeats done, for whoever must wait for "the fleet has looked again" (tests, tools).
        self.beats = AsyncValue(0)

    # --- keys ---------------------------------------------------------------------------

    def _key(self, tier: str, instance: str | None = None) -> str:
        return f"{self.prefix}brk:{tier}:{instance or self.id}"

    def _channel(self, tier: str) -> str:
        return f"{self.prefix}brk:{tier}"

    async def _direct(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        with trio.fail_after(self.timeout_s):
            return await fn(self.redis)

    async def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        """``client.<name>(*args, **kw)`` through `run`; `_Unreachable` when Redis can't be had."""
        return await self._bounded(lambda c: getattr(c, name)(*args, **kw))

    async def _bounded(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        return await self._reaching(self._run(fn))

    async def _live(self) -> set[str]:
        return await self._reaching(self._live_ids())

    async def _reaching(self, call: Awaitable[Any]) -> Any:
        """`await call`, with a timeout, a cut connection or coredis's own errors as `_Unreachable`."""
        try:
            return await call
        except Exception as exc:
            if (isinstance(exc, (trio.TooSlowError, OSError, *self._unavailable))
                    or type(exc).__module__.startswith("coredis")):
                raise _Unreachable(type(exc).__name__) from None
            raise

    async def _scan_heartbeats(self) -> set[str]:
        pattern = f"{self.prefix}fleet:*"
        cut = len(self.prefix) + len("fleet:")

        async def scan(client: Any) -> set[str]:
            ids: set[str] = set()
            async for key in client.scan_iter(match=pattern, count=500):
                key = key.decode() if isinstance(key, bytes) else key
                ids.add(key[cut:])
            return ids

        return await self._run(scan)

    # --- the loop -----------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if not self.tiers:
            task_status.started()
            return
        accept = (BreakerTransition, ProbeDue)
        async with self.mon.events() as events, trio.open_nursery() as nursery:
            await self._heartbeat()
            nursery.start_soon(self._heartbeats)
            nursery.start_soon(self._listen)
            task_status.started()
            async for event in events:
                if type(event) in accept and event.tier in self.tiers:
                    await self._guarded(self._on_event, event)

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await fn(*args)
        except _Unreachable as exc:
            await self._gate(False, str(exc))

    async def _gate(self, shared: bool, why: str = "") -> None:
        if shared == self.shared:
            return
        self.shared = shared
        if shared:
            logger.info("fleet breakers: Redis answers; recovery of {} shared with the fleet",
                        ", ".join(self.tiers))
        else:
            logger.warning("fleet breakers: Redis unreachable ({}); breakers are local only", why)
            self.probing.clear()
        for tier in self.tiers:
            self.mon.breakers[tier].fleet_report(FleetShared(shared=shared, follow=self.follow))

    async def _heartbeats(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        """Refresh this instance's keys, count the open peers, retry a lease a dead prober left."""
        try:
            live = await self._live()
            self.live = len(live | {self.id})
            for tier in self.tiers:
                await self._refresh(tier)
        except _Unreachable as exc:
            await self._gate(False, str(exc))
            return
        await self._gate(True)
        for tier in self.tiers:
            await self._guarded(self._look, tier, live)
        self.beats.set(self.beats.value + 1)

    async def _refresh(self, tier: str) -> None:
        snap = self.mon.breakers[tier].statistics()
        body = _encode(PeerState(id=self.id, state=snap.state, epoch=snap.epoch,
                                 known_ok=self._entered_ok[tier]))
        ttl_ms = int(self.heartbeat_s * KEY_TTL_HEARTBEATS * 1000)
        await self._call("set", self._key(tier), body, px=ttl_ms)

    async def _look(self, tier: str, live: set[str] | None = None) -> None:
        """Quorum, then — while waiting for a prober — the lease and the verdict key."""
        breaker = self.mon.breakers[tier]
        snap = breaker.statistics()
        if snap.epoch != self._epoch[tier]:
            # A transition not handled yet (its event is queued): count after it. Two heartbeats
            # in a row means its event was lost (a full subscription): take the state as it is.
            if tier not in self._lagging:
                self._lagging.add(tier)
                return
            self._epoch[tier] = snap.epoch
        self._lagging.discard(tier)
        if live is None:
            live = await self._live()
        peers = sorted(live - {self.id})
        opened = 0
        if peers:
            values = await self._call("mget", [self._key(tier, p) for p in peers])
            for raw in values:
                if raw is None:
                    continue
                peer = _decode(raw)
                if peer.state == "open" and peer.known_ok >= self._last_ok[tier]:
                    opened += 1
        n = len(live | {self.id})
        if opened:
            breaker.fleet_report(FleetQuorum(open=opened, live=n, epoch=snap.epoch))
        if snap.state == "open" and snap.awaiting_probe and not await self._verdict_key(tier):
            await self._try_lease(tier, snap.epoch)

    # --- events of this instance --------------------------------------------------------

    async def _on_event(self, event: BreakerTransition | ProbeDue) -> None:
        if type(event) is ProbeDue:
            if self.shared and not await self._verdict_key(event.tier):
                await self._try_lease(event.tier, event.epoch)
            return
        tier = event.tier
        verdict = None
        if tier in self.probing and event.from_state == "half_open":
            verdict = "ok" if event.to_state == "closed" else "failed"
        seq = 0
        if verdict is not None:
            counter = f"{self.prefix}verdict_seq:{tier}"
            seq = await self._call("incr", counter)
            await self._call("pexpire", counter, VERDICT_SEQ_TTL_MS)
        if verdict == "ok":
            self._last_ok[tier] = max(self._last_ok[tier], seq)
        self._entered_ok[tier] = self._last_ok[tier]
        self._epoch[tier] = event.epoch  # counts may resume: they see the recovery's verdict
        body = _encode(PeerState(id=self.id, state=event.to_state, epoch=event.epoch,
                                 verdict=verdict, seq=seq, known_ok=self._entered_ok[tier]))
        ttl_ms = int(self.heartbeat_s * KEY_TTL_HEARTBEATS * 1000)
        await self._call("set", self._key(tier), body, px=ttl_ms)
        if verdict is not None:
            recovery_ms = self._recovery_ms(tier)
            await self._call("set", f"{self.prefix}verdict:{tier}", body, px=recovery_ms)
            # The lease is kept for the rest of its period either way: a peer that missed the
            # verdict's message finds the verdict key, not a free lease. After a failed trial it
            # is this instance's to probe next period too; the others keep waiting.
            del self.probing[tier]
            if verdict == "failed":
                lease = f"{self.prefix}probe:{tier}"
                await self._call("eval", _EXTEND, [lease], [self.id, recovery_ms])
            self._verdict_seen[tier] = max(self._verdict_seen[tier], seq)
        elif event.to_state == "closed":
            self.probing.pop(tier, None)
        await self._call("publish", self._channel(tier), body)

    def _recovery_ms(self, tier: str) -> int:
        return max(int(self.mon.breakers[tier].statistics().recovery_timeout_s * 1000), 1)

    async def _try_lease(self, tier: str, epoch: int) -> None:
        lease = f"{self.prefix}probe:{tier}"
        # Free, or this instance's own (kept after a failed trial): taken for one more period.
        won = await self._call("eval", _ACQUIRE, [lease], [self.id, self._recovery_ms(tier)])
        if won and self.probing.get(tier) != epoch:  # (a heartbeat and ProbeDue may both try)
            self.probing[tier] = epoch
            self.probes[tier] += 1
            logger.info("fleet breaker {}: this instance won the probe lease", tier)
            self.mon.breakers[tier].fleet_report(ProbeLease(epoch=epoch))

    async def _verdict_key(self, tier: str) -> bool:
        """Follow a verdict this instance has not followed yet; True if there was one."""
        raw = await self._call("get", f"{self.prefix}verdict:{tier}")
        return raw is not None and self._follow(tier, _decode(raw))

    def _follow(self, tier: str, peer: PeerState) -> bool:
        if peer.verdict is None or peer.id == self.id or peer.seq <= self._verdict_seen[tier]:
            return False
        self._verdict_seen[tier] = peer.seq
        if peer.verdict == "ok":
            self._last_ok[tier] = max(self._last_ok[tier], peer.seq)
        self.mon.breakers[tier].fleet_report(FleetVerdict(ok=peer.verdict == "ok", by=peer.id))
        return True

    # --- peers' messages ----------------------------------------------------------------

    async def _listen(self) -> None:
        """The fast path: a peer's OPEN counts at once, a verdict is followed at once."""
        channels = {self._channel(t): t for t in self.tiers}

        async def on_message(channel: str, data: bytes) -> None:
            tier = channels.get(channel)
            if tier is None:
                return
            try:
                peer = _decode(data)
            except (msgspec.DecodeError, TypeError):
                return  # not ours: nothing to follow
            if peer.id == self.id or not self.shared:
                return
            if peer.verdict is not None:
                self._follow(tier, peer)
            elif peer.state == "open":
                await self._guarded(self._look, tier)

        await listen(self._pubsub_client, list(channels), on_message, self.heartbeat_s)

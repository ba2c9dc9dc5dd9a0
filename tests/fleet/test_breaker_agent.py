"""The fleet breaker agent against a real Redis: three instances (in this process) share one.

Each instance is a real `open_monitoring` kernel with its own breakers; the "database" is a
flag each instance's guarded calls consult, so one instance can see it down while the others
see it up. Redis is the real one on 127.0.0.1:6379; every key has this test's random prefix
and a TTL, and only that prefix is deleted afterwards.
"""

from __future__ import annotations

import contextlib
import secrets

import coredis
import pytest
import trio
from msgspec.structs import replace

from actors import CircuitOpen, open_monitoring
from actors.fleet.breaker_agent import BreakerAgent
from messages.config import Config

pytestmark = pytest.mark.trio

HEARTBEAT_S = 0.1
RECOVERY_S = 0.8


class DatabaseDown(Exception):
    pass


def _config() -> Config:
    cfg = Config()
    tiers = dict(cfg.tiers)
    tiers["database"] = replace(tiers["database"], failure_threshold=2, recovery_timeout_s=RECOVERY_S,
                                guards_database=False)
    return replace(cfg, tiers=tiers)


@contextlib.asynccontextmanager
async def redis_prefix():
    client = coredis.Redis(host="127.0.0.1", port=6379)
    prefix = f"test:{secrets.token_hex(6)}:"
    async with client:
        try:
            yield client, prefix
        finally:
            keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(keys)


class Instance:
    def __init__(self, name: str, mon, agent: BreakerAgent) -> None:
        self.name, self.mon, self.agent = name, mon, agent
        self.db_up = True
        self.calls = 0

    async def call(self) -> str:
        async def query() -> str:
            self.calls += 1
            if not self.db_up:
                raise DatabaseDown(self.name)
            return "ok"

        with contextlib.suppress(DatabaseDown, CircuitOpen):
            return await self.mon.run(query)
        return "refused"

    @property
    def state(self) -> str:
        return self.mon.breakers["database"].state


@contextlib.asynccontextmanager
async def fleet(n: int = 3, follow: str = "half_open"):
    async with redis_prefix() as (client, prefix), contextlib.AsyncExitStack() as stack:
        names = [f"api-{i}" for i in range(1, n + 1)]

        async def live_ids() -> set[str]:
            return set(names)

        monitors = [await stack.enter_async_context(open_monitoring(_config())) for _ in names]
        # The agents' nursery is entered last, so it exits first: cancelling it cannot turn
        # the test's own failure into a Cancelled that a monitor's shutdown would swallow.
        nursery = await stack.enter_async_context(trio.open_nursery())
        instances = []
        for name, mon in zip(names, monitors, strict=True):
            agent = BreakerAgent(mon, client, prefix=prefix, instance_id=name, tiers=["database"],
                                 follow=follow, heartbeat_s=HEARTBEAT_S, timeout_s=1.0,
                                 live_ids=live_ids)
            await nursery.start(agent.run)
            instances.append(Instance(name, mon, agent))
        try:
            yield instances, client, prefix
        finally:
            nursery.cancel_scope.cancel()


async def traffic(instances, stop: trio.Event) -> None:
    """Each instance keeps calling, as a service under steady load does."""
    async def one(inst):
        while not stop.is_set():
            await inst.call()
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for inst in instances:
            nursery.start_soon(one, inst)


async def heartbeats(instances, n: int) -> None:
    """Until every instance's agent has looked at the fleet `n` more times."""
    with trio.fail_after(n * HEARTBEAT_S + 5):
        for inst in instances:
            beats = inst.agent.beats
            start = beats.value
            await beats.wait_value(lambda v, start=start: v >= start + n)


async def stays_closed(instances, beats: int) -> None:
    """From then on, for `beats` heartbeats of every instance: none leaves CLOSED (a recovered
    fleet must not flap)."""
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(i.mon.events()) for i in instances]
        await heartbeats(instances, beats)
        for inst, sub in zip(instances, subs, strict=True):
            assert inst.state == "closed", inst.name
            moved = []
            while True:
                try:
                    event = sub.receive_nowait()
                except trio.WouldBlock:
                    break
                if hasattr(event, "to_state"):
                    moved.append(event)
            assert moved == [], (inst.name, moved)


async def failed_trials(instances, n: int, timeout: float) -> None:
    """Until `n` trial calls have failed, on any instances: `n` recovery periods have passed."""
    failed = 0
    async with contextlib.AsyncExitStack() as stack:
        subs = [await stack.enter_async_context(i.mon.events()) for i in instances]
        with trio.fail_after(timeout):
            async with trio.open_nursery() as nursery:
                async def count(sub) -> None:
                    nonlocal failed
                    async for event in sub:
                        if getattr(event, "reason", None) == "trial call failed":
                            failed += 1
                            if failed >= n:
                                nursery.cancel_scope.cancel()

                for sub in subs:
                    nursery.start_soon(count, sub)


async def all_in(instances, state: str, timeout: float = 5.0) -> None:
    """Until every instance's database breaker is in `state` (its published state, no polling)."""
    with trio.fail_after(timeout):
        for inst in instances:
            await inst.mon.breakers["database"].wait_state(state)
        assert all(i.state == state for i in instances)  # none left it meanwhile


async def test_one_down_opens_only_that_one():
    async with fleet() as (instances, _, _):
        a, b, c = instances
        a.db_up = False
        for _ in range(2):
            await a.call()
        assert a.state == "open"
        # Three heartbeats each: every peer has seen A's key; one OPEN of three is no quorum.
        await heartbeats(instances, 3)
        assert (b.state, c.state) == ("closed", "closed")


async def test_two_down_open_the_third_by_quorum_within_a_heartbeat():
    async with fleet() as (instances, _, _):
        a, b, c = instances
        a.db_up = b.db_up = False
        async with c.mon.events() as events:
            for inst in (a, b):
                for _ in range(2):
                    await inst.call()
            assert (a.state, b.state) == ("open", "open")
            opened_at = trio.current_time()
            with trio.fail_after(HEARTBEAT_S + 0.5):  # one heartbeat, plus a loaded machine's slack
                async for event in events:
                    if getattr(event, "to_state", None) == "open":
                        break
        assert event.reason == "fleet quorum (2 of 3 open)"
        assert trio.current_time() - opened_at <= HEARTBEAT_S + 0.5
        assert c.calls == 0  # it stopped before sending a query of its own
        assert c.mon.breakers["database"].statistics().failures == 0


async def test_recovery_one_prober_per_period_then_all_close():
    async with fleet() as (instances, _, _):
        for inst in instances:
            inst.db_up = False
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, instances, stop)
            await all_in(instances, "open")
            # Still down through two recovery periods: each period, one instance probes (and
            # its trial fails), every other instance waits.
            await failed_trials(instances, 2, timeout=3 * RECOVERY_S + 5)
            await heartbeats(instances, 1)
            probes_while_down = sum(i.agent.probes["database"] for i in instances)
            assert 1 <= probes_while_down <= 3
            assert all(i.state == "open" for i in instances)
            for inst in instances:
                inst.db_up = True
            before = probes_while_down
            await all_in(instances, "closed", timeout=3 * RECOVERY_S + 2)
            await stays_closed(instances, 5)
            stop.set()
        probes_recovery = sum(i.agent.probes["database"] for i in instances) - before
        assert probes_recovery <= 1  # the lease holder of the period probes; the others follow


async def test_followers_close_with_follow_close():
    async with fleet(follow="close") as (instances, _, _):
        for inst in instances:
            inst.db_up = False
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, instances, stop)
            await all_in(instances, "open")
            for inst in instances:
                inst.db_up = True
            await all_in(instances, "closed", timeout=RECOVERY_S + 3)
            await stays_closed(instances, 5)
            stop.set()
        assert sum(i.agent.probes["database"] for i in instances) == 1


async def test_keys_have_ttls_and_the_prefix():
    async with fleet() as (instances, client, prefix):
        a = instances[0]
        a.db_up = False
        for _ in range(2):
            await a.call()
        await heartbeats(instances, 2)
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        assert keys
        for key in keys:
            assert (await client.pttl(key)) > 0, key

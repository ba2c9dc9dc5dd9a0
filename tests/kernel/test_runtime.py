"""The runtime on its own: mailbox, event bus, actor shell and supervisor (no domain actor)."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from actors.runtime.actor import ActorCrashedError, Send, SupervisedActor, shut_down, supervise
from actors.runtime.bus import EventBus
from actors.runtime.mailbox import Mailbox, ask
from messages.commands import Crash, Tick
from messages.config import SupervisorConfig
from messages.errors import ActorCrashed, InvalidArgument, ShuttingDown

POLICY = SupervisorConfig(max_restarts=5, period_s=60.0, backoff_s=0.1, backoff_max_s=0.3)


class Add(msgspec.Struct, frozen=True):
    n: int
    reply: Any = None


class Get(msgspec.Struct, frozen=True):
    reply: Any = None


class Park(msgspec.Struct, frozen=True):
    """Held in the state, answered never: what shutdown must answer for the core."""
    reply: Any = None


class Counter:
    """A minimal core: an int total, plus the replies it holds parked."""

    name = "counter"

    def step(self, state: tuple[int, tuple], msg: Any, now: float) -> tuple[tuple[int, tuple], list]:
        total, parked = state
        match msg:
            case Add(n=n) if n < 0:
                raise InvalidArgument("n must be >= 0")
            case Add(n=n, reply=reply):
                return (total + n, parked), [Send(reply, total + n)] if reply else []
            case Get(reply=reply):
                return state, [Send(reply, total)]
            case Park(reply=reply):
                return (total, (*parked, reply)), []
            case Tick():
                return state, []
        raise TypeError(f"unknown message {msg!r}")

    def wakeup(self, state: Any) -> float:
        return math.inf

    def parked(self, state: tuple[int, tuple]) -> tuple:
        return state[1]

    def undelivered(self, reply: Any, value: Any) -> None:
        return None


def counter_cell(capacity: int = 16) -> tuple[SupervisedActor, list]:
    emitted: list = []
    return SupervisedActor(Counter(), (0, ()), Mailbox("counter", capacity), emitted.append), emitted


def no_restart_hook(_cell: SupervisedActor, _exc: BaseException) -> None:
    pass


# --- mailbox --------------------------------------------------------------------------------


async def test_mailbox_ask_waits_for_the_actors_answer(nursery):
    cell, _ = counter_cell()
    await nursery.start(supervise, cell, POLICY, no_restart_hook)
    assert await ask(cell.inbox, lambda r: Add(3, reply=r)) == 3
    assert await ask(cell.inbox, lambda r: Add(4, reply=r)) == 7
    assert await ask(cell.inbox, lambda r: Get(reply=r)) == 7


async def test_mailbox_tell_is_delivered_in_order_and_refused_once_closed():
    box = Mailbox("m")
    box.put("a")
    box.put("b")
    assert list(await box.get_batch()) == ["a", "b"]
    box.put("c")
    assert list(box.close()) == ["c"]
    with pytest.raises(ShuttingDown):
        box.put("d")


async def test_mailbox_tell_wakes_a_parked_reader(nursery):
    box = Mailbox("m")
    got: list = []

    async def reader() -> None:
        got.extend(await box.get_batch())

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    box.put("a")
    await trio.testing.wait_all_tasks_blocked()
    assert got == ["a"]


async def test_mailbox_tell_lazy_wakes_the_reader_only_at_capacity(nursery):
    box = Mailbox("m", capacity=3)
    got: list = []

    async def reader() -> None:
        got.extend(await box.get_batch())

    nursery.start_soon(reader)
    await trio.testing.wait_all_tasks_blocked()
    box.tell_lazy("a")
    box.tell_lazy("b")
    await trio.testing.wait_all_tasks_blocked()
    assert (got, len(box)) == ([], 2)          # still parked: no task switch per lazy tell
    box.tell_lazy("c")
    await trio.testing.wait_all_tasks_blocked()
    assert got == ["a", "b", "c"]
    box.close()
    box.tell_lazy("d")                          # silently nothing once closed
    assert len(box) == 0


async def test_mailbox_tell_batched_arrives_as_one_message_at_the_head_of_the_batch():
    box = Mailbox("m", batch_msg=lambda items, calls: ("batch", tuple(items)))
    box.put("tell")
    box.tell_batched(1)
    box.tell_batched(2)
    assert list(await box.get_batch()) == [("batch", (1, 2)), "tell"]
    box.put("next")
    assert list(await box.get_batch()) == ["next"]     # the list was handed over once


async def test_mailbox_tell_call_folds_by_key_and_travels_with_the_batch_once():
    box = Mailbox("m", capacity=3, batch_msg=lambda items, calls: ("batch", tuple(items), calls))
    box.tell_call(("db", 1), 0.5, 0.0)
    box.tell_batched("x")
    box.tell_call(("db", 1), 0.25, 0.125)
    box.tell_call(("db", 2), 1.0, 0.0)
    box.put("tell")
    assert list(await box.get_batch()) == [
        ("batch", ("x",), {("db", 1): [0.5, 0.0, 0.25, 0.125], ("db", 2): [1.0, 0.0]}), "tell"]
    got: list = []

    async def reader() -> None:
        got.extend(await box.get_batch())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        box.tell_call(("db", 1), 0.5, 0.0)
        box.tell_call(("db", 1), 0.5, 0.0)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # below capacity: the reader sleeps on
        box.tell_call(("db", 1), 0.5, 0.0)  # the capacity-th wakes it
    assert got == [("batch", (), {("db", 1): [0.5, 0.0] * 3})]
    box.close()
    box.tell_call(("db", 1), 0.5, 0.0)  # silently nothing once closed
    assert box._calls == {}


async def test_mailbox_tell_count_is_one_count_message_and_refused_once_closed():
    box = Mailbox("m", count_msg=lambda n: ("count", n))
    for _ in range(3):
        box.tell_count()
    box.put("tell")
    assert list(await box.get_batch()) == [("count", 3), "tell"]
    box.close()
    with pytest.raises(ShuttingDown):
        box.tell_count()


async def test_mailbox_ask_past_capacity_waits_for_room(nursery):
    box = Mailbox("m", capacity=1)
    box.put("first")
    sent = trio.Event()

    async def asker() -> None:
        await box.put_ask("second")
        sent.set()

    nursery.start_soon(asker)
    await trio.testing.wait_all_tasks_blocked()
    assert (sent.is_set(), len(box)) == (False, 1)
    assert list(await box.get_batch()) == ["first"]
    await sent.wait()
    assert list(await box.get_batch()) == ["second"]


async def test_mailbox_close_answers_every_pending_ask_with_shutting_down(nursery):
    cell, _ = counter_cell(capacity=2)
    answers: list = []

    async def asker(make: Any) -> None:
        try:
            answers.append(await ask(cell.inbox, make))
        except ShuttingDown as exc:
            answers.append(type(exc))

    cell.inbox.put(Park(reply=None))                 # not serving: asks pile up in the inbox
    for make in (lambda r: Get(reply=r), lambda r: Add(1, reply=r), lambda r: Get(reply=r)):
        nursery.start_soon(asker, make)
    await trio.testing.wait_all_tasks_blocked()     # two in the inbox, one waiting for room
    shut_down(cell)
    await trio.testing.wait_all_tasks_blocked()
    assert answers == [ShuttingDown] * 3


async def test_supervise_cancelled_answers_parked_replies_with_shutting_down():
    cell, _ = counter_cell()
    answers: list = []

    async def parker() -> None:
        try:
            await ask(cell.inbox, lambda r: Park(reply=r))
        except ShuttingDown as exc:
            answers.append(exc)

    async with trio.open_nursery() as callers:
        async with trio.open_nursery() as system:
            await system.start(supervise, cell, POLICY, no_restart_hook)
            for _ in range(2):
                callers.start_soon(parker)
            await trio.testing.wait_all_tasks_blocked()
            assert len(cell.state[1]) == 2
            system.cancel_scope.cancel()              # the callers are not cancelled
    assert [type(a) for a in answers] == [ShuttingDown, ShuttingDown]
    assert cell.inbox.closed


# --- event bus ------------------------------------------------------------------------------


async def test_bus_every_subscriber_gets_each_event_in_order():
    bus = EventBus()
    tapped: list = []
    bus.taps.append(tapped.append)
    async with bus.subscribe() as one, bus.subscribe() as two:
        for event in ("e1", "e2", "e3"):
            bus.emit(event)
        assert [one.receive_nowait() for _ in range(3)] == ["e1", "e2", "e3"]
        assert [two.receive_nowait() for _ in range(3)] == ["e1", "e2", "e3"]
        assert (one.delivered, two.delivered, one.dropped) == (3, 3, 0)
    assert tapped == ["e1", "e2", "e3"]


async def test_bus_slow_subscriber_drops_counted_others_unaffected():
    bus = EventBus()
    async with bus.subscribe(buffer=1) as slow, bus.subscribe(buffer=8) as fast:
        for event in ("e1", "e2", "e3"):
            bus.emit(event)
        assert (slow.delivered, slow.dropped) == (1, 2)
        assert slow.receive_nowait() == "e1"
        with pytest.raises(trio.WouldBlock):
            slow.receive_nowait()
        assert [fast.receive_nowait() for _ in range(3)] == ["e1", "e2", "e3"]


async def test_bus_subscription_filters_and_ends_when_left():
    bus = EventBus()
    async with bus.subscribe(accept=lambda e: e.startswith("alert")) as sub:
        bus.emit("noise")
        bus.emit("alert-1")
        assert (sub.receive_nowait(), sub.delivered) == ("alert-1", 1)
    bus.emit("alert-2")                                # nobody subscribed: nothing to offer
    assert (sub.delivered, sub.dropped) == (1, 0)


# --- supervise ------------------------------------------------------------------------------


async def crash_and_time_restart(cell: SupervisedActor) -> float:
    """Crash the actor; return how long until it answers again (its back-off)."""
    with pytest.raises(ActorCrashed):
        await ask(cell.inbox, lambda r: Crash(reply=r))
    crashed_at = trio.current_time()
    await ask(cell.inbox, lambda r: Get(reply=r))
    return trio.current_time() - crashed_at


async def test_supervise_restarts_with_doubling_backoff_capped(nursery, autojump_clock):
    cell, _ = counter_cell()
    seen: list = []
    await nursery.start(supervise, cell, POLICY, lambda c, exc: seen.append(type(exc)))
    waits = [await crash_and_time_restart(cell) for _ in range(4)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.3], abs=1e-9)
    assert (cell.restarts, seen) == (4, [RuntimeError] * 4)


async def test_supervise_restarts_from_the_last_good_state(nursery, autojump_clock):
    cell, _ = counter_cell()
    await nursery.start(supervise, cell, POLICY, no_restart_hook)
    await ask(cell.inbox, lambda r: Add(5, reply=r))
    await ask(cell.inbox, lambda r: Add(2, reply=r))
    await crash_and_time_restart(cell)
    assert await ask(cell.inbox, lambda r: Get(reply=r)) == 7
    assert cell.last_restart_at is not None and cell.running


async def test_supervise_refusal_is_an_answer_not_a_crash(nursery, autojump_clock):
    cell, _ = counter_cell()
    await nursery.start(supervise, cell, POLICY, no_restart_hook)
    with pytest.raises(InvalidArgument):
        await ask(cell.inbox, lambda r: Add(-1, reply=r))
    assert (await ask(cell.inbox, lambda r: Add(1, reply=r)), cell.restarts) == (1, 0)


async def test_supervise_intensity_exceeded_fails_loudly(nursery, autojump_clock):
    cell, _ = counter_cell()
    policy = SupervisorConfig(max_restarts=2, period_s=10.0, backoff_s=0.1, backoff_max_s=1.0)

    async def crash_three_times() -> None:
        for _ in range(3):
            with pytest.raises(ActorCrashed):
                await ask(cell.inbox, lambda r: Crash(reply=r))

    nursery.start_soon(crash_three_times)
    start = trio.current_time()
    with pytest.raises(ActorCrashedError, match="'counter' crashed 3 times within 10.0s"):
        await supervise(cell, policy, no_restart_hook)
    assert trio.current_time() - start == pytest.approx(0.1 + 0.2, abs=1e-9)
    assert (cell.restarts, cell.inbox.closed) == (3, True)


async def test_supervise_crash_mid_batch_still_answers_the_rest(autojump_clock):
    cell, _ = counter_cell()
    answers: list = []
    answered = trio.Event()

    async def get_total() -> None:
        answers.append(await ask(cell.inbox, lambda r: Get(reply=r)))
        answered.set()

    async with trio.open_nursery() as system:
        cell.inbox.put(Crash())                        # both in one batch: Crash, then Get
        system.start_soon(get_total)
        await trio.testing.wait_all_tasks_blocked()
        await system.start(supervise, cell, POLICY, no_restart_hook)
        with trio.move_on_after(5):                    # virtual: autojump ends a lost ask
            await answered.wait()
        system.cancel_scope.cancel()
    assert answers == [0]


async def test_supervise_crashes_spread_beyond_the_period_keep_restarting(nursery, autojump_clock):
    cell, _ = counter_cell()
    policy = SupervisorConfig(max_restarts=1, period_s=10.0, backoff_s=0.1, backoff_max_s=1.0)
    await nursery.start(supervise, cell, policy, no_restart_hook)
    for _ in range(3):
        await crash_and_time_restart(cell)
        await trio.sleep(10)                        # virtual: the last crash leaves the window
    assert (cell.restarts, await ask(cell.inbox, lambda r: Get(reply=r))) == (3, 0)


# --- run_inline: the caller's task applies the message the actor would handle next ---------

class Boom(msgspec.Struct, frozen=True):
    """A message the core crashes on (a bug), before changing anything."""
    reply: Any = None


class CrashingCounter(Counter):
    def step(self, state: Any, msg: Any, now: float) -> tuple[Any, list]:
        if type(msg) is Boom:
            raise RuntimeError("bug")
        return super().step(state, msg, now)


async def test_run_inline_applies_a_message_only_when_the_actor_would_handle_it_next(nursery):
    from actors.runtime.actor import run_inline
    from actors.runtime.mailbox import Reply

    cell = SupervisedActor(CrashingCounter(), (0, ()), Mailbox("counter", 16), lambda _e: None)
    assert not run_inline(cell, Add(1), 0.0)            # not running yet: it must be sent
    await nursery.start(supervise, cell, POLICY, no_restart_hook)
    reply = Reply()
    assert run_inline(cell, Add(2, reply=reply), 0.0)    # idle: applied here, answered at once
    assert reply.answered and await reply.wait() == 2 and cell.state[0] == 2
    cell.inbox.put(Add(10))                              # mail waits: inline would jump the queue
    assert not run_inline(cell, Add(100), 0.0) and cell.state[0] == 2
    assert await ask(cell.inbox, lambda r: Get(reply=r)) == 12
    assert not run_inline(cell, Boom(), 0.0) and cell.state[0] == 12  # a crash: not applied here
    with pytest.raises(ActorCrashed):                    # ... but by the actor, supervised
        await ask(cell.inbox, lambda r: Boom(reply=r))
    assert cell.restarts == 1 and await ask(cell.inbox, lambda r: Get(reply=r)) == 12

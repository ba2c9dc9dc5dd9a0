"""The one shell every actor runs in, and the supervisor that restarts it.

Theory of operation. An actor is a pure *core* — `step(state, msg, now) ->
(state, effects)` plus a few queries on its state — wrapped in this shell. The
shell is the only part that touches trio: it takes every message waiting in
its `Mailbox` as one batch (or, if the core's next wake-up instant comes
first, feeds the core a `Tick`), runs `step` on each, performs the effects
(`Send` a reply, `Emit` an event), then publishes once.

Refusals are not crashes. A core that raises a `TriageError` (a malformed
request it will not handle: an unknown policy, a priority out of range) has
refused that one message on purpose: the error is the caller's answer, the
state is left as it was, and nothing is counted against the restart intensity,
which is for bugs, not for bad arguments.

Supervision, OTP style. If `step` raises anything else, the shell answers the message that
crashed it with `ActorCrashed`, logs once, and the supervisor restarts the
actor after a backoff *from its last good state*: state is a value, and
restarting from it keeps what the actor owes callers (slots held, waiters
parked) instead of silently forgetting them. More than `max_restarts` within
`period_s` and the whole system fails loudly.

Inline. A caller may apply its message in its own task (`run_inline`) when that is
exactly what the actor would do next: the actor runs and nothing waits in its inbox,
so the message would be the next one handled, on the same state, by the same core.
It saves the task switch to the actor and back (an admission hands a freed slot
straight to the next waiter, as trio.Semaphore does). Only a transactional core may
be run so (a crash leaves its state as it was): if it raises, the message goes to the
inbox after all, and the actor meets the crash itself, under its supervisor.

Shutdown. When the system is cancelled, every reply the state holds and every
request still in the inbox is answered with `ShuttingDown` before the inbox
is closed, so no caller is left parked.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio
from loguru import logger

from actors.runtime.mailbox import Mailbox
from messages.commands import Crash, Tick
from messages.errors import ActorCrashed, ShuttingDown, TriageError

_TICK = Tick()


class Send:
    """Effect: answer a parked caller (an exception value is raised there)."""

    __slots__ = ("to", "value")

    def __init__(self, to: Any, value: Any) -> None:
        self.to, self.value = to, value

    def __repr__(self) -> str:
        return f"Send({self.value!r})"


class Emit:
    """Effect: something happened that others may care about (an event message)."""

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event

    def __repr__(self) -> str:
        return f"Emit({self.event!r})"


class Core(Protocol):
    name: str

    def step(self, state: Any, msg: Any, now: float) -> tuple[Any, list]: ...
    def wakeup(self, state: Any) -> float: ...
    def parked(self, state: Any) -> Iterable[Any]: ...
    def undelivered(self, reply: Any, value: Any) -> Any | None: ...


class ActorCrashedError(Exception):
    """Raised out of the shell so the supervisor sees which actor failed."""


class SupervisedActor:
    """Everything about one actor that outlives a restart."""

    def __init__(self, core: Core, state: Any, inbox: Mailbox,
                 emit: Callable[[Any], None], publish: Callable[[Any, float], None] | None = None) -> None:
        self.core, self.state, self.inbox = core, state, inbox
        self.emit, self.publish = emit, publish
        self.restarts = 0
        self.last_restart_at: float | None = None
        self.running = False

    @property
    def name(self) -> str:
        return self.core.name


def _perform(cell: SupervisedActor, effects: list, now: float) -> None:
    for effect in effects:
        if type(effect) is Send:
            if effect.to is not None and not effect.to.deliver(effect.value):
                back = cell.core.undelivered(effect.to, effect.value)
                if back is not None:
                    _handle(cell, back, now)
        elif type(effect) is Emit:
            cell.emit(effect.event)
        else:
            effect.perform(cell, now)


def _handle(cell: SupervisedActor, msg: Any, now: float) -> None:
    if type(msg) is Crash:
        raise RuntimeError(f"injected crash in actor {cell.name!r}")
    state, effects = cell.core.step(cell.state, msg, now)
    cell.state = state
    _perform(cell, effects, now)


def inline_ready(cell: SupervisedActor) -> bool:
    """Whether a message applied now in the calling task is the one the actor would handle
    next: it runs, and nothing waits in its inbox (see "Inline" in the module doc)."""
    inbox = cell.inbox
    return cell.running and not len(inbox) and not inbox.closed


def run_inline(cell: SupervisedActor, msg: Any, now: float) -> bool:
    """Handle `msg` in the calling task if the actor would handle it next (see the module
    doc); False: not handled, send it. Never raises for the core's sake."""
    inbox = cell.inbox
    if len(inbox) or not cell.running or inbox.closed:
        return False
    core = cell.core
    try:
        state, effects = core.step(cell.state, msg, now)
    except Exception:
        return False  # the state is as it was: the actor will meet this in its own task
    cell.state = state
    for effect in effects:
        if type(effect) is Send:
            if effect.to is not None and not effect.to.deliver(effect.value):
                back = core.undelivered(effect.to, effect.value)
                if back is not None and not run_inline(cell, back, now):
                    inbox.put(back)
        elif type(effect) is Emit:
            cell.emit(effect.event)
        else:
            effect.perform(cell, now)
    if cell.publish is not None:
        cell.publish(state, now)
    inbox.wake_by(core.wakeup(state))
    return True


def _handle_guarded(cell: SupervisedActor, msg: Any, now: float) -> None:
    try:
        _handle(cell, msg, now)
    except TriageError as exc:  # refused on purpose: the caller's answer, not a crash
        reply = getattr(msg, "reply", None)
        if reply is None or not reply.deliver(exc):
            logger.bind(actor=cell.name).warning("message refused", message=type(msg).__name__,
                                                 error=type(exc).__name__)
    except Exception:
        reply = getattr(msg, "reply", None)
        if reply is not None:
            reply.deliver(ActorCrashed(cell.name))
        raise


async def serve(cell: SupervisedActor, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Run one actor until cancelled; raises if its core raises."""
    inbox, core = cell.inbox, cell.core
    cell.running = True
    task_status.started()
    try:
        while True:
            batch = await inbox.get_batch(core.wakeup(cell.state))
            now = trio.current_time()
            if not batch:
                _handle_guarded(cell, _TICK, now)
            try:
                while batch:
                    _handle_guarded(cell, batch.popleft(), now)
            except BaseException:
                inbox.put_back(batch)  # the rest of the batch is handled after the restart
                raise
            if cell.publish is not None:
                cell.publish(cell.state, now)
    finally:
        cell.running = False


def shut_down(cell: SupervisedActor) -> None:
    """Answer every ask still owed with ShuttingDown and close the inbox. Never blocks.

    Tells still in the inbox (one that gives a resource back, say) are handled
    as usual first, so what they hand back is not lost.
    """
    now = trio.current_time()
    for reply in list(cell.core.parked(cell.state)):
        reply.deliver(ShuttingDown(cell.name))
    for msg in cell.inbox.close():
        reply = getattr(msg, "reply", None)
        if reply is not None and reply.waiting:
            reply.deliver(ShuttingDown(cell.name))
        else:
            with contextlib.suppress(Exception):
                _handle(cell, msg, now)


async def supervise(cell: SupervisedActor, policy: Any, on_restart: Callable[[SupervisedActor, BaseException], None],
                    *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
    """Keep `cell` running: restart it from its last good state, within the restart intensity."""
    log = logger.bind(actor=cell.name)
    recent: deque[float] = deque()
    backoff = policy.backoff_s
    started = False
    try:
        while True:
            try:
                if started:
                    await serve(cell)
                else:
                    await trio.lowlevel.checkpoint()
                    started = True
                    task_status.started()
                    await serve(cell)
                return
            except Exception as exc:
                now = trio.current_time()
                recent.append(now)
                while recent and recent[0] <= now - policy.period_s:
                    recent.popleft()
                cell.restarts += 1
                cell.last_restart_at = now
                log.opt(exception=exc).error("actor crashed; restarting", restarts=cell.restarts)
                on_restart(cell, exc)
                if len(recent) > policy.max_restarts:
                    raise ActorCrashedError(
                        f"actor {cell.name!r} crashed {len(recent)} times within "
                        f"{policy.period_s}s; giving up") from exc
                await trio.sleep(backoff)
                backoff = min(backoff * 2, policy.backoff_max_s)
    finally:
        shut_down(cell)

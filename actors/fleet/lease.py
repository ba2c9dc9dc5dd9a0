"""Leased quotas on Redis: the two Lua scripts and the pure cores they are tested against.

Theory of operation. Redis holds each (policy, key)'s state; an instance asks for a batch
of tokens (`lease`) and gives back what it did not spend (`refund`). Both scripts read
Redis's own clock (`TIME`), so the instances' clocks never matter; tests pass `now`.
All instants are whole microseconds (exact in doubles below 2**53: 285 years).

GCRA (the policy's ``limit`` L per ``window`` W, emission interval T = W / L, rounded up to
a whole microsecond as `actors.limiter_core` does). The key holds its theoretical arrival
time TAT. A lease of ``want`` at ``now``:

    tat  = max(TAT, now)
    room = floor((now + L*T - tat) / T)           tokens a burst could take right now
    g    = clamp(want, 0, room);  TAT = tat + g*T
    wait = tat - (L-1)*T - now  when room = 0     (when the next token is due)

which is the local GCRA deciding ``g`` single requests at one instant. A refund of n:
``TAT = max(TAT - n*T, now)``. So Redis never hands out more than ``L + elapsed/T`` tokens
net of refunds, and an instance spends a token at most tau after it was granted: in any
interval D at most ``L + ceil((D + tau) / T)`` are admitted across all instances.

Sliding window (the exact policies: at most L in any window). The key is a sorted set of
granted units scored by the instant they leave the window. A unit granted at t is scored
``t + W + tau`` (not ``t + W``): it may be spent as late as t + tau, and must count on Redis
until it has left the window *as spent*. Then every unit spent in a window was granted while
all the others were still counted, so no window holds more than L, whatever N (stricter than
"L + N"); the price is that Redis gives a unit back up to tau late. `FleetGate` uses
tau = min(credit_ttl_s, W / 10) for such a policy, so that price is at most a tenth.
Members are ``<lease id>:<i>`` (the id from a counter key), so a refund removes its own.

Every key has a TTL: a GCRA key until its TAT (after that it is a fresh key), a window until
its last unit leaves, each plus a second (a key kept longer decides exactly as the key gone;
the slack keeps tests that pass `now` on a clock of their own exact on a stalling machine).
"""

from __future__ import annotations

import math

__all__ = ["LEASE_LUA", "REFUND_LUA", "gcra_lease", "gcra_refund", "interval_us",
           "window_lease", "window_refund"]

US = 1_000_000

# KEYS: state key, counter key (windows).  ARGV: algorithm ("gcra" | "window"), T (gcra) or W
# (window) in us, L, want, tau in us (windows), now in us ("" = Redis's TIME).
# Returns {granted, wait_us, remaining, now_us, lease_id}.
LEASE_LUA = """
local now = tonumber(ARGV[6])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local algo, span, limit, want = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if algo == 'gcra' then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local room = math.floor((now + limit * span - tat) / span)
  if room < 0 then room = 0 end
  local g = math.min(want, room)
  if g > 0 then
    tat = tat + g * span
    redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local wait = 0
  if room - g == 0 then wait = tat - (limit - 1) * span - now end
  if wait < 0 then wait = 0 end
  return {g, string.format('%.0f', wait), room - g, string.format('%.0f', now), 0}
end
local tau = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local room = limit - redis.call('ZCARD', KEYS[1])
if room < 0 then room = 0 end
local g = math.min(want, room)
local id = 0
if g > 0 then
  id = redis.call('INCR', KEYS[2])
  local leave = string.format('%.0f', now + span + tau)
  for i = 1, g do redis.call('ZADD', KEYS[1], leave, id .. ':' .. i) end
  local ttl = math.ceil((span + tau) / 1000) + 1000
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
local wait = 0
if room - g == 0 then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then wait = tonumber(first[2]) - now end
end
return {g, string.format('%.0f', wait), room - g, string.format('%.0f', now), id}
"""

# KEYS: state key.  ARGV: algorithm, T in us (gcra), n, now in us ("" = TIME), lease id and
# the lease's grant (windows: its members `<id>:<grant-n+1..grant>` are removed).
REFUND_LUA = """
local n = tonumber(ARGV[3])
if ARGV[1] == 'gcra' then
  local now = tonumber(ARGV[4])
  if not now then
    local t = redis.call('TIME')
    now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  end
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local back = tat - n * tonumber(ARGV[2])
  if back <= now then
    if tat > 0 then redis.call('DEL', KEYS[1]) end
  else
    redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', math.ceil((back - now) / 1000) + 1000)
  end
  return 0
end
local id, grant = ARGV[5], tonumber(ARGV[6])
for i = grant - n + 1, grant do redis.call('ZREM', KEYS[1], id .. ':' .. i) end
return 0
"""


def interval_us(limit: int, window_s: float) -> int:
    """T in whole microseconds, rounded up (never zero), as `actors.limiter_core` has it."""
    return max(1, -(-round(window_s * US) // limit))


# -- the pure cores: exactly what the scripts compute -----------------------------------------

def gcra_lease(tat: float, now: float, t: float, limit: int, want: int) -> tuple[float, int, float, int]:
    """(new TAT, granted, wait_us, remaining) of a GCRA lease; `tat` 0 for a key never seen."""
    tat = max(tat, now)
    room = max(0, math.floor((now + limit * t - tat) / t))
    g = min(want, room)
    tat += g * t
    wait = max(0.0, tat - (limit - 1) * t - now) if room - g == 0 else 0.0
    return tat, g, wait, room - g


def gcra_refund(tat: float, now: float, t: float, n: int) -> float:
    """The TAT after giving back `n` unspent tokens (0: the key is fresh again)."""
    back = tat - n * t
    return 0.0 if back <= now else back


def window_lease(leaves: list[float], now: float, window: float, limit: int, want: int,
                 tau: float) -> tuple[list[float], int, float, int]:
    """(units still counted, granted, wait_us, remaining) of a sliding-window lease;
    `leaves` holds the instants the counted units leave."""
    counted = sorted(x for x in leaves if x > now)
    room = max(0, limit - len(counted))
    g = min(want, room)
    counted += [now + window + tau] * g
    counted.sort()
    wait = counted[0] - now if room - g == 0 and counted else 0.0
    return counted, g, wait, room - g


def window_refund(leaves: list[float], grant_leave: float, n: int) -> list[float]:
    """Give back `n` units of the lease whose units leave at `grant_leave`."""
    out = list(leaves)
    for _ in range(n):
        if grant_leave in out:
            out.remove(grant_leave)
    return out

"""Limits kept in Redis, checked and charged atomically by one script, so every replica sees the
same counts and 100 requests racing a limit of 10 take exactly 10.

Two kinds of limit:
- a rate (requests or tokens per minute): a bucket that holds `limit` and refills `limit` per
  period, kept as its "theoretical arrival time" (GCRA), one key each. A refused request is
  told when enough has refilled; an answered one how much is left and when it is full again.
- a quota per calendar period (images per day): a counter for the current period, gone when
  it ends.

A request's checks are charged all or none: one refused charges nothing."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from redis import Redis

# KEYS: one per check. ARGV[1]: per check, its kind ("rate" or "quota"), limit, cost and period
# (ms; for a quota, what is left of its period), all in one comma-separated string. Returns, as
# one comma-separated string (a reply cheap to send and to read): 1 or 0 (all charged, or none),
# then per check what is left, ms until full (rate) or until the period ends (quota), and ms
# until this cost fits.
_CHECK = """
local now_s = redis.call('TIME')
local now = tonumber(now_s[1]) * 1000 + math.floor(tonumber(now_s[2]) / 1000)
local args = {}
for field in string.gmatch(ARGV[1], '[^,]+') do table.insert(args, field) end
local out, charges, ok = {1}, {}, 1
for i = 1, #KEYS do
  local base = (i - 1) * 4
  local kind, limit, cost, period = args[base + 1], tonumber(args[base + 2]), tonumber(args[base + 3]), tonumber(args[base + 4])
  if kind == 'rate' then
    local interval = period / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local after = tat + cost * interval
    local wait = after - period - now
    if wait > 0 then
      ok = 0
      table.insert(out, math.floor((period - (tat - now)) / interval))
      table.insert(out, math.ceil(tat - now))
      table.insert(out, math.ceil(wait))
    else
      charges[i] = after
      table.insert(out, math.floor((period - (after - now)) / interval))
      table.insert(out, math.ceil(after - now))
      table.insert(out, 0)
    end
  else
    local used = tonumber(redis.call('GET', KEYS[i]) or 0)
    if used + cost > limit then
      ok = 0
      table.insert(out, limit - used)
      table.insert(out, period)
      table.insert(out, period)
    else
      charges[i] = cost
      table.insert(out, limit - used - cost)
      table.insert(out, period)
      table.insert(out, 0)
    end
  end
end
if ok == 1 then
  for i = 1, #KEYS do
    local base = (i - 1) * 4
    if args[base + 1] == 'rate' then
      redis.call('SET', KEYS[i], charges[i], 'PX', math.ceil(charges[i] - now) + 1000)
    else
      redis.call('INCRBY', KEYS[i], charges[i])
      redis.call('PEXPIRE', KEYS[i], tonumber(args[base + 4]) + 60000)
    end
  end
end
out[1] = ok
for i = 2, #out do out[i] = string.format('%d', out[i]) end
return table.concat(out, ',')
"""

# KEYS[1]: a rate's key. ARGV: limit, period (ms), tokens to charge more (negative: to give back).
_ADJUST = """
local now_s = redis.call('TIME')
local now = tonumber(now_s[1]) * 1000 + math.floor(tonumber(now_s[2]) / 1000)
local limit, period, delta = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
tat = tat + delta * period / limit
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], tat, 'PX', math.ceil(tat - now) + 1000)
end
return 1
"""


@dataclass(frozen=True)
class Check:
    """One limit to hold a request to: `cost` of `limit` per `period_ms`."""

    key: str
    kind: Literal["rate", "quota"]
    limit: int
    cost: int
    period_ms: int


@dataclass(frozen=True)
class Outcome:
    check: Check
    remaining: int
    reset_ms: int  # rate: until the bucket is full again; quota: until its period ends
    retry_ms: int  # until this request's cost would fit (0: it did)


class RateLimits:
    def __init__(self, redis: Redis):
        self.redis = redis
        self._check = redis.register_script(_CHECK)
        self._adjust = redis.register_script(_ADJUST)

    def charge(self, checks: list[Check]) -> tuple[bool, list[Outcome]]:
        """Charges every check's cost, or none when one would go past its limit."""
        if not checks:
            return True, []
        spec = ",".join(f"{c.kind},{c.limit},{c.cost},{c.period_ms}" for c in checks)
        result = [int(x) for x in self._check(keys=[c.key for c in checks], args=[spec]).split(b",")]
        outcomes = [Outcome(c, max(0, int(result[1 + 3 * n])), int(result[2 + 3 * n]), int(result[3 + 3 * n]))
                    for n, c in enumerate(checks)]
        return bool(result[0]), outcomes

    def adjust(self, key: str, limit: int, period_ms: int, delta: int) -> None:
        """Charges a rate `delta` more (or gives back -delta): an estimate made good."""
        if delta:
            self._adjust(keys=[key], args=[limit, period_ms, delta])


def seconds(ms: int) -> int:
    """Whole seconds to wait, never 0 for a wait that is not over."""
    return max(1, math.ceil(ms / 1000)) if ms > 0 else 0

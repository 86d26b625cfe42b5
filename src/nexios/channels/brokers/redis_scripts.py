"""The Lua scripts of the Redis broker's group logs (`RedisBroker.append` and `read`).

Each runs in one step on Redis, on a group's three keys, so that appending to the log,
trimming it to its bounds and announcing the entry on pub/sub happen together: the
order of announcements is the order of offsets, for every process.
"""

from __future__ import annotations

import hashlib

__all__ = ["APPEND", "LOG_IDLE_TTL", "READ", "Script"]


# Group logs (issue 11): three keys per channel, in one Redis Cluster slot (hash tag
# {channel}). The meta hash holds epoch, top (last offset), bytes (payload held), t (time
# of the last append, ms) and age (max_age in ms, for `read`); the stream holds the
# entries offset first..top, contiguous, with ids "<offset>-0" and fields k (kind),
# b (body), i (message id), t (Redis TIME in ms, never decreasing); the sizes list holds
# "<body length> <t>" per entry, oldest first, so that trimming reads no body. Both
# scripts run on KEYS = meta, stream, sizes, and ARGV[1] = a fresh epoch, used only if
# the log has to be created.
LOG_PRELUDE = """
local meta, stream, sizes = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function id_of(offset)
  return string.format('%d-0', offset)
end

-- The log's state: epoch, top, bytes, t, age, created. A log that does not exist, or
-- whose entries are gone (stream evicted or deleted alone), starts again: new epoch,
-- top 0, no entry.
local function open()
  local state = redis.call('HMGET', meta, 'epoch', 'top', 'bytes', 't', 'age')
  local top = tonumber(state[2])
  if state[1] and top and (top == 0 or redis.call('EXISTS', stream) == 1) then
    return state[1], top, tonumber(state[3]) or 0, tonumber(state[4]) or 0,
      tonumber(state[5]), false
  end
  redis.call('DEL', meta, stream, sizes)
  redis.call('HSET', meta, 'epoch', ARGV[1], 'top', 0, 'bytes', 0)
  return ARGV[1], 0, 0, 0, nil, true
end

-- Drop the oldest entries while there are more than max_count, or more than max_bytes
-- of bodies (the newest kept), or they were appended at or before cutoff (ms); nil
-- lifts a bound. Each entry's size and time are in the list `sizes` ("<size> <ms>",
-- oldest first), so deciding reads no body: one LINDEX and LPOP per entry dropped,
-- then one XTRIM. Returns the new first offset and bytes.
local function trim(first, top, bytes, max_count, max_bytes, cutoff)
  local kept = first
  while kept <= top do
    local left = top - kept + 1
    local by_size = (max_count and left > max_count)
      or (max_bytes and bytes > max_bytes and left > 1)
    if not by_size and not cutoff then
      break
    end
    local oldest = redis.call('LINDEX', sizes, 0)
    if not oldest then
      break
    end
    local size, time = string.match(oldest, '(%d+) (%d+)')
    if not by_size and tonumber(time) > cutoff then
      break
    end
    redis.call('LPOP', sizes)
    bytes = bytes - tonumber(size)
    kept = kept + 1
  end
  if kept > first then
    redis.call('XTRIM', stream, 'MINID', id_of(kept))
  end
  return kept, bytes
end
"""

# ARGV: epoch, kind, body, message id, max_count, max_bytes, max_age (ms), ttl (ms),
# pub/sub channel ("" for a bound that is None). Returns {epoch, offset}.
APPEND_LUA = (
    LOG_PRELUDE
    + """
local epoch, top, bytes, last = open()
local kind, body, id = ARGV[2], ARGV[3], ARGV[4]
local max_count, max_bytes, max_age = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local ttl = tonumber(ARGV[8])
local time = math.max(now, last)
top = top + 1
redis.call('XADD', stream, id_of(top), 'k', kind, 'b', body, 'i', id, 't', time)
redis.call('RPUSH', sizes, string.format('%d %d', #body, time))
bytes = bytes + #body
local first = top - redis.call('XLEN', stream) + 1
first, bytes = trim(first, top, bytes, max_count, max_bytes, max_age and time - max_age)
redis.call('HSET', meta, 'top', top, 'bytes', bytes, 't', time)
if max_age then
  redis.call('HSET', meta, 'age', ARGV[7])
else
  redis.call('HDEL', meta, 'age')
end
if ttl then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', sizes, ttl)
else
  redis.call('PERSIST', meta)
  redis.call('PERSIST', stream)
  redis.call('PERSIST', sizes)
end
local head = string.format('%d', top) .. ':' .. epoch .. '\\n' .. kind .. '\\n' .. id .. '\\n'
redis.call('PUBLISH', ARGV[9], head .. body)
return {epoch, top}
"""
)

# ARGV: epoch, after, limit ("" for None), ttl (ms) of a log created empty here.
# Returns {epoch, top, first, entries} (entries as XRANGE returns them).
READ_LUA = (
    LOG_PRELUDE
    + """
local epoch, top, bytes, last, age, created = open()
if created then
  redis.call('PEXPIRE', meta, ARGV[4])
end
local after, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local first = top + 1
if top > 0 then
  first = top - redis.call('XLEN', stream) + 1
end
if age and first <= top then
  local kept
  kept, bytes = trim(first, top, bytes, nil, nil, now - age)
  if kept > first then
    first = kept
    redis.call('HSET', meta, 'bytes', bytes)
  end
end
local entries = {}
if after >= first - 1 and after < top and (not limit or limit > 0) then
  if limit then
    entries = redis.call('XRANGE', stream, id_of(after + 1), '+', 'COUNT', limit)
  else
    entries = redis.call('XRANGE', stream, id_of(after + 1), '+')
  end
end
return {epoch, top, first, entries}
"""
)

#: How long a log lives after its last append when its entries expire (max_age set):
#: at least this, so that a quiet group keeps its epoch for a while; also the life of a
#: log that `read` created and nothing appended to.
LOG_IDLE_TTL = 3600.0


class Script:
    """A Lua script and its SHA1, for EVALSHA."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


APPEND = Script(APPEND_LUA)
READ = Script(READ_LUA)

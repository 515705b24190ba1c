"""The Redis engine's Lua scripts: each runs atomically in Redis, so what it reads and writes
together no other client sees half done (Redis's "Scripting with Lua").

Every key a script touches is passed in ``KEYS`` and belongs to one channel (``{C}``, the hash
tag of ``redis_keys.ChannelKeys``), so a Redis Cluster can run each script on the channel's
shard. Pub/sub topics are not keys. ``redis_engine.py`` documents the layout; the scripts are
its single writer.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "HISTORY",
    "INIT",
    "PRESENCE",
    "PRESENCE_JOIN",
    "PRESENCE_LEAVE",
    "PUBLISH",
    "SCRIPTS",
    "SET_READ",
    "TRIM",
    "Script",
]


class Script:
    """A Lua script, run by its SHA1 (``EVALSHA``) and loaded again when Redis forgot it."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


#: Number, store and publish one message (the model of Centrifugo's broker_history_add_stream).
#: KEYS: meta, stream, dedupe (the meta key again when the sender has no id for the message).
#: ARGV: head, tail (the broadcast around its seq), connection id, clientMsgId or "",
#: created at, dedupe seconds (0: none), topic.
#: Returns {seq, epoch, duplicate}; the error NOMETA when the channel has no meta yet (INIT).
PUBLISH = Script(
    """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then return redis.error_reply('NOMETA') end
local ttl = tonumber(ARGV[6])
if ttl > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then return {tonumber(seen), epoch, 1} end
end
local seq = redis.call('HINCRBY', KEYS[1], 's', 1)
local payload = ARGV[1] .. seq .. ARGV[2]
redis.call('XADD', KEYS[2], seq .. '-0', 'd', payload, 'c', ARGV[3], 'k', ARGV[4], 't', ARGV[5])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
if ttl > 0 then redis.call('SET', KEYS[3], seq, 'EX', ttl) end
redis.call('PUBLISH', ARGV[7], 'p' .. seq .. ':' .. epoch .. ':' .. ARGV[3] .. ':' .. payload)
return {seq, epoch, 0}
"""
)

#: Give a channel its meta if it has none: a new epoch, seqs going on after ``floor`` (the
#: archive's last), an empty stream whose archive group starts there. A channel that never
#: gets a message expires after ``ttl`` seconds (a publish makes it last).
#: KEYS: meta, stream. ARGV: epoch, floor, group, ttl. Returns 1 if it made one.
INIT = Script(
    """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[1], 's', ARGV[2])
redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[3], ARGV[2] .. '-0', 'MKSTREAM')
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""
)

#: A channel's position and part of its stream, read together.
#: KEYS: meta, stream. ARGV: after (-1: none), most after it, latest (how many), ttl.
#: Returns {epoch, top, entries after ``after`` (oldest first), latest entries (newest first)};
#: NOMETA when the channel has none (INIT). An unused channel's expiry starts again.
HISTORY = Script(
    """
local meta = redis.call('HMGET', KEYS[1], 'e', 's')
if not meta[1] then return redis.error_reply('NOMETA') end
if redis.call('TTL', KEYS[1]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local after, latest = {}, {}
local since = tonumber(ARGV[1])
if since >= 0 and tonumber(ARGV[2]) > 0 then
  after = redis.call('XRANGE', KEYS[2], '(' .. since .. '-0', '+', 'COUNT', ARGV[2])
end
if tonumber(ARGV[3]) > 0 then
  latest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
return {meta[1], tonumber(meta[2]), after, latest}
"""
)

#: Count one node's connections of a member in a channel, or refresh them (presence).
#: KEYS: entries (ZSET entry -> expiry), info (HASH entry -> JSON), members (HASH member ->
#: entries). ARGV: entry, member, info, expires at (ms), announce anyway ("1": it shows
#: differently now), topic, event.
#: Publishes ``event`` when the member is new in the channel (or shows differently).
PRESENCE_JOIN = Script(
    """
local added = redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local first = 0
if added == 1 and redis.call('HINCRBY', KEYS[3], ARGV[2], 1) == 1 then first = 1 end
if first == 1 or ARGV[5] == '1' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return first
"""
)

#: A node's last connection of a member left a channel.
#: KEYS: entries, info, members. ARGV: entry, member, topic, event.
#: Publishes ``event`` when it was the member's last entry in the channel.
PRESENCE_LEAVE = Script(
    """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HINCRBY', KEYS[3], ARGV[2], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""
)

#: Expire the entries of nodes that stopped refreshing them (crashed), announcing each member
#: whose last entry that was ('l:' and its info: no connection), then answer a read.
#: KEYS: entries, info, members. ARGV: now (ms), topic, what ("entries": every entry's info;
#: "count": how many members; "sweep": nothing).
PRESENCE = Script(
    """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, entry in ipairs(expired) do
  local info = redis.call('HGET', KEYS[2], entry)
  redis.call('ZREM', KEYS[1], entry)
  redis.call('HDEL', KEYS[2], entry)
  if info then
    local member = cjson.decode(info)['key']
    if redis.call('HINCRBY', KEYS[3], member, -1) <= 0 then
      redis.call('HDEL', KEYS[3], member)
      redis.call('PUBLISH', ARGV[2], 'l:' .. info)
    end
  end
end
if ARGV[3] == 'entries' then return redis.call('HVALS', KEYS[2]) end
if ARGV[3] == 'count' then return redis.call('HLEN', KEYS[3]) end
return #expired
"""
)

#: A reader's last read seq, which only goes forward. KEYS: reads. ARGV: reader, seq.
SET_READ = Script(
    """
local known = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > known then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""
)

#: Drop the entries of a stream that are archived and that its history no longer keeps: those
#: before its latest ``history`` and those created before ``oldest`` (the namespace's
#: retention; entries carry their creation time in ``t``), never one the archive group has not
#: acknowledged (pending) or not read yet.
#: KEYS: stream, meta. ARGV: group, history (entries kept), oldest ("": any age).
#: Returns the entries trimmed.
TRIM = Script(
    """
local group = nil
for _, fields in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, delivered = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'name' then name = fields[i + 1] end
    if fields[i] == 'last-delivered-id' then delivered = fields[i + 1] end
  end
  if name == ARGV[1] then group = delivered end
end
if not group then return 0 end
local floor = tonumber(string.match(group, '^(%d+)')) + 1
local pending = redis.call('XPENDING', KEYS[1], ARGV[1])
if pending[1] > 0 then
  local oldest = tonumber(string.match(pending[2], '^(%d+)'))
  if oldest < floor then floor = oldest end
end
local keep = tonumber(redis.call('HGET', KEYS[2], 's') or '0') - tonumber(ARGV[2]) + 1
if ARGV[3] ~= '' then
  local from = '-'
  while keep < floor do
    local chunk = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 64)
    if #chunk == 0 then keep = floor break end
    local young = nil
    for _, entry in ipairs(chunk) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 't' and fields[i + 1] >= ARGV[3] then young = entry[1] end
      end
      if young then break end
    end
    if young then
      local seq = tonumber(string.match(young, '^(%d+)'))
      if seq > keep then keep = seq end
      break
    end
    local last = chunk[#chunk][1]
    local after = tonumber(string.match(last, '^(%d+)')) + 1
    if after > keep then keep = after end
    from = '(' .. last
  end
end
if keep < floor then floor = keep end
if floor <= 1 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', floor .. '-0')
"""
)

#: Every script, loaded at start and again after Redis restarted.
SCRIPTS = (PUBLISH, INIT, HISTORY, PRESENCE_JOIN, PRESENCE_LEAVE, PRESENCE, SET_READ, TRIM)

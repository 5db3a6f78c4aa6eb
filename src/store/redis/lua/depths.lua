-- ARGV: lease ms, then targets. Per target: pending (held jobs of lanes too), in flight, dead,
-- and the time (ms) the oldest open job arrived, or '' when it has none. A held job is never
-- older than its lane's first, which is due or leased, so it needs no look of its own.
--
-- The oldest open job is the earliest of: the first of `retried:<t>` (jobs that failed at
-- least once, by their callback's arrival), the first of `due:<t>` (a job never attempted is
-- due from its arrival; a retried one is in `retried`), and the first lease (a job taken at
-- that time arrived no later). Jobs delivered on their first attempt, most of them, cost
-- nothing here. An entry of `retried` whose job is no longer open (left by a build that did
-- not keep the set) is dropped when it comes first.
local lease_ms = tonumber(ARGV[1])
local counts = {}
local function first(key)
  local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if head[2] then return tonumber(head[2]) end
  return nil
end
-- Jobs held in callbacks' hashes (leased at accept, see prelude_inline.lua) are in flight too: the
-- first 1,000 such callbacks are read, by lease expiry, so the first seen per target is its
-- oldest (taken a lease before its expiry).
local held, held_since = {}, {}
do
  local fields = {}
  for i = 2, #ARGV do table.insert(fields, 'l:' .. ARGV[i]) end
  local entries = redis.call('ZRANGE', K .. ':inline', 0, 999, 'WITHSCORES')
  for e = 1, #entries, 2 do
    local tokens = redis.call('HMGET', K .. ':cb:' .. entries[e], unpack(fields))
    for i = 2, #ARGV do
      local token = tokens[i - 1]
      if token and token ~= '0' then
        local target = ARGV[i]
        held[target] = (held[target] or 0) + 1
        if not held_since[target] then held_since[target] = tonumber(entries[e + 1]) - lease_ms end
      end
    end
  end
end
for i = 2, #ARGV do
  local target = ARGV[i]
  local due, lease = K .. ':due:' .. target, K .. ':lease:' .. target
  local retried = K .. ':retried:' .. target
  local oldest
  for _ = 1, 100 do
    local head = redis.call('ZRANGE', retried, 0, 0, 'WITHSCORES')
    if not head[1] then break end
    local state = redis.call('HGET', K .. ':job:' .. head[1], 'state')
    if state == 'p' or state == 'f' then oldest = tonumber(head[2]); break end
    redis.call('ZREM', retried, head[1])
  end
  local d = first(due)
  if d and (not oldest or d < oldest) then oldest = d end
  local l = first(lease)
  if l and (not oldest or l - lease_ms < oldest) then oldest = l - lease_ms end
  local h = held_since[target]
  if h and (not oldest or h < oldest) then oldest = h end
  table.insert(counts, redis.call('ZCARD', due) + redis.call('ZCARD', K .. ':held:' .. target))
  table.insert(counts, redis.call('ZCARD', lease) + (held[target] or 0))
  table.insert(counts, redis.call('ZCARD', K .. ':dead:' .. target))
  table.insert(counts, oldest and tostring(oldest) or '')
end
return counts

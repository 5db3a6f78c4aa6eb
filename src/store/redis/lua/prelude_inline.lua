-- Jobs leased at accept (shape version 7) live in their callback's hash until their first
-- outcome, not in hashes and sets of their own: `l:<t>` is the lease token of target t's job,
-- '0' once it is no longer held there, and `inline` (zset) lists the callbacks with such jobs
-- by lease expiry. The job's id follows the callback's in `routed`'s order unless the hash
-- names it (`job:<t>`). A job that fails, is released, or whose lease expires moves to a hash of
-- its own (`job:<id>`), where every other script finds it as before.
local function own_hash(cb, target, job, state, token)
  redis.call('HSET', K .. ':job:' .. job, 'cb', cb, 'target', target, 'state', state, 'lease', token, 'attempts', 0, 'base', 0)
  redis.call('HSET', K .. ':cb:' .. cb, 'l:' .. target, '0')
end
-- Callback `cb`'s jobs held in its hash: {target, job, lease token} each.
local function inline_jobs(cb)
  local c = K .. ':cb:' .. cb
  local targets, fields = {}, {}
  for t in string.gmatch(redis.call('HGET', c, 'routed') or '', '([^\n]+)') do
    table.insert(targets, t)
    table.insert(fields, 'l:' .. t)
    table.insert(fields, 'job:' .. t)
  end
  local held = {}
  if #fields == 0 then return held end
  local f = redis.call('HMGET', c, unpack(fields))
  for i, t in ipairs(targets) do
    local token = f[2 * i - 1]
    if token and token ~= '0' then
      table.insert(held, {t, f[2 * i] or string.format('%d', tonumber(cb) + i), token})
    end
  end
  return held
end
-- Jobs held in callbacks' hashes whose lease expired (their process died) are due now, in
-- hashes of their own; at most `limit` callbacks a call.
local function sweep_inline(now, limit)
  local key = K .. ':inline'
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)
  for _, cb in ipairs(expired) do
    for _, held in ipairs(inline_jobs(cb)) do
      own_hash(cb, held[1], held[2], 'p', '0')
      redis.call('ZADD', K .. ':due:' .. held[1], now, held[2])
    end
  end
  if #expired > 0 then redis.call('ZREM', key, unpack(expired)) end
end

-- Shared by every script: Redis's clock in ms, and closing a job of a callback.
local K = KEYS[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- One job of callback `cb` is gone (delivered or purged): with none left, the callback may be
-- purged after the retention.
local function close_job(cb)
  local key = K .. ':cb:' .. cb
  local open = redis.call('HINCRBY', key, 'open', -1)
  if open <= 0 then
    local received = redis.call('HGET', key, 'received')
    if received then redis.call('ZADD', K .. ':done', received, cb) end
  end
end
-- The fields of dead letter `id` (10), or nil if it is not dead.
local function letter(id)
  local j = redis.call('HMGET', K .. ':job:' .. id, 'state', 'cb', 'target', 'died', 'attempts', 'status', 'error')
  if j[1] ~= 'd' then return nil end
  local c = redis.call('HMGET', K .. ':cb:' .. j[2], 'msg_type', 'event', 'received')
  return {id, j[2], j[3], c[1] or false, c[2] or false, c[3] or false, j[4] or false, j[5] or false, j[6] or false, j[7] or false}
end
-- Lane-ordered jobs (`order = "per_user"`): `lane:<lane>:<t>` (zset) holds a lane's open jobs
-- for target t by their place in it; only its first is in `due:<t>` or `lease:<t>`, the others
-- wait in state 'h' (held), also listed in `held:<t>`. Lanes have no ':', so the key is one.
local function lane_key(lane, target) return K .. ':lane:' .. lane .. ':' .. target end
-- The first open job of a lane, or nil. Firsts no longer open (delivered or dead under a build
-- that keeps no lanes) come off; a held first is let go: due now.
local function lane_first(lk, target)
  for _ = 1, 100 do
    local first = redis.call('ZRANGE', lk, 0, 0)[1]
    if not first then return nil end
    local state = redis.call('HGET', K .. ':job:' .. first, 'state')
    if state == 'p' or state == 'f' then return first end
    if state == 'h' then
      redis.call('HSET', K .. ':job:' .. first, 'state', 'p')
      redis.call('ZREM', K .. ':held:' .. target, first)
      redis.call('ZADD', K .. ':due:' .. target, now_ms(), first)
      return first
    end
    redis.call('ZREM', lk, first)
  end
  return nil
end
-- Job `job` joins the end of `lane` for `target`: true if it is the lane's first (the caller
-- makes it due or in flight), else it is listed as held (the caller sets its state 'h').
local function join_lane(lane, target, job)
  local lk = lane_key(lane, target)
  local first = lane_first(lk, target)
  local last = redis.call('ZRANGE', lk, -1, -1, 'WITHSCORES')
  local place = 1
  if last[2] then place = tonumber(last[2]) + 1 end
  redis.call('ZADD', lk, place, job)
  if first then redis.call('ZADD', K .. ':held:' .. target, place, job) end
  return not first
end
-- Job `job` of `lane` was delivered or died: it leaves the lane, and the next one goes.
local function leave_lane(lane, target, job)
  local lk = lane_key(lane, target)
  redis.call('ZREM', lk, job)
  lane_first(lk, target)
end
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

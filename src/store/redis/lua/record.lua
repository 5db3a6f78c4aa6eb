-- ARGV, per outcome: delivered|retry|dead, job, token, callback, target, and for a retry or a
-- death (11 in all) delay ms, attempt, at ms, status, error, error present (a delivery's
-- attempt is not kept: 5). Each as if alone, in order; one reply each: 1: applied, 2:
-- applied, and the job's lane let its next job go (due now: its worker should look), 0: the
-- lease does not hold.
--
-- Each callback's hash is read once for the batch (`open`, `received`, and the lease tokens of
-- its jobs held there), so a job leased at accept and delivered on its first attempt (most
-- of them) costs no command of its own: its callback's hash is written once at the end, its
-- jobs' tokens cleared and `open` lowered in one HSET. A job held there that failed moves to a
-- hash of its own (see prelude_inline.lua) in its attempt's one HSET, its token cleared in that
-- same HSET of its callback; jobs in hashes of their own are read from those.
-- Leases ended and jobs delivered in this batch: one ZREM per lease set and one DEL at the end.
-- `retried:<t>` holds the target's jobs that failed at least once, by their callback's
-- arrival (how old its backlog is: see depths.lua); they leave it when delivered or dead.
-- A lane-ordered job delivered or dead leaves its lane, and the lane's next job is due; a retry
-- keeps the lane.
local ended, gone, delivered, settled = {}, {}, {}, {}
-- Each outcome's place in ARGV.
local outcomes, o = {}, 0
while o < #ARGV do
  table.insert(outcomes, o)
  if ARGV[o + 1] == 'delivered' then o = o + 5 else o = o + 11 end
end
-- One clock reading for the batch's retries.
local clock
local function now()
  if not clock then clock = now_ms() end
  return clock
end
-- Per callback of the batch, in order: {open, received, tokens = {target → token}, whether it
-- had tokens}, read at once; `closing` counts its jobs delivered in this batch, `cleared` the
-- targets of those delivered from its hash.
local cbs, cb_order = {}, {}
do
  local wanted = {}
  for _, o in ipairs(outcomes) do
    local cb, target = ARGV[o + 4], ARGV[o + 5]
    if not wanted[cb] then
      wanted[cb] = {}
      table.insert(cb_order, cb)
    end
    wanted[cb][target] = true
  end
  for _, cb in ipairs(cb_order) do
    local fields, order = {'open', 'received'}, {}
    for target in pairs(wanted[cb]) do
      table.insert(fields, 'l:' .. target)
      table.insert(order, target)
    end
    local f = redis.call('HMGET', K .. ':cb:' .. cb, unpack(fields))
    local tokens, inline = {}, false
    for i, target in ipairs(order) do
      tokens[target] = f[i + 2]
      if f[i + 2] then inline = true end
    end
    cbs[cb] = {open = tonumber(f[1] or '0'), received = f[2], tokens = tokens, inline = inline, closing = 0, cleared = {}}
  end
end
local function settle(target, job)
  local set = K .. ':retried:' .. target
  if not settled[set] then settled[set] = {} end
  table.insert(settled[set], job)
end
-- The outcome whose arguments follow ARGV[o].
local function record(o)
  local kind, job, token = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local cb, target = ARGV[o + 4], ARGV[o + 5]
  local c = cbs[cb]
  local j = K .. ':job:' .. job
  local f, moved
  if c.tokens[target] == token then
    -- Held in the callback's hash under this lease.
    c.tokens[target] = '0'
    if kind == 'delivered' then
      delivered[job] = true
      c.closing = c.closing + 1
      table.insert(c.cleared, target)
      return 1
    end
    -- It failed: it moves to a hash of its own (see prelude_inline.lua), written whole by this
    -- attempt's HSET below, and its token is cleared with the callback's at the end.
    table.insert(c.cleared, target)
    f, moved = {'f', token, target, cb, '0', false}, true
  else
    if delivered[job] then return 0 end
    f = redis.call('HMGET', j, 'state', 'lease', 'target', 'cb', 'attempts', 'lane')
    -- Another callback's job is never counted against this one's `open`.
    if f[1] ~= 'f' or f[2] ~= token or f[4] ~= cb then return 0 end
    target = f[3]
    local set = K .. ':lease:' .. target
    if not ended[set] then ended[set] = {} end
    table.insert(ended[set], job)
  end
  if kind == 'delivered' then
    delivered[job] = true
    if f[5] and f[5] ~= '0' then settle(target, job) end
    table.insert(gone, j)
    table.insert(gone, K .. ':att:' .. job)
    c.closing = c.closing + 1
    if f[6] and leave_lane(f[6], target, job) then return 2 end
    return 1
  end
  local attempt, at, status = ARGV[o + 7], ARGV[o + 8], ARGV[o + 9]
  local err = '-'
  if ARGV[o + 11] == '1' then err = 'E' .. ARGV[o + 10] end
  redis.call('HSET', K .. ':att:' .. job, attempt, at .. '|' .. status .. '|' .. err)
  -- The job's fields in one HSET, and what this attempt did not have in one HDEL.
  local set, gone_fields = {'attempts', attempt, 'updated', at}, {}
  if moved then
    for _, v in ipairs({'cb', cb, 'target', target, 'lease', token, 'base', 0}) do
      table.insert(set, v)
    end
  end
  if status ~= '' then
    table.insert(set, 'status'); table.insert(set, status)
  else
    table.insert(gone_fields, 'status')
  end
  if ARGV[o + 11] == '1' then
    table.insert(set, 'error'); table.insert(set, ARGV[o + 10])
  else
    table.insert(gone_fields, 'error')
  end
  if kind == 'retry' then
    table.insert(set, 'state'); table.insert(set, 'p')
  else
    table.insert(set, 'state'); table.insert(set, 'd')
    table.insert(set, 'died'); table.insert(set, at)
  end
  redis.call('HSET', j, unpack(set))
  if #gone_fields > 0 then redis.call('HDEL', j, unpack(gone_fields)) end
  if kind == 'retry' then
    redis.call('ZADD', K .. ':due:' .. target, now() + tonumber(ARGV[o + 6]), job)
    if c.received then redis.call('ZADD', K .. ':retried:' .. target, 'NX', c.received, job) end
  else
    settle(target, job)
    redis.call('ZADD', K .. ':dead:' .. target, at, job)
    if f[6] and leave_lane(f[6], target, job) then return 2 end
  end
  return 1
end
local replies = {}
for _, o in ipairs(outcomes) do table.insert(replies, record(o)) end
for set, jobs in pairs(ended) do redis.call('ZREM', set, unpack(jobs)) end
for set, jobs in pairs(settled) do redis.call('ZREM', set, unpack(jobs)) end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
-- Each callback with jobs delivered or moved out of its hash: one HSET (its `open` count and
-- the tokens cleared); those with none left are done, and no longer hold jobs in their hash.
local done, closed = {}, {}
for _, cb in ipairs(cb_order) do
  local c = cbs[cb]
  if (c.closing > 0 or #c.cleared > 0) and c.received then
    local open = c.open - c.closing
    local fields = {'open', open}
    for _, target in ipairs(c.cleared) do
      table.insert(fields, 'l:' .. target); table.insert(fields, '0')
    end
    redis.call('HSET', K .. ':cb:' .. cb, unpack(fields))
    if open <= 0 then
      table.insert(done, c.received)
      table.insert(done, cb)
      if c.inline then table.insert(closed, cb) end
    end
  end
end
if #done > 0 then
  redis.call('ZADD', K .. ':done', unpack(done))
end
if #closed > 0 then redis.call('ZREM', K .. ':inline', unpack(closed)) end
return replies

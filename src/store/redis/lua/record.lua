-- ARGV, per outcome (9 each): job, token, delivered|retry|dead, delay ms, attempt,
-- at ms, status, error, error present. Each as if alone, in order; one reply each:
-- 1: applied, 0: the lease does not hold.
-- Leases ended and jobs delivered in this batch: one ZREM per lease set and one DEL at the end,
-- and one HINCRBY per callback whose jobs were delivered.
-- `retried:<t>` holds the target's jobs that failed at least once, by their callback's
-- arrival (how old its backlog is: see depths.lua); they leave it when delivered or dead.
-- A lane-ordered job delivered or dead leaves its lane, and the lane's next job is due; a retry
-- keeps the lane.
local ended, gone, delivered, settled = {}, {}, {}, {}
-- One clock reading for the batch's retries.
local clock
local function now()
  if not clock then clock = now_ms() end
  return clock
end
-- Callbacks whose jobs were delivered in this batch, with how many each (closed at the end: one
-- HINCRBY per callback, one ZADD to `done` for those with none left, as close_job does).
local closing, closing_order = {}, {}
local function settle(target, job)
  local set = K .. ':retried:' .. target
  if not settled[set] then settled[set] = {} end
  table.insert(settled[set], job)
end
-- The outcome whose arguments follow ARGV[o].
local function record(o)
  local job = ARGV[o + 1]
  local j = K .. ':job:' .. job
  if delivered[job] then return 0 end
  local f = redis.call('HMGET', j, 'state', 'lease', 'target', 'cb', 'attempts', 'lane')
  if f[1] ~= 'f' or f[2] ~= ARGV[o + 2] then return 0 end
  local target = f[3]
  local set = K .. ':lease:' .. target
  if not ended[set] then ended[set] = {} end
  table.insert(ended[set], job)
  if ARGV[o + 3] == 'delivered' then
    delivered[job] = true
    if f[5] and f[5] ~= '0' then settle(target, job) end
    table.insert(gone, j)
    table.insert(gone, K .. ':att:' .. job)
    if not closing[f[4]] then
      closing[f[4]] = 0
      table.insert(closing_order, f[4])
    end
    closing[f[4]] = closing[f[4]] + 1
    if f[6] then leave_lane(f[6], target, job) end
    return 1
  end
  local attempt, at, status = ARGV[o + 5], ARGV[o + 6], ARGV[o + 7]
  local err = '-'
  if ARGV[o + 9] == '1' then err = 'E' .. ARGV[o + 8] end
  redis.call('HSET', K .. ':att:' .. job, attempt, at .. '|' .. status .. '|' .. err)
  -- The job's fields in one HSET, and what this attempt did not have in one HDEL.
  local set, gone_fields = {'attempts', attempt, 'updated', at}, {}
  if status ~= '' then
    table.insert(set, 'status'); table.insert(set, status)
  else
    table.insert(gone_fields, 'status')
  end
  if ARGV[o + 9] == '1' then
    table.insert(set, 'error'); table.insert(set, ARGV[o + 8])
  else
    table.insert(gone_fields, 'error')
  end
  if ARGV[o + 3] == 'retry' then
    table.insert(set, 'state'); table.insert(set, 'p')
  else
    table.insert(set, 'state'); table.insert(set, 'd')
    table.insert(set, 'died'); table.insert(set, at)
  end
  redis.call('HSET', j, unpack(set))
  if #gone_fields > 0 then redis.call('HDEL', j, unpack(gone_fields)) end
  if ARGV[o + 3] == 'retry' then
    redis.call('ZADD', K .. ':due:' .. target, now() + tonumber(ARGV[o + 4]), job)
    local received = redis.call('HGET', K .. ':cb:' .. f[4], 'received')
    if received then redis.call('ZADD', K .. ':retried:' .. target, 'NX', received, job) end
  else
    settle(target, job)
    redis.call('ZADD', K .. ':dead:' .. target, at, job)
    if f[6] then leave_lane(f[6], target, job) end
  end
  return 1
end
local replies = {}
for o = 0, #ARGV - 1, 9 do table.insert(replies, record(o)) end
for set, jobs in pairs(ended) do redis.call('ZREM', set, unpack(jobs)) end
for set, jobs in pairs(settled) do redis.call('ZREM', set, unpack(jobs)) end
if #gone > 0 then redis.call('DEL', unpack(gone)) end
local done = {}
for _, cb in ipairs(closing_order) do
  local key = K .. ':cb:' .. cb
  if redis.call('HINCRBY', key, 'open', -closing[cb]) <= 0 then
    local received = redis.call('HGET', key, 'received')
    if received then
      table.insert(done, received)
      table.insert(done, cb)
    end
  end
end
if #done > 0 then redis.call('ZADD', K .. ':done', unpack(done)) end
return replies

-- ARGV: target, limit, token, lease ms. Jobs whose lease expired come first (they waited
-- longest), then due ones. Rows of 12 fields (job, callback, attempts, base, and the shape's
-- query, content type, authorizer, version, trace context, replayed headers and lane, and the
-- job's lane), then the bodies. Only a lane's first job is ever due or leased (see
-- prelude_lanes.lua), so nothing here needs to know lanes. Jobs held in callbacks' hashes
-- whose lease expired are made due first, whatever their target (see prelude_inline.lua).
local target, limit, token = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local due_key, lease_key = K .. ':due:' .. target, K .. ':lease:' .. target
local now = now_ms()
local expiry = now + tonumber(ARGV[4])
local rows, bodies = {}, {}
sweep_inline(now, limit)
local function take(job, from)
  redis.call('ZREM', from, job)
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'cb', 'attempts', 'base', 'lane')
  if not f[1] then return end
  local c = redis.call('HMGET', K .. ':cb:' .. f[1], 'query', 'ctype', 'body', 'authorizer', 'v', 'trace', 'headers', 'lane')
  if not c[3] then return end
  redis.call('HSET', j, 'state', 'f', 'lease', token)
  redis.call('ZADD', lease_key, expiry, job)
  for _, v in ipairs({job, f[1], f[2], f[3] or '0', c[1]}) do table.insert(rows, v) end
  table.insert(rows, c[2] or false)
  table.insert(rows, c[4] or false)
  table.insert(rows, c[5] or false)
  table.insert(rows, c[6] or false)
  table.insert(rows, c[7] or false)
  table.insert(rows, c[8] or false)
  table.insert(rows, f[4] or false)
  table.insert(bodies, c[3])
end
local expired = redis.call('ZRANGEBYSCORE', lease_key, '-inf', now, 'LIMIT', 0, limit)
for _, job in ipairs(expired) do take(job, lease_key) end
if #expired < limit then
  for _, job in ipairs(redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit - #expired)) do
    take(job, due_key)
  end
end
for _, body in ipairs(bodies) do table.insert(rows, body) end
return rows

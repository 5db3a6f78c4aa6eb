-- ARGV: target, then (callback id, job id) pairs. Queues a new job of the target, due now,
-- for each callback still stored whose `routed` does not list the target (and adds it there);
-- a callback without `routed` (stored by a build before shape version 5) is skipped. Replies
-- how many were queued.
local target = ARGV[1]
local queued = 0
for i = 2, #ARGV, 2 do
  local cb, job = ARGV[i], ARGV[i + 1]
  local key = K .. ':cb:' .. cb
  local routed = redis.call('HGET', key, 'routed')
  if routed and not string.find('\n' .. routed, '\n' .. target .. '\n', 1, true) then
    -- Its job's id beside it: not in the block after the callback's id, where the history
    -- looks first.
    redis.call('HSET', key, 'routed', routed .. target .. '\n', 'job:' .. target, job)
    -- A callback with no job left waits in `done` for its purge: it holds one again.
    if redis.call('HINCRBY', key, 'open', 1) == 1 then redis.call('ZREM', K .. ':done', cb) end
    redis.call('HSET', K .. ':job:' .. job, 'cb', cb, 'target', target, 'state', 'p', 'lease', 0, 'attempts', 0, 'base', 0)
    redis.call('ZADD', K .. ':due:' .. target, now_ms(), job)
    queued = queued + 1
  end
end
if queued > 0 then redis.call('SADD', K .. ':targets', target) end
return queued

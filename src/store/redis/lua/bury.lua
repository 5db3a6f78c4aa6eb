-- ARGV: reason, now ms, targets. Their pending jobs become dead; counts per target.
local counts = {}
for i = 3, #ARGV do
  local target = ARGV[i]
  local due_key = K .. ':due:' .. target
  local jobs = redis.call('ZRANGE', due_key, 0, -1)
  for _, job in ipairs(jobs) do
    redis.call('HSET', K .. ':job:' .. job, 'state', 'd', 'died', ARGV[2], 'updated', ARGV[2], 'error', ARGV[1])
    redis.call('ZADD', K .. ':dead:' .. target, ARGV[2], job)
  end
  redis.call('DEL', due_key)
  if #jobs > 0 then redis.call('ZREM', K .. ':retried:' .. target, unpack(jobs)) end
  table.insert(counts, #jobs)
end
return counts

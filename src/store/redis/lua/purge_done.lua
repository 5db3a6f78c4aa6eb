-- ARGV: received before (ms), batch. Callbacks with no job left are forgotten.
local ids = redis.call('ZRANGEBYSCORE', K .. ':done', '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, cb in ipairs(ids) do
  local key = K .. ':cb:' .. cb
  local keys = redis.call('HMGET', key, 'dedupe', 'legacy')
  for _, dedupe in ipairs(keys) do
    if dedupe and redis.call('HGET', K .. ':dedupe', dedupe) == cb then
      redis.call('HDEL', K .. ':dedupe', dedupe)
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', K .. ':done', cb)
  redis.call('ZREM', K .. ':arrivals', cb)
end
return #ids

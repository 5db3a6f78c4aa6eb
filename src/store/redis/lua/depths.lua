-- ARGV: targets. Pending, in flight and dead per target.
local counts = {}
for i = 1, #ARGV do
  table.insert(counts, redis.call('ZCARD', K .. ':due:' .. ARGV[i]))
  table.insert(counts, redis.call('ZCARD', K .. ':lease:' .. ARGV[i]))
  table.insert(counts, redis.call('ZCARD', K .. ':dead:' .. ARGV[i]))
end
return counts

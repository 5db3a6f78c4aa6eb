-- ARGV: target. Milliseconds until the earliest pending job is due.
local first = redis.call('ZRANGE', K .. ':due:' .. ARGV[1], 0, 0, 'WITHSCORES')
if #first == 0 then return false end
return math.max(0, tonumber(first[2]) - now_ms())

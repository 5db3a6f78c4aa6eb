-- ARGV: callback id, body, content type, content type present.
local cb = K .. ':cb:' .. ARGV[1]
if redis.call('EXISTS', cb) == 0 then return end
redis.call('HSET', cb, 'answer', ARGV[2])
if ARGV[4] == '1' then redis.call('HSET', cb, 'answer_type', ARGV[3]) else redis.call('HDEL', cb, 'answer_type') end

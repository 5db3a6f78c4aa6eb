-- ARGV: target, interval (microseconds). Reserves the target's next delivery start, one
-- interval after the last one reserved (or now, if that is past): replies how many
-- microseconds to wait for it. The same rule as `store::pace::reserve`, on Redis's clock, so
-- that every instance counts against one limit. The key lives as long as it matters.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = K .. ':pace:' .. ARGV[1]
local interval = tonumber(ARGV[2])
local start = math.max(tonumber(redis.call('GET', key) or '0'), now)
local ttl = math.ceil((start + interval - now) / 1000) + 1000
redis.call('SET', key, string.format('%.0f', start + interval), 'PX', ttl)
return start - now

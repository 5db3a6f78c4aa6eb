-- ARGV: how long a minute is kept (ms), then per count: minute (Unix minutes), field (account,
-- target and name, a line each), value, and 1 to keep the highest (a reading of the queue) or
-- 0 to add. Adds one instance's per-minute counts of the console's charts to the deployment's:
-- one hash per minute (`K:<minute>`, K the deployment's `{:minutes}` base, so that every
-- minute is in one slot of a Cluster), which expires that long after its minute.
local kept = tonumber(ARGV[1])
local touched = {}
for i = 2, #ARGV, 4 do
  local minute, field, value = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = K .. ':' .. minute
  if ARGV[i + 3] == '1' then
    local was = tonumber(redis.call('HGET', key, field))
    if not was or value > was then redis.call('HSET', key, field, value) end
  else
    redis.call('HINCRBY', key, field, value)
  end
  touched[key] = tonumber(minute) * 60000 + kept
end
for key, expiry in pairs(touched) do redis.call('PEXPIREAT', key, expiry) end
return 0

-- ARGV: lease ms, then (job, token) pairs. Returns the jobs whose lease was lost.
local expiry = now_ms() + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local job = ARGV[i]
  local f = redis.call('HMGET', K .. ':job:' .. job, 'state', 'lease', 'target')
  if f[1] == 'f' and f[2] == ARGV[i + 1] then
    redis.call('ZADD', K .. ':lease:' .. f[3], 'XX', expiry, job)
  else
    table.insert(lost, job)
  end
end
return lost

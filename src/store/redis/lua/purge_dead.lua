-- ARGV: (job, target) pairs. Dead ones are deleted.
local n = 0
for i = 1, #ARGV, 2 do
  local job, target = ARGV[i], ARGV[i + 1]
  local j = K .. ':job:' .. job
  local f = redis.call('HMGET', j, 'state', 'cb')
  if f[1] == 'd' then
    redis.call('DEL', j, K .. ':att:' .. job)
    redis.call('ZREM', K .. ':dead:' .. target, job)
    close_job(f[2])
    n = n + 1
  end
end
return n

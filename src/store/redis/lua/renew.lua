-- ARGV: lease ms, then (job, token, callback, target) quads. Returns the jobs whose lease was
-- lost. A job held in its callback's hash (see prelude_inline.lua) renews its callback's place in
-- `inline` (never earlier: another job of it may hold a later lease).
local expiry = now_ms() + tonumber(ARGV[1])
local lost, inline = {}, {}
for i = 2, #ARGV, 4 do
  local job, token, cb, target = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if redis.call('HGET', K .. ':cb:' .. cb, 'l:' .. target) == token then
    table.insert(inline, expiry)
    table.insert(inline, cb)
  else
    local f = redis.call('HMGET', K .. ':job:' .. job, 'state', 'lease', 'target')
    if f[1] == 'f' and f[2] == token then
      redis.call('ZADD', K .. ':lease:' .. f[3], 'XX', expiry, job)
    else
      table.insert(lost, job)
    end
  end
end
if #inline > 0 then redis.call('ZADD', K .. ':inline', 'XX', 'GT', unpack(inline)) end
return lost

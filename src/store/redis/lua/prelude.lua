-- Shared by every script: Redis's clock in ms, and closing a job of a callback.
local K = KEYS[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- One job of callback `cb` is gone (delivered or purged): with none left, the callback may be
-- purged after the retention.
local function close_job(cb)
  local key = K .. ':cb:' .. cb
  local open = redis.call('HINCRBY', key, 'open', -1)
  if open <= 0 then
    local received = redis.call('HGET', key, 'received')
    if received then redis.call('ZADD', K .. ':done', received, cb) end
  end
end
-- The fields of dead letter `id` (10), or nil if it is not dead.
local function letter(id)
  local j = redis.call('HMGET', K .. ':job:' .. id, 'state', 'cb', 'target', 'died', 'attempts', 'status', 'error')
  if j[1] ~= 'd' then return nil end
  local c = redis.call('HMGET', K .. ':cb:' .. j[2], 'msg_type', 'event', 'received')
  return {id, j[2], j[3], c[1] or false, c[2] or false, c[3] or false, j[4] or false, j[5] or false, j[6] or false, j[7] or false}
end

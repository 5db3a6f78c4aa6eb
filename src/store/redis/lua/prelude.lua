-- Shared by every script: the account's key base, Redis's clock in ms, and closing a job of a
-- callback. What only some scripts need is in prelude_*.lua, joined to those alone (each script
-- defines every function it is given on every call).
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

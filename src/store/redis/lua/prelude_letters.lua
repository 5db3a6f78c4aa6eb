-- The fields of dead letter `id` (10), or nil if it is not dead.
local function letter(id)
  local j = redis.call('HMGET', K .. ':job:' .. id, 'state', 'cb', 'target', 'died', 'attempts', 'status', 'error')
  if j[1] ~= 'd' then return nil end
  local c = redis.call('HMGET', K .. ':cb:' .. j[2], 'msg_type', 'event', 'received')
  return {id, j[2], j[3], c[1] or false, c[2] or false, c[3] or false, j[4] or false, j[5] or false, j[6] or false, j[7] or false}
end

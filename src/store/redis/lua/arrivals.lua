-- ARGV: since (ms), until (ms, excluded), after (callback id or ''), limit. The account's
-- callbacks that arrived in the window, by time received then id, after callback `after`:
-- per callback its id, received, query, ctype, body, authorizer, v, trace, headers, routed.
-- From the arrival index (`arrivals`), which builds from shape version 5 on keep, walked by
-- `walk_arrivals` (walk.lua).
local since, till, limit = ARGV[1], ARGV[2], tonumber(ARGV[4])
local low, at_ms, at_id = since, nil, nil
if ARGV[3] ~= '' then
  local score = redis.call('ZSCORE', K .. ':arrivals', ARGV[3])
  if score and tonumber(score) >= tonumber(since) then
    low, at_ms, at_id = score, tonumber(score), tonumber(ARGV[3])
  end
end
local out, count = {}, 0
walk_arrivals(low, '(' .. till, false, at_ms, at_id, function(id)
  local c = redis.call('HMGET', K .. ':cb:' .. id, 'received', 'query', 'ctype', 'body',
    'authorizer', 'v', 'trace', 'headers', 'routed')
  if c[1] then
    table.insert(out, id)
    for f = 1, 9 do table.insert(out, c[f] or false) end
    count = count + 1
  end
  return count >= limit
end)
return out

-- ARGV: since (ms), until (ms, excluded), after (callback id or ''), limit. The account's
-- callbacks that arrived in the window, by time received then id, after callback `after`:
-- per callback its id, received, query, ctype, body, authorizer, v, trace, headers, routed.
-- From the arrival index (`arrivals`), which builds from shape version 5 on keep.
local index = K .. ':arrivals'
local since, till, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local from, after_id = since, nil
if ARGV[3] ~= '' then
  local score = redis.call('ZSCORE', index, ARGV[3])
  if score then from, after_id = math.max(since, tonumber(score)), tonumber(ARGV[3]) end
end
local out, count, offset = {}, 0, 0
while count < limit do
  local page = redis.call('ZRANGEBYSCORE', index, from, '(' .. till, 'WITHSCORES', 'LIMIT', offset, limit)
  if #page == 0 then break end
  offset = offset + #page / 2
  for i = 1, #page, 2 do
    local id, score = page[i], tonumber(page[i + 1])
    -- Ties at the cursor's millisecond: only those after it.
    if count < limit and not (after_id and score == from and tonumber(id) <= after_id) then
      local c = redis.call('HMGET', K .. ':cb:' .. id, 'received', 'query', 'ctype', 'body',
        'authorizer', 'v', 'trace', 'headers', 'routed')
      if c[1] then
        table.insert(out, id)
        for f = 1, 9 do table.insert(out, c[f] or false) end
        count = count + 1
      end
    end
  end
end
return out

-- Walks the account's arrival index (`arrivals`: callback ids by time received) between the
-- scores `low` and `high` (ZRANGEBYSCORE's syntax: '-inf', '(123'), oldest first, or newest
-- first when `newest`. One millisecond's callbacks go in the order of their ids: the index
-- gives them in the order of their text ('10' before '9'), which a cursor cannot go on from.
-- With a cursor (`at_ms`, `at_id`: the last callback a previous call reached), that
-- millisecond's callbacks up to it, in walk order, are passed over. Calls visit(id, score) for
-- each callback; stops when it returns true.
local function walk_arrivals(low, high, newest, at_ms, at_id, visit)
  local index = K .. ':arrivals'
  local group, group_ms, group_score = {}, nil, nil
  local function flush()
    if newest then
      table.sort(group, function(a, b) return a[1] > b[1] end)
    else
      table.sort(group, function(a, b) return a[1] < b[1] end)
    end
    for _, m in ipairs(group) do
      local passed = at_ms and group_ms == at_ms
        and ((newest and m[1] >= at_id) or (not newest and m[1] <= at_id))
      if not passed and visit(m[2], group_score) then return true end
    end
    group = {}
    return false
  end
  local offset, chunk = 0, 200
  while true do
    local page
    if newest then
      page = redis.call('ZREVRANGEBYSCORE', index, high, low, 'WITHSCORES', 'LIMIT', offset, chunk)
    else
      page = redis.call('ZRANGEBYSCORE', index, low, high, 'WITHSCORES', 'LIMIT', offset, chunk)
    end
    if #page == 0 then break end
    offset = offset + #page / 2
    for i = 1, #page, 2 do
      local ms = tonumber(page[i + 1])
      if ms ~= group_ms then
        if group_ms and flush() then return end
        group_score, group_ms = page[i + 1], ms
      end
      table.insert(group, {tonumber(page[i]), page[i]})
    end
  end
  if group_ms then flush() end
end

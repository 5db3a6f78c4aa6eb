-- ARGV: min, max (died), limit, targets. Rows of 10 fields, newest first per target.
local rows = {}
for i = 4, #ARGV do
  local ids = redis.call('ZREVRANGEBYSCORE', K .. ':dead:' .. ARGV[i], ARGV[2], ARGV[1], 'LIMIT', 0, ARGV[3])
  for _, job in ipairs(ids) do
    local row = letter(job)
    if row then for _, v in ipairs(row) do table.insert(rows, v) end end
  end
end
return rows

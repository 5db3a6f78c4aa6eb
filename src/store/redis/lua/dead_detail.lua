-- ARGV: job. The letter's 10 fields, query, content type, body, then
-- (attempt, record) pairs; empty if it is not a dead letter here.
local row = letter(ARGV[1])
if not row then return {} end
local j = redis.call('HGET', K .. ':job:' .. ARGV[1], 'cb')
local c = redis.call('HMGET', K .. ':cb:' .. j, 'query', 'ctype', 'body')
table.insert(row, c[1] or false)
table.insert(row, c[2] or false)
table.insert(row, c[3] or false)
for _, v in ipairs(redis.call('HGETALL', K .. ':att:' .. ARGV[1])) do table.insert(row, v) end
return row

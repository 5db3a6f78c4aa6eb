-- ARGV: job. The letter's 10 fields, the shape's query, content type, body, authorizer,
-- version, trace context and replayed headers, then (attempt, record) pairs; empty if it is
-- not a dead letter here.
local row = letter(ARGV[1])
if not row then return {} end
local j = redis.call('HGET', K .. ':job:' .. ARGV[1], 'cb')
local c = redis.call('HMGET', K .. ':cb:' .. j, 'query', 'ctype', 'body', 'authorizer', 'v',
  'trace', 'headers')
for i = 1, 7 do table.insert(row, c[i] or false) end
for _, v in ipairs(redis.call('HGETALL', K .. ':att:' .. ARGV[1])) do table.insert(row, v) end
return row

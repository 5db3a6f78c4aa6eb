-- ARGV: first minute, last minute (Unix minutes). The console charts' per-minute counts kept
-- for those minutes (see minutes_add.lua): per minute that has some, the minute, how many
-- counts n, then n (field, value) pairs.
local out = {}
for m = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  local counts = redis.call('HGETALL', K .. ':' .. string.format('%d', m))
  if #counts > 0 then
    table.insert(out, string.format('%d', m))
    table.insert(out, tostring(#counts / 2))
    for _, v in ipairs(counts) do table.insert(out, v) end
  end
end
return out

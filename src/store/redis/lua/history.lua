-- ARGV: before (ms or ''), before id (or ''), since (ms or ''), until (ms, excluded, or ''),
-- MsgId or '', type or event in lower case or '', limit, budget, then the sender hashes wanted
-- (none: any sender). The account's callbacks from its arrival index (`arrivals`), newest
-- first by (time received, id), older than the cursor (before, before id), that pass the
-- filters; it examines at most `budget` of them (one HMGET each), so a call stays short
-- whatever the index holds. Replies {reached ms, reached id, then per match: id, received,
-- msg_type, event, msg_id, routed}; reached ('' and '' when everything was examined) is the
-- last callback examined when it stopped early, at `limit` matches or its budget. The index is
-- walked by `walk_arrivals` (walk.lua).
local before_ms, before_id = tonumber(ARGV[1]), tonumber(ARGV[2])
local since, till = ARGV[3], ARGV[4]
local msg_id, kind = ARGV[5], ARGV[6]
local limit, budget = math.max(tonumber(ARGV[7]), 1), tonumber(ARGV[8])
local senders, any_sender = {}, #ARGV < 9
for i = 9, #ARGV do senders[ARGV[i]] = true end
local top, bottom = '+inf', '-inf'
if before_ms then top = ARGV[1] end
if till ~= '' and (not before_ms or tonumber(till) <= before_ms) then top = '(' .. till end
if since ~= '' then bottom = since end
local out = {'', ''}
local examined, count = 0, 0
local function lower(s) return s and string.lower(s) end
-- Examines one callback; true when the call must stop.
local function examine(id, score)
  examined = examined + 1
  local c = redis.call('HMGET', K .. ':cb:' .. id, 'received', 'msg_type', 'event', 'msg_id', 'sender', 'routed')
  local ok = c[1]
    and (msg_id == '' or c[4] == msg_id)
    and (kind == '' or lower(c[2]) == kind or lower(c[3]) == kind)
    and (any_sender or (c[5] and senders[c[5]]))
  if ok then
    local fields = {id, c[1], c[2] or false, c[3] or false, c[4] or false, c[6] or false}
    for f = 1, 6 do table.insert(out, fields[f]) end
    count = count + 1
  end
  if count >= limit or examined >= budget then
    out[1], out[2] = score, id
    return true
  end
  return false
end
walk_arrivals(bottom, top, true, before_ms, before_id, examine)
return out

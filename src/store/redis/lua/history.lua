-- ARGV: before (ms or ''), before id (or ''), since (ms or ''), until (ms, excluded, or ''),
-- MsgId or '', type or event in lower case or '', limit, budget, instance or '', target or '',
-- the target's state or '' (delivered, pending, failing or dead), then the sender hashes wanted
-- (none: any sender). The account's callbacks from its arrival index (`arrivals`), newest
-- first by (time received, id), older than the cursor (before, before id), that pass the
-- filters; it examines at most `budget` of them (one HMGET each), so a call stays short
-- whatever the index holds. Replies {reached ms, reached id, then per match: id, received,
-- msg_type, event, msg_id, routed, instance, n, then n (target, job or '', state)}: where it
-- stands for each target it was queued for; reached ('' and '' when everything was examined) is the
-- last callback examined when it stopped early, at `limit` matches or its budget. The index is
-- walked by `walk_arrivals` (walk.lua).
local before_ms, before_id = tonumber(ARGV[1]), tonumber(ARGV[2])
local since, till = ARGV[3], ARGV[4]
local msg_id, kind = ARGV[5], ARGV[6]
local limit, budget = math.max(tonumber(ARGV[7]), 1), tonumber(ARGV[8])
local instance, target, target_state = ARGV[9], ARGV[10], ARGV[11]
local senders, any_sender = {}, #ARGV < 12
for i = 12, #ARGV do senders[ARGV[i]] = true end
local top, bottom = '+inf', '-inf'
if before_ms then top = ARGV[1] end
if till ~= '' and (not before_ms or tonumber(till) <= before_ms) then top = '(' .. till end
if since ~= '' then bottom = since end
local out = {'', ''}
local examined, count = 0, 0
local function lower(s) return s and string.lower(s) end
-- The job held for `t`, the i-th target the callback was queued for, and its state; or false
-- when none is held: delivered. Ingress takes a callback's id and its jobs' in one block, in
-- `routed`'s order, so the job is looked for at id + i first; a backfill's job is named in the
-- callback's field `job:<t>`.
local function job_of(id, i, t)
  local job = string.format('%d', tonumber(id) + i)
  local j = redis.call('HMGET', K .. ':job:' .. job, 'cb', 'target', 'state', 'attempts')
  if j[1] ~= id or j[2] ~= t then
    -- Named in the callback's hash, or held there (leased at accept: see prelude_inline.lua).
    local c = redis.call('HMGET', K .. ':cb:' .. id, 'job:' .. t, 'l:' .. t)
    if c[2] and c[2] ~= '0' then return c[1] or job, 'pending' end
    job = c[1]
    if not job then return false end
    j = redis.call('HMGET', K .. ':job:' .. job, 'cb', 'target', 'state', 'attempts')
    if j[1] ~= id then return false end
  end
  if j[3] == 'd' then return job, 'dead' end
  if tonumber(j[4] or '0') > 0 then return job, 'failing' end
  return job, 'pending'
end
-- The targets of `routed`, in order.
local function targets_of(routed)
  local list = {}
  for t in string.gmatch(routed or '', '([^\n]+)') do table.insert(list, t) end
  return list
end
-- Where a callback stands for its i-th target ({job or '', state}), read once per callback
-- however often it is asked (the filter, then the reply).
local function state_of(id, targets, known, i)
  if not known[i] then
    local job, st = job_of(id, i, targets[i])
    known[i] = {job or '', st or 'delivered'}
  end
  return known[i]
end
-- Whether the callback stands in the state wanted for the target wanted.
local function in_state(id, targets, known)
  for i, t in ipairs(targets) do
    if t == target then return target_state == '' or state_of(id, targets, known, i)[2] == target_state end
  end
  return false
end
-- Examines one callback; true when the call must stop.
local function examine(id, score)
  examined = examined + 1
  local c = redis.call('HMGET', K .. ':cb:' .. id, 'received', 'msg_type', 'event', 'msg_id', 'sender', 'routed', 'instance')
  local targets, known = nil, {}
  local ok = c[1]
    and (msg_id == '' or c[4] == msg_id)
    and (kind == '' or lower(c[2]) == kind or lower(c[3]) == kind)
    and (any_sender or (c[5] and senders[c[5]]))
    and (instance == '' or c[7] == instance)
  if ok and target ~= '' then
    targets = targets_of(c[6])
    ok = in_state(id, targets, known)
  end
  if ok then
    local fields = {id, c[1], c[2] or false, c[3] or false, c[4] or false, c[6] or false, c[7] or false}
    for f = 1, 7 do table.insert(out, fields[f]) end
    targets = targets or targets_of(c[6])
    table.insert(out, tostring(#targets))
    for i, t in ipairs(targets) do
      local stands = state_of(id, targets, known, i)
      table.insert(out, t)
      table.insert(out, stands[1])
      table.insert(out, stands[2])
    end
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

-- ARGV: lease ms, then per callback: id, dedupe key, received, msg_type, event,
-- query, content type, body, answer pending ms, presence of (msg_type, event, content
-- type, authorizer, trace, headers, lane, msg id, sender, instance, and whether the account's
-- `targets` set must get its targets), job count, legacy dedupe key or '', authorizer, trace
-- context, replayed headers, lane, msg id, sender hash, accepting instance, then (job id,
-- target, lease token or 0, lane or '') per job (a lane: the job is lane-ordered). Each
-- callback as if alone, in order; one reply each: {'new'}, or {'dup', id, answer, answer type,
-- pending ms}.
--
-- Redis's cost is mostly per command a script calls, hardly per argument: what the whole batch
-- reads or writes in one key is one command (the dedupe keys read with one HMGET and written
-- with one HSET, the arrival index, each target's due and lease sets, the targets set), so a
-- batch of n callbacks with t targets each costs n·(1 + t) commands and a few more, not about
-- 10·n. A dedupe key taken by an earlier callback of the same batch is seen as taken.
--
-- The callback's hash holds its shape (`store::shape`): the version `v` this build writes,
-- the query (still tagged with the authorizer, for instances of the build before), the
-- content type, the body, and the authorizer, the trace context and the replayed headers in
-- fields of their own; so are the lane, WeChat's MsgId and the sender's keyed hash (version 5;
-- the last two only for the console's history search, about 50 bytes a callback with their
-- names, counted, not measured), and the instance that accepted it (version 6). Beside it, the
-- targets it was queued for (`routed`, one a line); the account's arrival index (`arrivals`:
-- id by time received) gets it too. A job leased here (the accepting instance sends it at once)
-- is held in the callback's hash, one field, not a hash and a lease set entry of its own
-- (version 7, see prelude.lua). A lane-ordered job joins its lane (see prelude.lua): the
-- first of it is due (or in flight) in a hash of its own as any job, the others are held.
--
-- The legacy key (the build before's key for this callback): a callback that build
-- stored under it (its `dedupe` field is that key) within the window is this one's
-- first copy. It is written too, if free, so that an instance of that build finds
-- this callback when a resend reaches it; a callback of this build found under it
-- (its `dedupe` field is another key) says nothing, since this build tells apart
-- callbacks that key merged.
local lease_ms = tonumber(ARGV[1])
local legacy_window_ms = tonumber('LEGACY_WINDOW_MS')
local shape_version = 'SHAPE_VERSION'
-- One clock reading for the whole batch.
local clock
local function now()
  if not clock then clock = now_ms() end
  return clock
end
-- Written once for the batch, at the end: the targets to list, and per sorted set (each
-- target's due and lease sets, the arrival index, `done`) its (score, member) pairs in order.
local targets, zsets, zorder = {}, {}, {}
local function zadd(key, score, member)
  local members = zsets[key]
  if not members then
    members = {}
    zsets[key] = members
    table.insert(zorder, key)
  end
  table.insert(members, score)
  table.insert(members, member)
end
-- The dedupe keys this batch took (key → id), and the (key, id) pairs to write.
local taken, dedupe_pairs = {}, {}
local function duplicate(existing)
  local a = redis.call('HMGET', K .. ':cb:' .. existing, 'answer', 'answer_type', 'answer_due')
  local pending = false
  if not a[1] and a[3] then
    local left = tonumber(a[3]) - now()
    if left > 0 then pending = tostring(left) end
  end
  return {'dup', existing, a[1] or false, a[2] or false, pending}
end
-- The callback whose arguments follow ARGV[o], with n jobs; `existing`: the callback its
-- dedupe key named when the batch began (false: none).
local function accept(o, n, existing)
  local id, dedupe, received = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  existing = taken[dedupe] or existing
  if existing then
    if existing == id then return {'new'} end
    return duplicate(existing)
  end
  local legacy = ARGV[o + 12]
  if legacy ~= '' then
    local first = taken[legacy] or redis.call('HGET', K .. ':dedupe', legacy)
    if first and first ~= id then
      local c = redis.call('HMGET', K .. ':cb:' .. first, 'dedupe', 'received')
      if c[1] == legacy and tonumber(c[2]) >= tonumber(received) - legacy_window_ms then
        return duplicate(first)
      end
    end
  end
  local present = ARGV[o + 10]
  taken[dedupe] = id
  table.insert(dedupe_pairs, dedupe)
  table.insert(dedupe_pairs, id)
  local cb = K .. ':cb:' .. id
  local fields = {'v', shape_version, 'dedupe', dedupe, 'received', received, 'query', ARGV[o + 6], 'body', ARGV[o + 8], 'open', n}
  if legacy ~= '' and not taken[legacy] and redis.call('HSETNX', K .. ':dedupe', legacy, id) == 1 then
    taken[legacy] = id
    table.insert(fields, 'legacy'); table.insert(fields, legacy)
  end
  if string.sub(present, 1, 1) == '1' then table.insert(fields, 'msg_type'); table.insert(fields, ARGV[o + 4]) end
  if string.sub(present, 2, 2) == '1' then table.insert(fields, 'event'); table.insert(fields, ARGV[o + 5]) end
  if string.sub(present, 3, 3) == '1' then table.insert(fields, 'ctype'); table.insert(fields, ARGV[o + 7]) end
  if string.sub(present, 4, 4) == '1' then table.insert(fields, 'authorizer'); table.insert(fields, ARGV[o + 13]) end
  if string.sub(present, 5, 5) == '1' then table.insert(fields, 'trace'); table.insert(fields, ARGV[o + 14]) end
  if string.sub(present, 6, 6) == '1' then table.insert(fields, 'headers'); table.insert(fields, ARGV[o + 15]) end
  if string.sub(present, 7, 7) == '1' then table.insert(fields, 'lane'); table.insert(fields, ARGV[o + 16]) end
  if string.sub(present, 8, 8) == '1' then table.insert(fields, 'msg_id'); table.insert(fields, ARGV[o + 17]) end
  if string.sub(present, 9, 9) == '1' then table.insert(fields, 'sender'); table.insert(fields, ARGV[o + 18]) end
  if string.sub(present, 10, 10) == '1' then table.insert(fields, 'instance'); table.insert(fields, ARGV[o + 19]) end
  -- '0': this instance listed its targets already (the set only grows).
  local list_targets = string.sub(present, 11, 11) ~= '0'
  if ARGV[o + 9] ~= '' then table.insert(fields, 'answer_due'); table.insert(fields, now() + tonumber(ARGV[o + 9])) end
  local routed = {}
  for i = 0, n - 1 do
    local job, target = ARGV[o + 20 + 4 * i], ARGV[o + 21 + 4 * i]
    table.insert(routed, target .. '\n')
    -- A job whose id does not follow the callback's in `routed`'s order is named beside it,
    -- where the history looks when it is not there (as for a backfill's job).
    if tonumber(job) ~= tonumber(id) + i + 1 then
      table.insert(fields, 'job:' .. target); table.insert(fields, job)
    end
  end
  table.insert(fields, 'routed'); table.insert(fields, table.concat(routed))
  local inline = false
  for i = 0, n - 1 do
    local b = o + 20 + 4 * i
    local job, target, token, lane = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    if list_targets then targets[target] = true end
    if token ~= '0' and lane == '' then
      -- Leased at accept: held in the callback's hash (see prelude.lua).
      table.insert(fields, 'l:' .. target); table.insert(fields, token)
      inline = true
    elseif lane == '' then
      redis.call('HSET', K .. ':job:' .. job, 'cb', id, 'target', target, 'state', 'p', 'lease', 0, 'attempts', 0, 'base', 0)
      zadd(K .. ':due:' .. target, now(), job)
    else
      local state = 'f'
      if token == '0' then state = 'p' end
      local held = not join_lane(lane, target, job)
      if held then state = 'h' end
      redis.call('HSET', K .. ':job:' .. job, 'cb', id, 'target', target, 'state', state, 'lease', token, 'attempts', 0, 'base', 0, 'lane', lane)
      if held then
        -- Waits in its lane (listed in held:<t> by join_lane).
      elseif token == '0' then
        zadd(K .. ':due:' .. target, now(), job)
      else
        zadd(K .. ':lease:' .. target, now() + lease_ms, job)
      end
    end
  end
  if inline then zadd(K .. ':inline', now() + lease_ms, id) end
  redis.call('HSET', cb, unpack(fields))
  zadd(K .. ':arrivals', received, id)
  if n == 0 then zadd(K .. ':done', received, id) end
  return {'new'}
end
-- Every callback's place in ARGV; their dedupe keys are read at once.
local places, keys, o = {}, {}, 1
while o < #ARGV do
  table.insert(places, o)
  table.insert(keys, ARGV[o + 2])
  o = o + 19 + 4 * tonumber(ARGV[o + 11])
end
local replies = {}
if #keys > 0 then
  local found = redis.call('HMGET', K .. ':dedupe', unpack(keys))
  for i, at in ipairs(places) do
    table.insert(replies, accept(at, tonumber(ARGV[at + 11]), found[i]))
  end
end
if #dedupe_pairs > 0 then redis.call('HSET', K .. ':dedupe', unpack(dedupe_pairs)) end
for _, key in ipairs(zorder) do redis.call('ZADD', key, unpack(zsets[key])) end
local listed = {}
for target in pairs(targets) do table.insert(listed, target) end
if #listed > 0 then redis.call('SADD', K .. ':targets', unpack(listed)) end
return replies

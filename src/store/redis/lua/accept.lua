-- ARGV: lease ms, then per callback: id, dedupe key, received, legacy dedupe key or '', answer
-- pending ms or '', 'inline' (some of its jobs are held in its hash), 'done' (it has no
-- jobs) or '', the number t of targets to add to the account's `targets` set, the number q of
-- jobs queued in hashes of their own, the t targets, q (job id, target, lease token or 0, lane
-- or '') quads (a lane: the job is lane-ordered). The callback's hash (`args.rs` builds it) is
-- written ahead of the script, by a plain HSET in the same transaction; a resend's is deleted
-- here. Each callback as if alone, in order; one reply each: {'new', waiting job ids...} (a
-- lane-ordered job passed with a lease token that waits behind its lane instead: its caller
-- must not start it), or {'dup', id, answer, answer type, pending ms}.
--
-- Redis's cost is mostly per command a script calls, and per line of Lua it runs: what the
-- whole batch reads or writes in one key is one command (the dedupe keys read with one HMGET
-- and written with one HSET, the arrival index, each target's due and lease sets, the
-- targets set), and the callback's hash is written before (its arguments would cost as much
-- again passing through Lua). A dedupe key taken by an earlier callback of the same batch is
-- seen as taken.
--
-- The callback's hash holds its shape (`store::shape`): the version, the query (still tagged
-- with the authorizer, for instances of the build before), the content type, the body, and
-- the authorizer, the trace context, the replayed headers, the lane, WeChat's MsgId, the
-- sender's keyed hash and the instance that accepted it, in fields of their own; beside it,
-- the targets it was queued for (`routed`, one a line), a job whose id does not follow the
-- callback's there (`job:<t>`), and the lease tokens of jobs held in it (`l:<t>`, version 7:
-- a job leased here, which the accepting instance sends at once, gets no hash and no lease
-- set entry of its own; see prelude_inline.lua). The account's arrival index (`arrivals`: id
-- by time received) gets it too. A lane-ordered job joins its lane (see prelude_lanes.lua):
-- the first of it is due (or in flight) in a hash of its own as any job, the others are held.
--
-- The legacy key (the build before's key for this callback): a callback that build
-- stored under it (its `dedupe` field is that key) within the window is this one's
-- first copy. It is written too, if free, so that an instance of that build finds
-- this callback when a resend reaches it; a callback of this build found under it
-- (its `dedupe` field is another key) says nothing, since this build tells apart
-- callbacks that key merged.
local lease_ms = tonumber(ARGV[1])
local legacy_window_ms = tonumber('LEGACY_WINDOW_MS')
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
    zorder[#zorder + 1] = key
  end
  members[#members + 1] = score
  members[#members + 1] = member
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
-- The callback whose arguments follow ARGV[o]; `existing`: the callback its dedupe key named
-- when the batch began (false: none).
local function accept(o, existing)
  local id, dedupe, received = ARGV[o + 1], ARGV[o + 2], ARGV[o + 3]
  local cb = K .. ':cb:' .. id
  existing = taken[dedupe] or existing
  local t, q = tonumber(ARGV[o + 7]), tonumber(ARGV[o + 8])
  if existing then
    -- This callback's own id: the script runs a second time (a broken connection). A job it
    -- leased waits unless it is still in flight under that lease.
    if existing == id then
      local reply = {'new'}
      for b = o + 9 + t, o + 8 + t + 4 * q, 4 do
        local job, token, lane = ARGV[b], ARGV[b + 2], ARGV[b + 3]
        if lane ~= '' and token ~= '0' then
          local f = redis.call('HMGET', K .. ':job:' .. job, 'state', 'lease')
          if f[1] ~= 'f' or f[2] ~= token then reply[#reply + 1] = job end
        end
      end
      return reply
    end
    redis.call('DEL', cb)
    return duplicate(existing)
  end
  local legacy = ARGV[o + 4]
  if legacy ~= '' then
    local first = taken[legacy] or redis.call('HGET', K .. ':dedupe', legacy)
    if first and first ~= id then
      local c = redis.call('HMGET', K .. ':cb:' .. first, 'dedupe', 'received')
      if c[1] == legacy and tonumber(c[2]) >= tonumber(received) - legacy_window_ms then
        redis.call('DEL', cb)
        return duplicate(first)
      end
    end
  end
  taken[dedupe] = id
  dedupe_pairs[#dedupe_pairs + 1] = dedupe
  dedupe_pairs[#dedupe_pairs + 1] = id
  local reply = {'new'}
  local extra = {}
  if legacy ~= '' and not taken[legacy] and redis.call('HSETNX', K .. ':dedupe', legacy, id) == 1 then
    taken[legacy] = id
    extra[1], extra[2] = 'legacy', legacy
  end
  if ARGV[o + 5] ~= '' then
    extra[#extra + 1] = 'answer_due'
    extra[#extra + 1] = now() + tonumber(ARGV[o + 5])
  end
  if #extra > 0 then redis.call('HSET', cb, unpack(extra)) end
  for k = o + 9, o + 8 + t do targets[ARGV[k]] = true end
  for b = o + 9 + t, o + 8 + t + 4 * q, 4 do
    local job, target, token, lane = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
    if lane == '' then
      redis.call('HSET', K .. ':job:' .. job, 'cb', id, 'target', target, 'state', 'p', 'lease', 0, 'attempts', 0, 'base', 0)
      zadd(K .. ':due:' .. target, now(), job)
    else
      local state = 'f'
      if token == '0' then state = 'p' end
      local held = not join_lane(lane, target, job)
      if held then
        state = 'h'
        if token ~= '0' then reply[#reply + 1] = job end
      end
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
  local flag = ARGV[o + 6]
  if flag == 'inline' then
    zadd(K .. ':inline', now() + lease_ms, id)
  elseif flag == 'done' then
    zadd(K .. ':done', received, id)
  end
  zadd(K .. ':arrivals', received, id)
  return reply
end
-- Every callback's place in ARGV; their dedupe keys are read at once.
local places, keys, o = {}, {}, 1
while o < #ARGV do
  places[#places + 1] = o
  keys[#keys + 1] = ARGV[o + 2]
  o = o + 8 + tonumber(ARGV[o + 7]) + 4 * tonumber(ARGV[o + 8])
end
local replies = {}
if #keys > 0 then
  local found = redis.call('HMGET', K .. ':dedupe', unpack(keys))
  for i, at in ipairs(places) do
    replies[i] = accept(at, found[i])
  end
end
if #dedupe_pairs > 0 then redis.call('HSET', K .. ':dedupe', unpack(dedupe_pairs)) end
for _, key in ipairs(zorder) do redis.call('ZADD', key, unpack(zsets[key])) end
local listed = {}
for target in pairs(targets) do table.insert(listed, target) end
if #listed > 0 then redis.call('SADD', K .. ':targets', unpack(listed)) end
return replies

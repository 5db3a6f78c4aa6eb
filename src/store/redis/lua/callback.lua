-- ARGV: callback id. Nothing if the account has no such callback; else its fields received,
-- msg_type, event, query, ctype, body, authorizer, v, trace, headers, answer, answer_type and
-- instance,
-- the number of
-- jobs it still holds, then per job: id, target, state (p, f or d), attempts, ms until due (a
-- pending job), status, error, the number n of attempts recorded, and n (attempt, record)
-- pairs.
--
-- Nothing leads from a callback to its jobs but their `cb` field, so they are looked for.
-- First right after the callback's id, one look per target the account has: ingress takes a
-- callback's id and its jobs' in one block, so that is where they are. Only if fewer than the
-- callback's `open` jobs are found there, in the dead, leased and due sets of every target of
-- the account: a read of every job it holds, slow on a backlog of millions. Jobs held in the
-- callback's hash (see prelude_inline.lua) are read from it, in flight.
local id = ARGV[1]
local cb = K .. ':cb:' .. id
if redis.call('EXISTS', cb) == 0 then return {} end
local out = redis.call('HMGET', cb, 'received', 'msg_type', 'event', 'query', 'ctype', 'body',
  'authorizer', 'v', 'trace', 'headers', 'answer', 'answer_type', 'instance')
local open = tonumber(redis.call('HGET', cb, 'open') or '0')
local targets = redis.call('SMEMBERS', K .. ':targets')
-- Jobs held in the callback's hash (leased at accept, no outcome yet; see prelude_inline.lua).
local inline = inline_jobs(id)
open = open - #inline
local jobs, seen = {}, {}
local function look(job)
  if not seen[job] and redis.call('HGET', K .. ':job:' .. job, 'cb') == id then
    seen[job] = true
    table.insert(jobs, job)
  end
end
for n = 1, #targets do
  if #jobs >= open then break end
  look(string.format('%d', tonumber(id) + n))
end
local function scan()
  for _, target in ipairs(targets) do
    for _, set in ipairs({'dead', 'lease', 'due', 'held'}) do
      local key, from = K .. ':' .. set .. ':' .. target, 0
      while true do
        local chunk = redis.call('ZRANGE', key, from, from + 999)
        for _, job in ipairs(chunk) do
          look(job)
          if #jobs >= open then return end
        end
        if #chunk < 1000 then break end
        from = from + 1000
      end
    end
  end
end
if #jobs < open then scan() end
table.insert(out, tostring(#jobs + #inline))
for _, held in ipairs(inline) do
  for _, v in ipairs({held[2], held[1], 'f', '0', false, false, false, '0'}) do
    table.insert(out, v)
  end
end
local now
for _, job in ipairs(jobs) do
  local j = redis.call('HMGET', K .. ':job:' .. job, 'target', 'state', 'attempts', 'status', 'error')
  local due = false
  if j[2] == 'p' then
    local at = redis.call('ZSCORE', K .. ':due:' .. j[1], job)
    if at then
      now = now or now_ms()
      due = string.format('%d', math.max(0, tonumber(at) - now))
    end
  end
  local records = redis.call('HGETALL', K .. ':att:' .. job)
  for _, v in ipairs({job, j[1], j[2], j[3], due, j[4], j[5], tostring(#records / 2)}) do
    table.insert(out, v)
  end
  for _, v in ipairs(records) do table.insert(out, v) end
end
return out

-- wrk script of the load benchmark: every request is a distinct, correctly signed WeChat
-- callback (the proxy dedupes by MsgId, so a fixed body would measure one delivery).
--
--   wrk ... -s callbacks.lua http://127.0.0.1:PORT/wechat/bench -- DATA_FILE THREADS [OFFSET]
--
-- DATA_FILE comes from `load-gen wrk-data` (see benches/load/corpus.rs for the scheme):
--   plain: the body suffix, then 1000 "query<TAB>body prefix" variants; callback n uses variant
--          n % 1000 and MsgId "240" .. n. Thread t numbers its callbacks from (t + 1) * 10^13, so
--          threads never collide and n always has 14 digits (tostring writes it in full).
--          OFFSET (< 10^13, default 0) is added to n, so that consecutive wrk runs against one
--          proxy send new callbacks rather than resends.
--   event: as plain, for events without a MsgId, with a third line: the body's head up to the
--          sender's number. Callback n is the head, the sender (n mod p) * 7919 mod p (p =
--          1000003, 7 digits), the part of variant floor(n / 10000) % 1000 (EVENT_RUN in
--          corpus.rs), so CreateTime grows with n, then EventKey "240" .. n and the suffix.
--   safe:  whole encrypted callbacks, one a line; thread t starts at its share of the pool and
--          cycles (past the pool's end callbacks repeat, and the proxy answers them as resends).
-- done() prints one line "WRK {json}" for run.sh.

local unescapes = { ["\\"] = "\\", n = "\n", t = "\t" }
local function unescape(s)
  return (s:gsub("\\([\\nt])", unescapes))
end

local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end

local mode, suffix
local heads, mids, pool = {}, {}, {}
local counter, base, pos, count = 0, 0, 1, 0

function init(args)
  local path, threads, offset = args[1], tonumber(args[2] or "1"), tonumber(args[3] or "0")
  local head = "POST " .. wrk.path .. "?%s HTTP/1.1\r\nHost: " .. wrk.host .. ":" .. wrk.port
    .. "\r\nContent-Type: text/xml\r\nContent-Length: "
  local lines = io.lines(path)
  mode = lines()
  local numbered = mode == "plain" or mode == "event"
  local event_head = ""
  if numbered then
    suffix = unescape(lines())
  end
  if mode == "event" then
    event_head = unescape(lines())
  end
  for line in lines do
    local query, body = line:match("^([^\t]*)\t(.*)$")
    body = unescape(body)
    if numbered then
      -- Every plain body has the same length: the head, length and prefix are one string.
      -- An event's prefix follows its sender, between them and the head.
      if mode == "event" then
        local length = #event_head + 7 + #body + 17 + #suffix
        heads[#heads + 1] = head:format(query) .. length .. "\r\n\r\n" .. event_head
        mids[#mids + 1] = body
      else
        local length = #body + 17 + #suffix
        heads[#heads + 1] = head:format(query) .. length .. "\r\n\r\n" .. body
      end
    else
      pool[#pool + 1] = head:format(query) .. #body .. "\r\n\r\n" .. body
    end
  end
  base = (tid + 1) * 1e13 + offset
  count = #pool
  if count > 0 then
    pos = math.floor(tid * count / threads) + 1
  end
end

function request()
  if mode == "plain" then
    local n = base + counter
    counter = counter + 1
    return heads[n % 1000 + 1] .. "240" .. tostring(n) .. suffix
  elseif mode == "event" then
    local n = base + counter
    counter = counter + 1
    local v = math.floor(n / 10000) % 1000 + 1
    local sender = string.format("%07d", (n % 1000003) * 7919 % 1000003)
    return heads[v] .. sender .. mids[v] .. "240" .. tostring(n) .. suffix
  end
  local r = pool[pos]
  pos = pos % count + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,'
      .. '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,'
      .. '"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    math.floor(latency:percentile(50)), math.floor(latency:percentile(90)),
    math.floor(latency:percentile(99)), math.floor(latency.max)))
end

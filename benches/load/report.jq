# The load benchmark's report: reads the array of run records that run.sh wrote (one object per
# run: scenario, wrk summary, accepted, sink counters, RSS, drain time, CPU ticks) and prints
# markdown. Arguments: $slow (ms), $alt (label of ALT_BIN), $span (how many cores the CPU shares
# are of: 1, or 2 in the two-core mode), $shared (1 when the load generator ran on those cores).

def median: sort | if length == 0 then null
  elif length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def rps: if .wrk.rps then .wrk.rps else .wrk.requests / (.wrk.duration_us / 1e6) end;
def int: if . == null then "–" else (. + 0.5 | floor | tostring) end;
def ms: if . == null then "–" else (. / 1000 * 100 | round / 100 | tostring) + " ms" end;
def ratio: if . == null then "–" else (. * 100 | round / 100 | tostring) + "×" end;
def sum(f): map(f // 0) | add;

def title:
  if startswith("alt-") then (ltrimstr("alt-") | title) + " [\($alt)]" else
  { bare: "hyper ceiling (buffer + `success`)",
    nginx: "nginx mirror → 2 sinks",
    fast: "wechat-fanout, 2 fast targets",
    "fast-h2": "wechat-fanout, 2 fast targets over HTTP/2",
    "fast-pipe": "wechat-fanout, 2 fast targets, HTTP/1.1 pipelined",
    events: "wechat-fanout, events without a MsgId, pipelined",
    slow: "wechat-fanout, target b slow (\($slow) ms)",
    down: "wechat-fanout, target b down",
    safe: "wechat-fanout, safe mode (AES)",
    rate: "wechat-fanout at a fixed rate",
    "redis-always": "wechat-fanout on Redis (AOF always), 2 fast targets",
    "redis-everysec": "wechat-fanout on Redis (AOF everysec), 2 fast targets",
    "redis-two": "2 × wechat-fanout on one Redis (always), 2 fast targets",
    "redis-rate": "wechat-fanout on Redis (always) at a fixed rate",
    "redis-rate-everysec": "wechat-fanout on Redis (everysec) at a fixed rate",
    "redis-min1-rate": "wechat-fanout on Redis (always) + a replica, min_replicas 1, at a fixed rate",
    "redis-lanes": "wechat-fanout on Redis (everysec), 2 fast targets in per-user order (lanes)",
    "redis-lanes-rate": "wechat-fanout on Redis (everysec), per-user order (lanes), at a fixed rate",
    "redis-replica": "wechat-fanout on Redis (always) + a replica, min_replicas 0",
    "redis-min1": "wechat-fanout on Redis (always) + a replica, min_replicas 1 (WAIT)" }[.] // . end;

def redis_capacity: ltrimstr("alt-") | IN("redis-always", "redis-everysec", "redis-two", "redis-replica", "redis-min1", "redis-lanes");

# Deliveries column: what each sink received (distinct callbacks) against what was accepted.
def deliveries:
  if .[0].scenario == "bare" then "–"
  else
    (sum(.accepted)) as $acc | (sum(.a.unique)) as $a | (sum(.b.unique)) as $b
    | (sum(.a.duplicates) + sum(.b.duplicates)) as $dup
    | (map(select(.drain == "timeout")) | length) as $late
    | (if .[0].scenario == "nginx" then ($a >= $acc and $b >= $acc) else ($a == $acc and $b == $acc) end) as $ok
    | (sum(.duplicates)) as $resends
    # HTTP/2 targets: every delivery must have come over HTTP/2.
    | ((.[0].scenario | ltrimstr("alt-")) == "fast-h2") as $h2
    | (sum(.a.requests) + sum(.b.requests)) as $sent | (sum(.a.http2) + sum(.b.http2)) as $over_h2
    | "a \($a) · b \($b) of \($acc)"
      + (if $dup > 0 then " (\($dup) dup)" else "" end)
      # A safe-mode pool smaller than the run: wrk cycled and the proxy answered resends.
      + (if $resends > 0 then " · \($resends) resends answered" else "" end)
      # nginx: does it keep its upstream connections alive? Pipelining: one connection each?
      + (if .[0].scenario | ltrimstr("alt-") | IN("nginx", "fast-pipe") then " · \(sum(.a.connections) + sum(.b.connections)) sink connections" else "" end)
      + (if $late > 0 then " · \($late) run(s) not drained" else "" end)
      + (if $h2 then " · \($over_h2) of \($sent) over HTTP/2" else "" end)
      + (if $ok and $late == 0 and ($h2 | not or $over_h2 == $sent) then " ✓" else " ✗" end)
  end;

def identity:
  if .[0].scenario == "bare" then "–"
  else (sum(.a.mismatched) + sum(.b.mismatched)) as $bad
    | (sum(.a.identical) + sum(.b.identical)) as $good
    | if $bad == 0 then "all \($good) ✓" else "\($bad) differ ✗" end
  end;

# Where the measured cores' time went during the load (medians over runs), in percent of them
# all (two-core mode: 100 is both cores).
def core:
  if all(.cpu != null) then
    def pct(f): map(f // 0) | median | . * 10 | round / 10;
    "\(pct(.cpu.server)) · \(pct(.cpu.store)) · \(pct(.cpu.sinks))"
    + (if $shared == 1 then " · \(pct(.cpu.client))" else "" end)
    + " · \(pct(.cpu.other)) · \(pct(.cpu.idle))"
  else "–" end;

# The measured cores' time per answered callback, in µs (medians over runs): what the load costs
# there, whatever share of the cores other users of the machine took. A share is of `span` cores.
def core_us(f): (f // 0) * (.cpu.span // 1) * 1e4 / rps;
def per_callback:
  if all(.cpu != null) and .[0].scenario != "bare" then
    def us(f): map(core_us(f)) | median | round;
    "\(us(.cpu.server)) · \(us(.cpu.store)) · \(us(.cpu.sinks))"
    + (if $shared == 1 then " · \(us(.cpu.client))" else "" end)
  else "–" end;

# The server's own CPU (utime + stime of all its threads) against the load's wall time and the
# callbacks it took (bare: answered), medians over runs; runs older than these fields show "–".
def callbacks: .accepted // .wrk.requests;
def cpu_s: .cpu.server_ticks / .cpu.hz;
def has_ticks: all(.cpu.server_ticks != null and .cpu.hz != null);
def proxy_cores:
  if has_ticks then map(cpu_s / .cpu.wall_s) | median | . * 100 | round / 100 | tostring else "–" end;
def per_core:
  if has_ticks and all(cpu_s > 0) then map(callbacks / cpu_s) | median | int else "–" end;
# The proxy's CPU per accepted callback by thread, in µs: the SQLite writer thread, tokio's
# threads, and the rest of the process (its total less those two: the main thread, threads
# that ended during the load).
def by_thread:
  if has_ticks and all(.threads != null) and all(callbacks > 0) then
    def us(f): map(f * 1e6 / .cpu.hz / callbacks) | median | round;
    "\(us(.threads.writer)) · \(us(.threads.async)) · \(us([.cpu.server_ticks - .threads.writer - .threads.async, 0] | max))"
  else "–" end;

def mib: . / 1024 | floor | tostring;

# Peak RSS of the proxy (of each proxy), and of redis-server.
def rss:
  (map(.hwm_kib // empty)) as $hwm
  | (map(.hwm_each_kib // empty)) as $each
  | (map(.store_hwm_kib // empty)) as $store
  | if ($hwm | length) == 0 then "–"
    else (if ($each | length) > 0
          then "\($each | map(.[0]) | max | mib) + \($each | map(.[1]) | max | mib) MiB"
          else "\($hwm | max | mib) MiB" end)
      + (if ($store | length) > 0 then " · redis \($store | max | mib) MiB" else "" end)
    end;

# Answers other than 200 (or failed requests), when there were any.
def errors:
  sum(.wrk.status_errors) + sum(.wrk.connect_errors) + sum(.wrk.read_errors) + sum(.wrk.timeouts)
  | if . > 0 then " (\(.) errors)" else "" end;

def drain:
  map(.drain | select(. != null)) | if length == 0 then "–"
  elif any(. == "timeout") then "timeout"
  else map(tonumber) | max | tostring + " s" end;

. as $runs
| (reduce $runs[] as $r ([]; if index([$r.scenario]) then . else . + [$r.scenario] end)) as $order
| [ $order[] as $s | $runs | map(select(.scenario == $s)) ] as $groups
| (reduce $groups[] as $g ({}; .[$g[0].scenario] = ($g | map(rps) | median))) as $med
| (reduce $groups[] as $g ({}; .[$g[0].scenario] = ($g | map(.wrk.p99_us) | median))) as $p99
# Core time per callback (server + redis + sinks, µs; median over runs).
| (reduce $groups[] as $g ({}; .[$g[0].scenario] = (if all($g[]; .cpu != null)
    then $g | map(core_us(.cpu.server + (.cpu.store // 0) + .cpu.sinks)) | median else null end))) as $core_us
# Each run's ratio to the SQLite fast run of the same round (runs alternate between scenarios).
| (reduce ($runs[] | select(.scenario == "fast")) as $f ({}; .["\($f.run)"] = ($f | rps))) as $fast_by_run
| (reduce $groups[] as $g ({}; .[$g[0].scenario] =
    ($g | map(($fast_by_run["\(.run)"]) as $f | if $f then rps / $f else empty end)))) as $paired
| (if $span == 2 then "cores 0–1" else "core 0" end) as $cores
| (if $shared == 1 then " · load gen" else "" end) as $gen
| "| scenario | requests/s (median) | spread (min–max) | p50 answer | p99 answer | deliveries per sink vs accepted | byte-identical | drain after load | proxy RSS (peak) | \($cores) %: server · redis · sinks\($gen) · other · idle | \($cores) µs per callback: server · redis · sinks\($gen) | proxy CPU (cores) | callbacks/s per proxy core | proxy µs per callback: writer · async · other | × hyper | × nginx | × SQLite (paired min–max) |",
  "|---|---:|---:|---:|---:|---|---|---:|---:|---|---|---:|---:|---|---:|---:|---:|",
  ( $groups[] as $g
    | ($g | map(rps)) as $r
    | $g[0].scenario as $s
    | "| \($s | title) | \($r | median | int)\($g | errors) | \($r | min | int)–\($r | max | int) "
      + "| \($g | map(.wrk.p50_us) | median | ms) | \($g | map(.wrk.p99_us) | median | ms) "
      + "| \($g | deliveries) | \($g | identity) | \(if $s == "bare" then "–" else ($g | drain) end) "
      + "| \($g | rss) "
      + "| \($g | core) | \($g | per_callback) "
      + "| \($g | proxy_cores) | \($g | per_core) | \($g | by_thread) "
      # A fixed rate is not a capacity: no ratio.
      + "| \(if $med.bare and ($s | ltrimstr("alt-") | IN("bare", "rate", "redis-rate", "redis-rate-everysec", "redis-min1-rate", "redis-lanes-rate") | not) then ($r | median) / $med.bare | ratio else "–" end) "
      + "| \(if $med.nginx and ($s | ltrimstr("alt-") | IN("nginx", "rate", "redis-rate", "redis-rate-everysec", "redis-min1-rate", "redis-lanes-rate") | not) then ($r | median) / $med.nginx | ratio else "–" end) "
      + "| \(if $med.fast and ($s | redis_capacity) then (($r | median) / $med.fast | ratio)
              + (if ($paired[$s] | length) > 0 then " (\($paired[$s] | min | ratio)–\($paired[$s] | max | ratio))" else "" end)
            else "–" end) |"
  ),
  "",
  "Targets of the issue (measured here, on this machine):",
  "",
  ( def verdict(ok): if ok then "met" else "NOT met" end;
    ( if $med.fast then
        "- fast, saturated: \($med.fast | int)/s ≥ 20,000/s: \(verdict($med.fast >= 20000))"
        + (if $med.nginx then "; \($med.fast / $med.nginx | ratio) nginx ≥ 3.7×: \(verdict($med.fast >= 3.7 * $med.nginx))" else "" end)
      else empty end ),
    ( if $med.safe and $med.fast then
        "- safe mode: \($med.safe / $med.fast | ratio) plaintext (fast) ≥ 0.9×: \(verdict($med.safe >= 0.9 * $med.fast))"
      else empty end ),
    ( if $med["fast-h2"] and $med.fast then
        "- fast with both targets over HTTP/2 (h2c): \($med["fast-h2"] / $med.fast | ratio) the HTTP/1.1 fast row"
        + (if ($paired["fast-h2"] | length) > 0 then " (paired runs \($paired["fast-h2"] | min | ratio)–\($paired["fast-h2"] | max | ratio))" else "" end)
        + (if $core_us.fast and $core_us["fast-h2"] then
            "; \($core_us["fast-h2"] | round) µs vs \($core_us.fast | round) µs of the measured cores per callback" else "" end)
      else empty end ),
    ( if $med["fast-pipe"] and $med.fast then
        "- fast with both targets pipelined (HTTP/1.1): \($med["fast-pipe"] / $med.fast | ratio) the fast row"
        + (if ($paired["fast-pipe"] | length) > 0 then " (paired runs \($paired["fast-pipe"] | min | ratio)–\($paired["fast-pipe"] | max | ratio))" else "" end)
        + (if $core_us.fast and $core_us["fast-pipe"] then
            "; \($core_us["fast-pipe"] | round) µs vs \($core_us.fast | round) µs of the measured cores per callback" else "" end)
        + (if $med.nginx then "; \($med["fast-pipe"] / $med.nginx | ratio) nginx" else "" end)
      else empty end ),
    ( ["slow", "down"][] as $s
      | if $med[$s] and $med.fast then
          "- \($s): \($med[$s] / $med.fast * 100 | round)% of fast ≥ 90%: \(verdict($med[$s] >= 0.9 * $med.fast)); p99 answer \($p99[$s] | ms) vs \($p99.fast | ms) when fast"
        else empty end ),
    ( if $p99.rate then
        "- p99 answer at a fixed \($med.rate | int)/s: \($p99.rate | ms) ≤ 2 ms: \(verdict($p99.rate <= 2000))"
      else empty end ),
    ( if $med["redis-always"] and $med.fast then
        ($med["redis-always"] / $med.fast) as $x
        | "- one instance on Redis (always): \($x | ratio) the SQLite instance (median of paired runs \($paired["redis-always"] | median | ratio)) ≥ 0.8×: \(verdict($x >= 0.8))"
          + (if $core_us.fast and $core_us["redis-always"] then
              "; by server-core time per callback (\($core_us.fast | round) µs vs \($core_us["redis-always"] | round) µs), what an unshared core would give: \($core_us.fast / $core_us["redis-always"] | ratio)"
            else "" end)
      else empty end ),
    ( if $med["redis-min1"] and $med["redis-replica"] then
        # Each min_replicas = 1 run against the min_replicas = 0 runs of the same round.
        ($runs | map(select(.scenario == "redis-replica")) | group_by(.run)
          | map({key: "\(.[0].run)", value: (map(rps) | median)}) | from_entries) as $plain
        | ($runs | map(select(.scenario == "redis-min1") | ($plain["\(.run)"]) as $p
            | if $p then rps / $p else empty end)) as $pairs
        | "- min_replicas = 1 on Redis with a replica: \($med["redis-min1"] | int)/s vs \($med["redis-replica"] | int)/s with 0: \($med["redis-min1"] / $med["redis-replica"] | ratio)"
          + (if ($pairs | length) > 0 then " (each run against its round's min_replicas = 0 runs: \($pairs | min | ratio)–\($pairs | max | ratio), median \($pairs | median | ratio))" else "" end)
          + "; p99 answer \($p99["redis-min1"] | ms) vs \($p99["redis-replica"] | ms)"
      else empty end ),
    # Redis is one thread per primary, and an account's keys are in one slot: its CPU per
    # callback sets the ceiling of a deployment for one account, however many instances.
    ( $groups[] | select(all(.[]; (.cpu.store // 0) > 0)) | . as $g
      | ($g | map(core_us(.cpu.store)) | median) as $us
      | "- Redis's CPU per callback, \($g[0].scenario | title): \($us | . * 10 | round / 10) µs (runs \($g | map(core_us(.cpu.store)) | min | round)–\($g | map(core_us(.cpu.store)) | max | round)), a ceiling of ~\(1000000 / $us | round)/s per primary" ),
    # The goals of Redis's cost per callback (AOF everysec): saturated, and at a fixed rate.
    ( [["redis-everysec", 15], ["redis-rate-everysec", 50], ["redis-lanes", 15], ["redis-lanes-rate", 50]][] as [$s, $goal]
      | $groups[] | select(.[0].scenario == $s and all(.[]; (.cpu.store // 0) > 0))
      | (map(core_us(.cpu.store)) | median) as $us
      | "- Redis's CPU per callback, \($s | title): \($us | round) µs ≤ \($goal) µs: \(verdict($us <= $goal))" ),
    ( if $p99["redis-min1-rate"] then
        "- p99 answer on Redis (always) with a replica and min_replicas = 1 at a fixed \($med["redis-min1-rate"] | int)/s: \($p99["redis-min1-rate"] | ms)"
      else empty end ),
    ( if $p99["redis-rate"] then
        "- p99 answer on Redis (always) at a fixed \($med["redis-rate"] | int)/s: \($p99["redis-rate"] | ms) ≤ 5 ms: \(verdict($p99["redis-rate"] <= 5000))"
      else empty end )
  )

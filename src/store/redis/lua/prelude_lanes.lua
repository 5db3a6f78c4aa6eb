-- Lane-ordered jobs (`order = "per_user"`): `lane:<lane>:<t>` (zset) holds a lane's open jobs
-- for target t by their place in it; only its first is in `due:<t>` or `lease:<t>`, the others
-- wait in state 'h' (held), also listed in `held:<t>`. Lanes have no ':', so the key is one.
local function lane_key(lane, target) return K .. ':lane:' .. lane .. ':' .. target end
-- The first open job of a lane and its state ('p' or 'f'); nil and 'empty' for an empty lane.
-- Firsts no longer open (delivered or dead under a build that keeps no lanes) come off; a held
-- first is let go: due now.
local function lane_first(lk, target)
  for _ = 1, 100 do
    local first = redis.call('ZRANGE', lk, 0, 0)[1]
    if not first then return nil, 'empty' end
    local state = redis.call('HGET', K .. ':job:' .. first, 'state')
    if state == 'p' or state == 'f' then return first, state end
    if state == 'h' then
      redis.call('HSET', K .. ':job:' .. first, 'state', 'p')
      redis.call('ZREM', K .. ':held:' .. target, first)
      redis.call('ZADD', K .. ':due:' .. target, now_ms(), first)
      return first, 'p'
    end
    redis.call('ZREM', lk, first)
  end
  return nil
end
-- Job `job` joins the end of `lane` for `target`: true if it is the lane's first (the caller
-- makes it due or in flight), else it is listed as held (the caller sets its state 'h').
local function join_lane(lane, target, job)
  local lk = lane_key(lane, target)
  local first, state = lane_first(lk, target)
  -- An empty lane (most, at everyday rates) starts at 1 without reading its last place.
  local place = 1
  if state ~= 'empty' then
    local last = redis.call('ZRANGE', lk, -1, -1, 'WITHSCORES')
    if last[2] then place = tonumber(last[2]) + 1 end
  end
  redis.call('ZADD', lk, place, job)
  if first then redis.call('ZADD', K .. ':held:' .. target, place, job) end
  return not first
end
-- Job `job` of `lane` was delivered or died: it leaves the lane, and the next one goes. True
-- when that next one is due now (its target's worker should look), not when it is in flight or
-- the lane is empty.
local function leave_lane(lane, target, job)
  local lk = lane_key(lane, target)
  redis.call('ZREM', lk, job)
  local _, state = lane_first(lk, target)
  return state == 'p'
end

-- ARGV: target (lane-ordered). Looks at the lanes of three held jobs picked at random and lets
-- go of a lane whose first is no longer open (delivered or dead under a build that keeps no
-- lanes, during a rolling deploy: see `store::shape`, version 5). How many it looked at.
local target = ARGV[1]
local held = redis.call('ZRANDMEMBER', K .. ':held:' .. target, 3)
for _, job in ipairs(held) do
  local lane = redis.call('HGET', K .. ':job:' .. job, 'lane')
  if lane then lane_first(lane_key(lane, target), target) end
end
return #held

"""The Lua scripts of the Redis job store (app/style/redis_store.py): every state change of a job is one script, so
API replicas, workers and the janitor never see half of a change. Each takes ARGV only (the namespace first)."""

DURATIONS_KEPT = 20  # run times kept for the Retry-After estimate

# Lua helpers shared by the scripts below. KEYS are not declared: the scripts build their key names from the
# namespace, so this store needs one Redis (or a Redis Cluster hash tag in the namespace), not a cluster.
_LUA_COMMON = """
local ns = ARGV[1]
local function jkey(id) return ns .. ':job:' .. id end
local function fkey(id) return ns .. ':job:' .. id .. ':files' end
local function is_finished(status) return status == 'succeeded' or status == 'failed' or status == 'cancelled' end
local function drop_inputs(id)
  for _, name in ipairs(redis.call('hkeys', fkey(id))) do
    if name ~= 'result.png' then redis.call('hdel', fkey(id), name) end
  end
end
local function finish(id, status, at, keep_ms)
  redis.call('hset', jkey(id), 'status', status, 'finished_at', at)
  redis.call('zrem', ns .. ':queued', id)
  redis.call('srem', ns .. ':running', id)
  redis.call('zadd', ns .. ':finished', at, id)
  drop_inputs(id)
  redis.call('pexpire', jkey(id), keep_ms)
  redis.call('pexpire', fkey(id), keep_ms)
end
local function requeue(id, notice)
  redis.call('hset', jkey(id), 'status', 'queued', 'worker', '', 'started_at', '', 'step', 0, 'losses', '',
             'has_preview', 0, 'error', notice)
  redis.call('hdel', fkey(id), 'preview.png')
  redis.call('srem', ns .. ':running', id)
  redis.call('zadd', ns .. ':queued', redis.call('incr', ns .. ':seq'), id)
end
local function forget_owner(id)
  local owner = redis.call('hget', jkey(id), 'owner')
  if owner and owner ~= '' then redis.call('zrem', ns .. ':owned:' .. owner, id) end
end
local function owned(id, worker)  -- worker '' (None): whichever worker runs it
  local rec = redis.call('hmget', jkey(id), 'status', 'worker')
  return rec[1] == 'running' and (worker == '' or rec[2] == worker)
end
"""

# ARGV: ns, id, max_queued, owner ('' for none), max_per_owner (0: no cap), field, value, ...
#   ->  {1, seq}, {0, queued} (queue full) or {2, the owner's queued} (the owner's share full)
_SUBMIT = _LUA_COMMON + """
local id, max_queued, owner, max_mine = ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local queued = redis.call('zcard', ns .. ':queued')
if queued >= max_queued then return {0, queued} end
if owner ~= '' and max_mine > 0 then
  local mine = 0  -- the queue holds at most MAX_QUEUED_JOBS ids: counting them is cheap
  for _, other in ipairs(redis.call('zrange', ns .. ':queued', 0, -1)) do
    if redis.call('hget', jkey(other), 'owner') == owner then mine = mine + 1 end
  end
  if mine >= max_mine then return {2, mine} end
end
local seq = redis.call('incr', ns .. ':seq')
redis.call('hset', jkey(id), 'seq', seq, 'owner', owner, unpack(ARGV, 6))
redis.call('zadd', ns .. ':jobs', seq, id)
redis.call('zadd', ns .. ':queued', seq, id)
if owner ~= '' then redis.call('zadd', ns .. ':owned:' .. owner, seq, id) end
return {1, seq}
"""

# ARGV: ns, id, worker, now, max_attempts, heartbeat_ms, died_message, keep_ms
#   -> 'claimed' | 'retried' | 'gone' | 'finished' | 'busy' | 'failed'
_CLAIM = _LUA_COMMON + """
local id, worker, at, max_attempts, heartbeat_ms, died = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
local rec = redis.call('hmget', jkey(id), 'status', 'worker', 'attempts')
local status, previous, attempts = rec[1], rec[2], tonumber(rec[3] or '0')
if not status then return 'gone' end
if is_finished(status) then return 'finished' end
local outcome = 'claimed'
if status == 'running' then
  if previous == worker or redis.call('get', ns .. ':worker:' .. previous) == id then return 'busy' end
  -- the worker that had it is gone: this delivery is the retry
  if attempts >= max_attempts then
    redis.call('hset', jkey(id), 'error', died .. ' (attempt ' .. attempts .. ' of ' .. max_attempts ..
               '); submit it again')
    finish(id, 'failed', at, ARGV[8])
    return 'failed'
  end
  redis.call('hset', jkey(id), 'error', died .. '; retried (attempt ' .. attempts .. ' of ' .. max_attempts ..
             ' was interrupted)')
  outcome = 'retried'
end
redis.call('hset', jkey(id), 'status', 'running', 'started_at', at, 'worker', worker, 'attempts', attempts + 1,
           'step', 0, 'losses', '', 'has_preview', 0, 'cancel_requested', 0)
redis.call('hdel', fkey(id), 'preview.png')
redis.call('zrem', ns .. ':queued', id)
redis.call('sadd', ns .. ':running', id)
redis.call('set', ns .. ':worker:' .. worker, id, 'PX', heartbeat_ms)
return outcome
"""

# ARGV: ns, id, worker, step, total, losses, preview (or '') -> 1 | 0 (no longer this worker's running job)
_PROGRESS = _LUA_COMMON + """
local id, worker = ARGV[2], ARGV[3]
if not owned(id, worker) then return 0 end
redis.call('hset', jkey(id), 'step', ARGV[4], 'total', ARGV[5], 'losses', ARGV[6])
if ARGV[7] ~= '' then
  redis.call('hset', fkey(id), 'preview.png', ARGV[7])
  redis.call('hset', jkey(id), 'has_preview', 1)
end
return 1
"""

# ARGV: ns, id, worker, now, keep_ms, status, error, losses, result (or ''), started_at -> 1 | 0
_FINISH = _LUA_COMMON + """
local id, worker, at, keep_ms, status = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not owned(id, worker) then return 0 end
redis.call('hset', jkey(id), 'error', ARGV[7])
if ARGV[8] ~= '' then redis.call('hset', jkey(id), 'losses', ARGV[8]) end
if status == 'succeeded' then
  redis.call('hset', fkey(id), 'result.png', ARGV[9])
  redis.call('hset', jkey(id), 'step', redis.call('hget', jkey(id), 'total'))
  redis.call('lpush', ns .. ':durations', tostring(at - tonumber(redis.call('hget', jkey(id), 'started_at'))))
  redis.call('ltrim', ns .. ':durations', 0, %d)
end
local ran_on = redis.call('hget', jkey(id), 'worker')
finish(id, status, at, keep_ms)
if ran_on and ran_on ~= '' and redis.call('get', ns .. ':worker:' .. ran_on) == id then
  redis.call('set', ns .. ':worker:' .. ran_on, '', 'KEEPTTL')  -- idle now
end
return 1
""" % (DURATIONS_KEPT - 1)

# ARGV: ns, id, now, keep_ms -> 1 when it was queued or running (now cancelled), else 0
_CANCEL = _LUA_COMMON + """
local id = ARGV[2]
local status = redis.call('hget', jkey(id), 'status')
if status ~= 'queued' and status ~= 'running' then return 0 end
redis.call('hset', jkey(id), 'cancel_requested', 1)
finish(id, 'cancelled', ARGV[3], ARGV[4])
return 1
"""

# ARGV: ns, id, worker -> 1 when handed back
_RELEASE = _LUA_COMMON + """
local id, worker = ARGV[2], ARGV[3]
if worker == '' or not owned(id, worker) then return 0 end
requeue(id, '')
redis.call('hincrby', jkey(id), 'attempts', -1)
redis.call('set', ns .. ':worker:' .. worker, '', 'KEEPTTL')
return 1
"""

# ARGV: ns, now, max_attempts, keep_ms, reason -> {id, new status, ...} for jobs whose worker is gone
_RECOVER = _LUA_COMMON + """
local at, max_attempts, keep_ms, reason = ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local out = {}
for _, id in ipairs(redis.call('smembers', ns .. ':running')) do
  local rec = redis.call('hmget', jkey(id), 'status', 'worker', 'attempts')
  if rec[1] ~= 'running' then
    redis.call('srem', ns .. ':running', id)
  elseif redis.call('get', ns .. ':worker:' .. rec[2]) ~= id then
    local attempts = tonumber(rec[3] or '0')
    if attempts < max_attempts then
      requeue(id, reason .. '; re-queued (attempt ' .. attempts .. ' of ' .. max_attempts .. ' was interrupted)')
      table.insert(out, id); table.insert(out, 'queued')
    else
      redis.call('hset', jkey(id), 'error', reason .. ' (attempt ' .. attempts .. ' of ' .. max_attempts ..
                 '); submit it again')
      finish(id, 'failed', at, keep_ms)
      table.insert(out, id); table.insert(out, 'failed')
    end
  end
end
return out
"""

# ARGV: ns, id -> 1 deleted, 0 unknown, or the status of an unfinished job
_DELETE = _LUA_COMMON + """
local id = ARGV[2]
local status = redis.call('hget', jkey(id), 'status')
if not status then return 0 end
if not is_finished(status) then return status end
forget_owner(id)
redis.call('del', jkey(id), fkey(id))
redis.call('zrem', ns .. ':jobs', id)
redis.call('zrem', ns .. ':finished', id)
return 1
"""

# ARGV: ns, cutoff -> jobs deleted
_CLEANUP = _LUA_COMMON + """
local ids = redis.call('zrangebyscore', ns .. ':finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0, 1000)
for _, id in ipairs(ids) do
  forget_owner(id)
  redis.call('del', jkey(id), fkey(id))
  redis.call('zrem', ns .. ':jobs', id)
  redis.call('zrem', ns .. ':finished', id)
end
return #ids
"""


SCRIPTS = {"submit": _SUBMIT, "claim": _CLAIM, "progress": _PROGRESS, "finish": _FINISH, "cancel": _CANCEL,
           "release": _RELEASE, "recover": _RECOVER, "delete": _DELETE, "cleanup": _CLEANUP}

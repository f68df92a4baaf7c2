"""The Redis key layout and the Lua scripts that update shared account state atomically.

Keys (``P`` is ``[state] prefix``)::

    P:acct:NAME        hash: health (cooldown, quota, breaker, disable) and counters
    P:rpm:NAME         sorted set: one member per request of the last minute (score: time)
    P:lease:NAME       sorted set: one member per request in flight (score: lease expiry)
    P:cursor           the round-robin cursor shared by every replica
    P:oauth:NAME       the freshest OAuth credentials (JSON) of a qwen-oauth account
    P:oauth-lock:NAME  held by the one replica refreshing that account's token

Keys are built inside the scripts from the prefix, so this layout needs a single Redis
(or a primary with replicas), not Redis Cluster. Times are epoch seconds as decimal
strings; Lua numbers returned to Redis would be cut to integers, so scripts return text.
"""

from __future__ import annotations


def account_key(prefix: str, name: str) -> str:
    return f"{prefix}:acct:{name}"


def rpm_key(prefix: str, name: str) -> str:
    return f"{prefix}:rpm:{name}"


def lease_key(prefix: str, name: str) -> str:
    return f"{prefix}:lease:{name}"


def oauth_key(prefix: str, name: str) -> str:
    return f"{prefix}:oauth:{name}"


def oauth_lock_key(prefix: str, name: str) -> str:
    return f"{prefix}:oauth-lock:{name}"


# Take the first candidate that every replica's view allows, in one step: health
# blocks, a concurrency lease, an rpm slot and the daily counter. Round robin rotates
# the candidates by the shared cursor, so replicas take turns as one process would.
# ``force`` (a probe sent because every account is blocked only by seamline's own
# inference) looks past open circuits and guessed backoffs, never past the upstream's
# word (disable, quota, a Retry-After) or an operator's limit.
# ARGV: prefix, now, lease id, lease expiry, rotate (1/0), rpm window, breaker scope,
#       force (1/0), then per candidate: name, rpm, daily limit, max concurrent,
#       quota day start.
# Returns {chosen 1-based index or 0, then name, reason, value for each refusal}; a
# breaker refusal's value is "scope=until".
ACQUIRE = """
local p, now, lease, expiry = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local window, scope, force = tonumber(ARGV[6]), ARGV[7], ARGV[8] == '1'
local n = (#ARGV - 8) / 5
local start = 0
if ARGV[5] == '1' then start = redis.call('INCR', p .. ':cursor') % n end
local out = {0}
for i = 0, n - 1 do
  local j = (start + i) % n
  local b = 9 + j * 5
  local name = ARGV[b]
  local rpm, daily, maxc = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local day_start = ARGV[b + 4]
  local h, rk, lk = p .. ':acct:' .. name, p .. ':rpm:' .. name, p .. ':lease:' .. name
  local f = redis.call('HMGET', h, 'disabled', 'quota_until', 'cooldown_until',
    'cooldown_explicit', 'breaker:*', 'breaker:' .. scope, 'day_start', 'day_requests')
  local why, value = nil, ''
  local cooling = tonumber(f[3] or '0') > now
  if f[1] then why, value = 'disabled', f[1]
  elseif tonumber(f[2] or '0') > now then why, value = 'quota', f[2]
  elseif cooling and f[4] == '1' then why, value = 'rate', f[3]
  elseif cooling and not force then why, value = 'backoff', f[3]
  elseif not force and tonumber(f[5] or '0') > now then why, value = 'breaker', '*=' .. f[5]
  elseif not force and tonumber(f[6] or '0') > now then
    why, value = 'breaker', scope .. '=' .. f[6]
  end
  if not why then
    redis.call('ZREMRANGEBYSCORE', lk, '-inf', now)
    local busy = redis.call('ZCARD', lk)
    if maxc > 0 and busy >= maxc then why, value = 'busy', tostring(busy) end
  end
  if not why and rpm > 0 then
    redis.call('ZREMRANGEBYSCORE', rk, '-inf', now - window)
    if redis.call('ZCARD', rk) >= rpm then
      local oldest = redis.call('ZRANGE', rk, 0, 0, 'WITHSCORES')
      why, value = 'rpm', tostring(tonumber(oldest[2]) + window)
    end
  end
  local fresh_day = tonumber(f[7] or '0') < tonumber(day_start)
  local today = tonumber(f[8] or '0')
  if fresh_day then today = 0 end
  if not why and daily > 0 and today >= daily then why, value = 'daily', tostring(today) end
  if why then
    table.insert(out, name)
    table.insert(out, why)
    table.insert(out, value)
  else
    if fresh_day then
      redis.call('HSET', h, 'day_start', day_start, 'day_requests', 0, 'day_tokens', 0)
    end
    redis.call('HINCRBY', h, 'day_requests', 1)
    redis.call('HINCRBY', h, 'requests', 1)
    redis.call('ZADD', lk, expiry, lease)
    if rpm > 0 then
      redis.call('ZADD', rk, now, lease)
      redis.call('EXPIRE', rk, math.ceil(window) + 1)
    end
    out[1] = j + 1
    return out
  end
end
return out
"""

# The head of REPORT and MERGE: the account's hash, and its quota day moved on to ARGV[3]
# (``current`` stays on a later day another replica already started).
_DAY = """
local h = ARGV[1] .. ':acct:' .. ARGV[2]
local day = tonumber(ARGV[3])
local current = tonumber(redis.call('HGET', h, 'day_start') or '0')
if current < day then
  redis.call('HSET', h, 'day_start', ARGV[3], 'day_requests', 0, 'day_tokens', 0)
  current = day
end
"""

# What one replica learned about one account since its last report, merged so that no
# report undoes another's: cooldown and quota times only grow (a cooldown keeps whether
# it was the upstream's word), counters add up, each breaker scope and the disable
# follow the latest report that changed them.
# ARGV: prefix, name, day start, requests, day requests, errors, prompt, completion,
#       last error, times (1/0), cooldown until, cooldown explicit (1/0), quota until,
#       backoff, disable op (set/clear/''), reason, persist (1/0), credential
#       fingerprint, reset (1/0: an operator cleared its health), reset time, enable
#       time (with a clear), then per changed breaker scope: scope, until (0: closed).
REPORT = (
    _DAY
    + """
local prompt, completion = tonumber(ARGV[7]), tonumber(ARGV[8])
if ARGV[19] == '1' then
  redis.call('HSET', h, 'cooldown_until', '0', 'cooldown_explicit', '0', 'quota_until', '0',
    'backoff', '0', 'reset_at', ARGV[20])
  for _, field in ipairs(redis.call('HKEYS', h)) do
    if string.sub(field, 1, 8) == 'breaker:' then redis.call('HDEL', h, field) end
  end
end
if current == day then
  redis.call('HINCRBY', h, 'day_requests', ARGV[5])
  redis.call('HINCRBY', h, 'day_tokens', prompt + completion)
end
redis.call('HINCRBY', h, 'requests', ARGV[4])
redis.call('HINCRBY', h, 'errors', ARGV[6])
redis.call('HINCRBY', h, 'prompt_tokens', prompt)
redis.call('HINCRBY', h, 'completion_tokens', completion)
if ARGV[9] ~= '' then redis.call('HSET', h, 'last_error', ARGV[9]) end
if ARGV[10] == '1' then
  if tonumber(redis.call('HGET', h, 'cooldown_until') or '0') < tonumber(ARGV[11]) then
    redis.call('HSET', h, 'cooldown_until', ARGV[11], 'cooldown_explicit', ARGV[12])
  end
  if tonumber(redis.call('HGET', h, 'quota_until') or '0') < tonumber(ARGV[13]) then
    redis.call('HSET', h, 'quota_until', ARGV[13])
  end
  redis.call('HSET', h, 'backoff', ARGV[14])
end
if ARGV[15] == 'set' then
  redis.call('HSET', h, 'disabled', ARGV[16], 'disabled_persist', ARGV[17],
    'disabled_credential', ARGV[18])
elseif ARGV[15] == 'clear' then
  redis.call('HDEL', h, 'disabled', 'disabled_persist', 'disabled_credential')
  if tonumber(redis.call('HGET', h, 'enabled_at') or '0') < tonumber(ARGV[21]) then
    redis.call('HSET', h, 'enabled_at', ARGV[21])
  end
end
for i = 22, #ARGV, 2 do
  if ARGV[i + 1] == '0' then redis.call('HDEL', h, 'breaker:' .. ARGV[i])
  else redis.call('HSET', h, 'breaker:' .. ARGV[i], ARGV[i + 1]) end
end
return 1
"""
)

# A snapshot (StateStore.save) merged in: every number only grows (a cooldown with
# whether it was the upstream's word), so a replica's
# periodic save re-seeds a Redis that lost its data and can never undo another
# replica's newer update. Day counters count only for the same quota day.
# ARGV: prefix, name, day start, then field, value pairs.
MERGE = (
    _DAY
    + """
local text = {disabled = 1, disabled_persist = 1, disabled_credential = 1, last_error = 1}
local health = {cooldown_until = 1, quota_until = 1, backoff = 1}
local disable = {disabled = 1, disabled_persist = 1, disabled_credential = 1}
local explicit, seen_reset, seen_enable = '0', 0, 0
for i = 4, #ARGV, 2 do
  if ARGV[i] == 'cooldown_explicit' then explicit = ARGV[i + 1] end
  if ARGV[i] == 'reset_at' then seen_reset = tonumber(ARGV[i + 1]) end
  if ARGV[i] == 'enabled_at' then seen_enable = tonumber(ARGV[i + 1]) end
end
-- A replica that has not seen the latest reset (or enable) must not bring back what it
-- cleared.
local stale = seen_reset < tonumber(redis.call('HGET', h, 'reset_at') or '0')
local disabled_before = seen_enable < tonumber(redis.call('HGET', h, 'enabled_at') or '0')
for i = 4, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', h, field)
  if field == 'cooldown_explicit' or field == 'reset_at' or (stale and health[field])
    or (disabled_before and disable[field]) then
    -- cooldown_explicit is set with cooldown_until, which it describes
  elseif field == 'cooldown_until' then
    if tonumber(current or '0') < tonumber(value) then
      redis.call('HSET', h, field, value, 'cooldown_explicit', explicit)
    end
  elseif text[field] then
    if not current then redis.call('HSET', h, field, value) end
  elseif (field ~= 'day_requests' and field ~= 'day_tokens') or current == day then
    if tonumber(current or '0') < tonumber(value) then redis.call('HSET', h, field, value) end
  end
end
return 1
"""
)

# Let go of the OAuth refresh lock only when this replica still holds it.
UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

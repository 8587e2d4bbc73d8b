-- sraq ledger apply: one atomic step per turn.
-- KEYS: 1 meta, 2 tasks, 3 transcript, 4 audit, 5 applied, 6 results, 7 outbox,
--       8 lease, 9 turns stream, 10 decisions stream, 11 conversations set
-- ARGV[1]: JSON request (see ledger/store.py: _ApplyRequest); ARGV[2]: the decision event's JSON, or '';
-- ARGV[3..]: the transcript messages to append, each a JSON object without its "at" (added here).
-- (Event and messages ride apart from the request: inside it they were strings cjson had to unescape,
-- and objects it had to decode and encode again; now they are copied, or get one concatenation.)
-- Returns an array: {"ok", version, created_csv, touched_csv, duplicate, now_ms, delivered, task_json...}
-- (task_json: the new state of every task this apply wrote, so the caller can keep its copy of the
-- ledger current without reading it back; delivered: the outbox entries read for req.relay, as
-- XREADGROUP returns them; a duplicate returns no time, no entries and no tasks) or an error tuple
-- {"conflict", current} | {"unknown", task} | {"closed", task, status} |
-- {"stale", task, attempt, current} | {"lease"} | {"invalid", message}.
-- Every check runs before the first write, so a rejected apply changes nothing.

local req = cjson.decode(ARGV[1])
local NULL = cjson.null

local function present(v)
  return v ~= nil and v ~= NULL and v ~= ''
end

local function ack_turn()
  local ack = req.ack
  if present(ack) then
    redis.call('XACK', KEYS[9], ack.group, ack.id)
  end
end

-- 1. fencing: a stale owner can never write
if present(req.token) then
  local owner = redis.call('GET', KEYS[8])
  if owner ~= req.token then
    return {'lease'}
  end
end

-- 2. idempotency: the same turn id returns the earlier result and changes nothing
local earlier = redis.call('HGET', KEYS[6], req.turn)
if earlier then
  ack_turn()
  local v, created, touched = string.match(earlier, '^(%d+)|([^|]*)|(.*)$')
  return {'ok', tonumber(v), created, touched, 1}
end

-- 3. compare-and-set on the ledger version
local meta = redis.call('HMGET', KEYS[1], 'version', 'next_task', 'applied_turns')
local version = tonumber(meta[1] or '0')
if req.expected >= 0 and req.expected ~= version then
  return {'conflict', version}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local next_task = tonumber(meta[2] or '1')
local applied_turns = tonumber(meta[3] or '0') + 1

-- 4. apply every op in memory first
local tasks = {}      -- id -> task table (current in-memory state)
local before = {}     -- id -> original JSON or false
local order = {}      -- ids in first-touch order
local created, touched, audits, outbox = {}, {}, {}, {}

local function load(id)
  if tasks[id] == nil then
    local raw = redis.call('HGET', KEYS[2], id)
    if not raw then return nil end
    tasks[id] = cjson.decode(raw)
    before[id] = raw
    table.insert(order, id)
  end
  return tasks[id]
end

local function is_open(task)
  return task.status == 'pending' or task.status == 'running'
end

local function open_task(id)
  local task = load(id)
  if task == nil then return nil, {'unknown', id} end
  if not is_open(task) then return nil, {'closed', id, task.status} end
  return task, nil
end

local function touch(task)
  task.version = task.version + 1
  task.updated_at = now
  task.updated_by_turn = req.turn
  table.insert(touched, task.id)
end

for _, op in ipairs(req.ops) do
  local kind = op.op
  local task, err
  if kind == 'start' then
    if not present(op.summary) then return {'invalid', 'start needs a summary'} end
    local id = 'task-' .. next_task
    next_task = next_task + 1
    task = {id = id, summary = op.summary, status = 'pending', last_update = 'queued',
            version = 1, attempt = 1, created_at = now, updated_at = now,
            created_by_turn = req.turn, updated_by_turn = req.turn, result = NULL}
    tasks[id] = task
    before[id] = false
    table.insert(order, id)
    table.insert(created, id)
    table.insert(touched, id)
    table.insert(outbox, {'start', id, 1, op.summary})
  elseif kind == 'update' then
    task, err = open_task(op.task_id)
    if err then return err end
    task.last_update = op.text
    touch(task)
    table.insert(outbox, {'update', task.id, task.attempt, op.text})
  elseif kind == 'cancel' then
    task, err = open_task(op.task_id)
    if err then return err end
    task.status = 'cancelled'
    task.last_update = op.reason
    touch(task)
    table.insert(outbox, {'cancel', task.id, task.attempt, op.reason})
  elseif kind == 'event' then
    task, err = open_task(op.task_id)
    if err then return err end
    local attempt = tonumber(op.attempt) or 1
    if attempt < task.attempt then return {'stale', task.id, attempt, task.attempt} end
    task.attempt = attempt
    local ev = op.event
    if ev == 'started' then
      task.status = 'running'
      task.last_update = present(op.text) and op.text or ('started (attempt ' .. attempt .. ')')
    elseif ev == 'progress' then
      task.status = 'running'
      task.last_update = op.text
    elseif ev == 'completed' then
      task.status = 'completed'
      task.last_update = 'completed'
      task.result = op.text
    elseif ev == 'failed' then
      task.status = 'failed'
      task.last_update = present(op.text) and op.text or 'failed'
    else
      return {'invalid', 'unknown task event ' .. tostring(ev)}
    end
    touch(task)
  elseif kind == 'note' then
    -- no task change; recorded in the audit trail only
  else
    return {'invalid', 'unknown op ' .. tostring(kind)}
  end
  table.insert(audits, {op = kind, task = task})
end

-- 5. every check passed: write
if version == 0 then
  redis.call('SADD', KEYS[11], req.conv)  -- a new conversation (members are never removed)
end
version = version + 1
redis.call('HSET', KEYS[1], 'version', version, 'next_task', next_task, 'applied_turns', applied_turns)

local after_json = {}
local written = {}
for _, id in ipairs(order) do
  local enc = cjson.encode(tasks[id])
  after_json[id] = enc
  if enc ~= before[id] then
    redis.call('HSET', KEYS[2], id, enc)
    table.insert(written, enc)
  end
end

-- audit: one entry per op, with the task before and after that op's apply
-- (several ops on one task in one apply share the final "after"; before is the stored state)
local d = req.decision
if d == nil or d == NULL then d = {} end
local function s(v) if v == nil or v == NULL then return '' end return tostring(v) end
for _, a in ipairs(audits) do
  local tid, b, af, tv = '', '', '', ''
  if a.task ~= nil then
    tid = a.task.id
    b = before[tid] or ''
    af = after_json[tid]
    tv = a.task.version
  end
  redis.call('XADD', KEYS[4], '*',
    'turn', req.turn, 'op', a.op, 'task', tid, 'action', s(d.action), 'tier', s(d.tier),
    'conf', s(d.confidence), 'lat', s(d.latency_ms), 'reason', s(d.reason),
    'lv', version, 'tv', tv, 'at', now, 'before', b, 'after', af, 'raw', s(d.raw))
end

for _, o in ipairs(outbox) do
  redis.call('XADD', KEYS[7], '*', 'kind', o[1], 'conv', req.conv, 'task', o[2],
    'attempt', o[3], 'text', o[4], 'turn', req.turn, 'lv', version)
end

-- hand the new entries to the relay of the committing process (its consumer reads them here, so they
-- are in its pending list as if its own XREADGROUP had read them): the relay then needs no blocking
-- read, no wake-up and no round trip of its own per entry. pcall: without the group (not created
-- yet) nothing is read and the commit stands; the relay's own reads find the entries later.
local delivered = {}
if #outbox > 0 and present(req.relay) then
  local got = redis.pcall('XREADGROUP', 'GROUP', req.relay.group, req.relay.consumer, 'COUNT', 1000,
    'STREAMS', KEYS[7], '>')
  if type(got) == 'table' and got.err == nil and got[1] then
    delivered = got[1][2]
  end
end

if #ARGV > 2 then
  local stamped = {}
  local at = ',"at":' .. now .. '}'
  for i = 3, #ARGV do
    stamped[#stamped + 1] = string.sub(ARGV[i], 1, -2) .. at
  end
  if redis.call('RPUSH', KEYS[3], unpack(stamped)) > req.transcript_max then
    redis.call('LTRIM', KEYS[3], -req.transcript_max, -1)
  end
end

-- applied-turn record, bounded: keep every turn younger than ttl OR among the newest keep
local created_csv = table.concat(created, ',')
local touched_csv = table.concat(touched, ',')
-- score: the applied-at ms times 1024 plus the conversation's applied count mod 1024, so turns applied
-- within one millisecond keep their order (on a plain ms score they tie, and ties sort by turn id:
-- the trim below then dropped a newer turn before an older one). Formatted with %d: Lua prints
-- numbers with 14 significant digits, and the score has 16.
redis.call('ZADD', KEYS[5], string.format('%d', now * 1024 + applied_turns % 1024), req.turn)
redis.call('HSET', KEYS[6], req.turn, version .. '|' .. created_csv .. '|' .. touched_csv)
-- the record never holds more turns than were applied: no need to count it before there were as many
local n = 0
if applied_turns > req.applied_keep then n = redis.call('ZCARD', KEYS[5]) end
if n > req.applied_keep then
  -- candidates: the oldest turn ids beyond the newest `applied_keep`, at most 256 per apply
  local last = math.min(n - req.applied_keep, 256) - 1
  local old = redis.call('ZRANGE', KEYS[5], 0, last, 'WITHSCORES')
  local drop = {}
  local cutoff = now - req.applied_ttl_ms
  for i = 1, #old, 2 do
    -- applied at or before now - ttl: the score's ms part (see the ZADD above); a score below 1e14
    -- is a plain ms one, written before scores carried a sequence (they sort first: they are older)
    local score = tonumber(old[i + 1])
    local at = score < 1e14 and score or math.floor(score / 1024)
    if at <= cutoff then table.insert(drop, old[i]) end
  end
  if #drop > 0 then
    redis.call('ZREM', KEYS[5], unpack(drop))
    redis.call('HDEL', KEYS[6], unpack(drop))
  end
end

if ARGV[2] ~= '' then
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', req.decisions_max, '*', 'data', ARGV[2], 'lv', version)
end

ack_turn()
return {'ok', version, created_csv, touched_csv, 0, now, delivered, unpack(written)}

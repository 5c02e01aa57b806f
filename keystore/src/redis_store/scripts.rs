//! Lua scripts: each runs atomically on the node that holds its keys (one hash tag per group).

/// Publishes a group snapshot unless its fingerprint is unchanged; drops the states of keys
/// that left; publishes a `group` event. Returns the current version and 1 when this call
/// changed it (0 when the fingerprint was the same).
///
/// KEYS: group hash, key-state hash. ARGV: fingerprint, data, channel, group name, force (`1`
/// rewrites even an equal fingerprint: the stored value did not authenticate), key ids...
pub const PUBLISH_GROUP: &str = r#"
local fp = redis.call('HGET', KEYS[1], 'fingerprint')
if fp == ARGV[1] and ARGV[5] ~= '1' then
  return {tonumber(redis.call('HGET', KEYS[1], 'version')), 0}
end
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'data', ARGV[2])
local keep = {}
for i = 6, #ARGV do keep[ARGV[i]] = true end
for _, f in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not keep[f] then redis.call('HDEL', KEYS[2], f) end
end
redis.call('PUBLISH', ARGV[3], cjson.encode({type = 'group', name = ARGV[4], version = v}))
return {v, 1}
"#;

/// Applies a transition to keys, the same rules as `KeyStatus::apply` (the later cooldown of a
/// model wins; retire sets the reason; recover clears), and publishes a `keys` event with the
/// statuses that changed. Returns those as a JSON array of `[id, status-json]`.
///
/// KEYS: key-state hash. ARGV: now (ms), transition JSON, origin, channel, group, key ids...
pub const TRANSITION: &str = r#"
local now = tonumber(ARGV[1])
local t = cjson.decode(ARGV[2])
local changes = {}
for i = 6, #ARGV do
  local id = ARGV[i]
  local raw = redis.call('HGET', KEYS[1], id)
  local st = {}
  if raw then st = cjson.decode(raw) end
  local cds = {}
  if type(st.cooldowns) == 'table' then
    for _, c in ipairs(st.cooldowns) do
      if c.untilMs > now then table.insert(cds, c) end
    end
  end
  local changed = false
  if t.kind == 'cool' then
    local found = false
    for _, c in ipairs(cds) do
      if c.model == t.model then
        found = true
        if c.untilMs < t.untilMs then
          c.untilMs = t.untilMs
          c.reason = t.reason
          changed = true
        end
      end
    end
    if not found then
      table.insert(cds, {untilMs = t.untilMs, reason = t.reason, model = t.model})
      changed = true
    end
  elseif t.kind == 'retire' then
    if st.invalid ~= t.reason then
      st.invalid = t.reason
      changed = true
    end
  elseif t.kind == 'recover' then
    if st.invalid ~= nil or #cds > 0 then
      st.invalid = nil
      cds = {}
      changed = true
    end
  end
  if changed then
    if #cds > 0 then st.cooldowns = cds else st.cooldowns = nil end
    st.updatedMs = now
    local enc = cjson.encode(st)
    redis.call('HSET', KEYS[1], id, enc)
    table.insert(changes, {id, enc})
  end
end
if #changes == 0 then return '[]' end
local out = cjson.encode(changes)
redis.call('PUBLISH', ARGV[4], cjson.encode({type = 'keys', group = ARGV[5], origin = ARGV[3], changes = changes}))
return out
"#;

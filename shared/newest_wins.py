"""The Lua scripts that write a document unless a newer one is stored, atomically per key: one per layout.

Versions travel as decimal strings and are compared as such, because Lua numbers are doubles,
exact only to 2^53 microseconds (the year 2255); timestamps reach the year 9999 and before 1970.
A missing or null version on either side writes (see documents.is_stale). redis.pcall errors are
returned as they are, so the reply keeps its code (OOM, READONLY...) on Redis 6 as on 7.
One key per call, so it runs on a cluster. https://redis.io/docs/latest/develop/interact/programmability/eval-intro/
"""

import hashlib

_GREATER = """
local function greater(a, b)
  local a_negative, b_negative = a:sub(1, 1) == '-', b:sub(1, 1) == '-'
  if a_negative ~= b_negative then return b_negative end
  if a_negative then a, b = b:sub(2), a:sub(2) end
  if #a ~= #b then return #a > #b end
  return a > b
end
"""

# JSON: ARGV = [document text, version or ''].
JSON_SCRIPT = (
    _GREATER
    + """
if ARGV[2] ~= '' then
  local stored = redis.pcall('JSON.GET', KEYS[1], '$.version')
  if type(stored) == 'table' and stored.err then return stored end
  local version = stored and string.match(stored, '^%[(%-?%d+)%]$')
  if version and greater(version, ARGV[2]) then return 0 end
end
local reply = redis.pcall('JSON.SET', KEYS[1], '$', ARGV[1])
if type(reply) == 'table' and reply.err then return reply end
return 1
"""
)

# HASH: ARGV = [version or '', field, value, field, value, ...]. The hash is replaced as a whole: a
# field that became NULL is absent from ARGV, and its old value is deleted. HSET goes first, so a
# refusal (OOM, WRONGTYPE for a key of another type) leaves the stored document as it was; HDEL of
# the fields left over is never refused for memory.
HASH_SCRIPT = (
    _GREATER
    + """
if ARGV[1] ~= '' then
  local stored = redis.pcall('HGET', KEYS[1], 'version')
  if type(stored) == 'table' and stored.err then return stored end
  if stored and string.match(stored, '^%-?%d+$') and greater(stored, ARGV[1]) then return 0 end
end
local reply = redis.pcall('HSET', KEYS[1], unpack(ARGV, 2))
if type(reply) == 'table' and reply.err then return reply end
local written = {}
for i = 2, #ARGV, 2 do written[ARGV[i]] = true end
local left_over = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not written[field] then left_over[#left_over + 1] = field end
end
if #left_over > 0 then redis.call('HDEL', KEYS[1], unpack(left_over)) end
return 1
"""
)

STALE = 0  # a script's reply when a newer document is stored; 1 when it wrote


def sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


SCRIPTS = {"json": JSON_SCRIPT, "hash": HASH_SCRIPT}

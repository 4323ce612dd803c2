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

# HASH: ARGV = [version or '', the text fields as "field NUL value NUL field NUL value", then the
# vector's field and bytes if any]. Text travels as one argument because redis-py encodes every
# argument in Python (28 arguments a document cost more than the rest of the write); Postgres text
# holds no NUL, so the split is exact. The hash is replaced as a whole: a field that became NULL is
# absent, and its old value is deleted. HSET goes first, so a refusal (OOM, WRONGTYPE for a key of
# another type) leaves the stored document as it was; HDEL of the fields left over is never refused.
HASH_SCRIPT = (
    _GREATER
    + """
if ARGV[1] ~= '' then
  local stored = redis.pcall('HGET', KEYS[1], 'version')
  if type(stored) == 'table' and stored.err then return stored end
  if stored and string.match(stored, '^%-?%d+$') and greater(stored, ARGV[1]) then return 0 end
end
local pairs_ = {}
local text, start = ARGV[2], 1
while true do
  local stop = string.find(text, '\\0', start, true)
  if not stop then pairs_[#pairs_ + 1] = string.sub(text, start); break end
  pairs_[#pairs_ + 1] = string.sub(text, start, stop - 1)
  start = stop + 1
end
if ARGV[3] then pairs_[#pairs_ + 1] = ARGV[3]; pairs_[#pairs_ + 1] = ARGV[4] end
local reply = redis.pcall('HSET', KEYS[1], unpack(pairs_))
if type(reply) == 'table' and reply.err then return reply end
local written = {}
for i = 1, #pairs_, 2 do written[pairs_[i]] = true end
local left_over = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not written[field] then left_over[#left_over + 1] = field end
end
if #left_over > 0 then redis.call('HDEL', KEYS[1], unpack(left_over)) end
return 1
"""
)

# Every key's fingerprint in one call, as JSON.MGET reads a page of JSON documents ('' for a key
# that is missing or not a hash): one command per page instead of one per document.
HASH_FINGERPRINTS_SCRIPT = """
local found = {}
for i, key in ipairs(KEYS) do
  local value = redis.pcall('HGET', key, 'fingerprint')
  if type(value) ~= 'string' then value = '' end
  found[i] = value
end
return found
"""

STALE = 0  # a script's reply when a newer document is stored; 1 when it wrote


def sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


SCRIPTS = {"json": JSON_SCRIPT, "hash": HASH_SCRIPT}

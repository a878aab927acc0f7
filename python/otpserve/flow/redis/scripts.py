"""The Lua scripts a Redis pipeline runs: each is atomic on the server, as MULTI/EXEC is, and more.

``ACK_AND_WRITE`` is how a result or a dead letter goes out exactly once. MULTI/EXEC would make the XACK and
the XADD atomic, but it cannot make the XADD depend on the XACK: if two consumers hold the same entry (a
janitor reclaimed it from one that was only slow), both transactions would add a result. Here the XADD runs
only when this XACK removed the entry from the group's pending list, so whichever consumer acks first writes
the one result and every later copy writes nothing. Redis replicates and logs a script's effects as one
MULTI/EXEC block (AOF included), so a crash of Redis leaves either both the XACK and the XADD, or neither.
Its records come packed in one argument (netstrings, ``pack_records``): redis-py encodes each argument in
Python, ~2 us apiece, a quarter of ``otpserve pipeline infer``'s time at seven arguments a message (cProfile);
with one argument, that section went from 18-19k to 20-21k msg/s.

``RENEW`` extends the lease of entries this consumer still owns (XCLAIM JUSTID resets their idle time
without counting a delivery) and reports the ones another consumer has claimed meanwhile.

``TRIM`` deletes the entries every group has acked: below the oldest pending entry of each group, and
below what each group has not yet read, whichever is lower.
"""

ACK_AND_WRITE = """
local stream, results, dead, group, buf = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local pos = 1
local function take()  -- the next netstring of buf: <length>:<bytes>
  local colon = string.find(buf, ':', pos, true)
  local n = tonumber(string.sub(buf, pos, colon - 1))
  local s = string.sub(buf, colon + 1, colon + n)
  pos = colon + n + 1
  return s
end
local out = {}
while pos <= #buf do
  local kind, id, n = take(), take(), tonumber(take())
  local fields = {}
  for j = 1, 2 * n do fields[j] = take() end
  local acked = redis.call('XACK', stream, group, id)
  if acked == 1 and kind ~= 'a' then
    redis.call('XADD', kind == 'r' and results or dead, '*', unpack(fields))
  end
  out[#out + 1] = acked
end
return out
"""

# Plain acks, the ids joined by spaces in one argument: redis-py encodes every argument of a command in Python
# (~1 us each, measured 16 % of a trivial pipeline's time with one argument per id); one string is one.
ACK_JOINED = """
local ids = {}
for id in string.gmatch(ARGV[2], '%S+') do ids[#ids + 1] = id end
local acked = 0
for i = 1, #ids, 1000 do
  acked = acked + redis.call('XACK', KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
return acked
"""

RENEW = """
local stream, group, me = KEYS[1], ARGV[1], ARGV[2]
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if #p == 1 and p[1][2] == me then
    redis.call('XCLAIM', stream, group, me, 0, id, 'JUSTID')
  else
    lost[#lost + 1] = id
  end
end
return lost
"""

TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or #groups == 0 then return 0 end
local floor_ms, floor_seq = nil, nil
for _, g in ipairs(groups) do
  local info = {}
  for k = 1, #g, 2 do info[g[k]] = g[k + 1] end
  local ms, seq
  if tonumber(info['pending']) > 0 then
    local summary = redis.call('XPENDING', KEYS[1], info['name'])
    ms, seq = parse(summary[2])
  else
    ms, seq = parse(info['last-delivered-id'])
    seq = seq + 1
  end
  if floor_ms == nil or less(ms, seq, floor_ms, floor_seq) then floor_ms, floor_seq = ms, seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', floor_ms, floor_seq))
"""


def pack_records(records: list[tuple[str, str, list[object]]]) -> bytes:
    """``(kind, id, [field, value, ...])`` records as the netstrings ``ACK_AND_WRITE`` reads."""
    parts: list[bytes] = []
    append = parts.append
    for kind, eid, flat in records:
        for item in (kind, eid, str(len(flat) // 2), *flat):
            b = item if isinstance(item, bytes) else str(item).encode()
            append(b"%d:" % len(b))
            append(b)
    return b"".join(parts)

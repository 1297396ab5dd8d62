#include "contract.h"

#include <openssl/sha.h>

#include <cstdio>

#include "base64.h"
#include "ossl.h"

namespace mailapi::contract {

std::string message_key(std::string_view stream, std::string_view id) {
    std::string k;
    k.reserve(stream.size() + 1 + id.size());
    k.append(stream);
    k.push_back(':');
    k.append(id);
    return k;
}

std::string idempotency_key(std::string_view tenant, std::string_view key) {
    std::string k = "mailapi:idem:";
    k.append(tenant);
    k.push_back(':');
    k.append(key);
    return k;
}

std::string rate_key(std::string_view key_id) { return "mailapi:rate:" + std::string(key_id); }

std::string quota_key(std::string_view key_id, int64_t now_ms) {
    return "mailapi:quota:" + std::string(key_id) + ":" + std::to_string(now_ms / 86400000);
}

// KEYS: stream, message hash, idempotency key ("" = none), rate key, quota key
// ARGV: now_us, id, tenant, created_ms, send_at, envelope, fingerprint,
//       idempotency_ttl_ms, interval_us (0 = no rate limit), burst,
//       daily quota (0 = none), quota key ttl seconds, retention days (0 =
//       kept for ever; else `keep` in the hash and the entry), recipient keys
//       (space-separated, `rk` in the hash: an erasure finds the queued
//       messages of a recipient by them)
// Returns {0, id, rate_remaining, quota_remaining} accepted, {1, id} the same
// idempotency key and payload seen before, {2} the key with another payload,
// {3, retry_after_us} rate limited, {4} daily quota used up.
extern const char ENQUEUE_LUA[] = R"lua(
local now = tonumber(ARGV[1])
local idem = KEYS[3] ~= ''
if idem then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local fp, id = string.match(seen, '^(%S+) (%S+)$')
    if fp == ARGV[7] then return {1, id} end
    return {2}
  end
end
local quota = tonumber(ARGV[11])
local used = 0
if quota > 0 then
  used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if used >= quota then return {4} end
end
local interval = tonumber(ARGV[9])
local remaining = -1
local new_tat = 0
if interval > 0 then
  local window = interval * tonumber(ARGV[10])
  local tat = tonumber(redis.call('GET', KEYS[4]) or '0')
  if tat < now then tat = now end
  new_tat = tat + interval
  if new_tat - now > window then return {3, math.ceil(new_tat - now - window)} end
  remaining = math.floor((window - (new_tat - now)) / interval)
end
redis.call('HSET', KEYS[2], 'tenant', ARGV[3], 'created', ARGV[4], 'send_at', ARGV[5], 'env', ARGV[6], 'rk', ARGV[14])
local entry = {'id', ARGV[2], 'tenant', ARGV[3], 'created', ARGV[4], 'send_at', ARGV[5], 'attempt', '0', 'gen', '0',
               'size', tostring(#ARGV[6])}
local keep = ARGV[13] or '0'
if keep ~= '0' then
  redis.call('HSET', KEYS[2], 'keep', keep)
  entry[#entry + 1] = 'keep'; entry[#entry + 1] = keep
end
redis.call('XADD', KEYS[1], '*', unpack(entry))
if interval > 0 then
  redis.call('SET', KEYS[4], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
local quota_left = -1
if quota > 0 then
  used = redis.call('INCR', KEYS[5])
  if used == 1 then redis.call('EXPIRE', KEYS[5], ARGV[12]) end
  quota_left = quota - used
end
if idem then redis.call('SET', KEYS[3], ARGV[7] .. ' ' .. ARGV[2], 'PX', ARGV[8]) end
return {0, ARGV[2], remaining, quota_left}
)lua";

// What ENQUEUE_LUA writes after its checks, field for field: keep the two
// alike (t/e2e/test_enqueue.py compares them).
void enqueue_plain(const EnqueuePlain &e, Argv &hset, Argv &xadd) {
    hset.argc = xadd.argc = 0;
    for (std::string_view a : {std::string_view("HSET"), e.hash, std::string_view(field::TENANT), e.tenant,
                               std::string_view(field::CREATED), e.created, std::string_view(field::SEND_AT), e.send_at,
                               std::string_view(field::ENVELOPE), e.envelope, std::string_view(field::RECIPIENT_KEYS), e.recipients}) {
        hset.add(a);
    }
    for (std::string_view a : {std::string_view("XADD"), e.stream, std::string_view("*"), std::string_view(field::ID),
                               e.id, std::string_view(field::TENANT), e.tenant, std::string_view(field::CREATED),
                               e.created, std::string_view(field::SEND_AT), e.send_at, std::string_view(field::ATTEMPT),
                               std::string_view("0"), std::string_view(field::GEN), std::string_view("0"),
                               std::string_view(field::SIZE), e.size}) {
        xadd.add(a);
    }
    if (!e.keep.empty()) {
        hset.add(field::KEEP);
        hset.add(e.keep);
        xadd.add(field::KEEP);
        xadd.add(e.keep);
    }
}

// KEYS: stream, message hash. ARGV: group, entry id.
// After the terminal outcome is in the store: nothing of the message stays.
extern const char ACK_LUA[] = R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return 1
)lua";

// KEYS: stream, scheduled set, message hash. ARGV: group, entry id, due ms,
// attempt, message id, done (recipients finished, "" = none), consumer. The
// hash stays, free for whichever consumer reads it when it is due; the set
// holds the id until then. The SENT marker goes: what it said is in `done`
// now. A hash already gone (finished by another consumer) schedules nothing.
// A live lease of another consumer (which took it over from this one,
// stopped or cut off past claim_idle, and is sending it) changes nothing:
// returns 0.
extern const char DEFER_LUA[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', KEYS[3], 'owner', 'lease')
if l[1] and l[1] ~= ARGV[7] and tonumber(l[2] or '0') > now then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HDEL', KEYS[3], 'owner', 'lease', 'sent')
  redis.call('HSET', KEYS[3], 'attempt', ARGV[4])
  if ARGV[6] ~= '' then redis.call('HSET', KEYS[3], 'done', ARGV[6]) end
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[5])
end
return 1
)lua";

// KEYS: stream, scheduled set. ARGV: now ms, at most this many.
// Due ids go back onto the stream, atomically, whichever instance runs it.
extern const char MOVE_LUA[] = R"lua(
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local key = KEYS[1] .. ':' .. id
  local h = redis.call('HMGET', key, 'tenant', 'created', 'send_at', 'attempt', 'gen', 'since', 'done', 'keep')
  if h[1] then
    local entry = {'id', id, 'tenant', h[1], 'created', h[2], 'send_at', h[3], 'attempt', h[4] or '0',
                   'gen', h[5] or '0', 'size', tostring(redis.call('HSTRLEN', key, 'env'))}
    if h[6] then entry[#entry + 1] = 'since'; entry[#entry + 1] = h[6] end
    if h[7] then entry[#entry + 1] = 'done'; entry[#entry + 1] = h[7] end
    if h[8] then entry[#entry + 1] = 'keep'; entry[#entry + 1] = h[8] end
    redis.call('XADD', KEYS[1], '*', unpack(entry))
  end
  redis.call('ZREM', KEYS[2], id)
end
return #due
)lua";

// KEYS: stream, dead-letter stream. ARGV: group, entry id, most dead letters
// kept, done (recipients finished, "" = none: a replay sends to the others
// only), consumer, then the dead letter's fields and values, "id" and the
// message id first. The hash, if it is still there, is marked dead until a
// replay. Past the bound the oldest dead letters go with their hashes
// (their records already say failed). Returns how many were dropped; -1
// (and nothing changed) when another consumer holds a live lease on the
// message (as DEFER_LUA).
extern const char DEAD_LUA[] = R"lua(
local key = KEYS[1] .. ':' .. ARGV[7]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local l = redis.call('HMGET', key, 'owner', 'lease')
if l[1] and l[1] ~= ARGV[5] and tonumber(l[2] or '0') > now then return -1 end
if redis.call('EXISTS', key) == 1 then
  redis.call('HDEL', key, 'owner', 'lease')
  redis.call('HSET', key, 'dead', '1')
  if ARGV[4] ~= '' then redis.call('HSET', key, 'done', ARGV[4]) end
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 6))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local dropped = 0
local over = redis.call('XLEN', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', math.min(over, 100))) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'id' then redis.call('DEL', KEYS[1] .. ':' .. f[i + 1]) end
    end
    redis.call('XDEL', KEYS[2], e[1])
    dropped = dropped + 1
  end
end
return dropped
)lua";

// KEYS: stream, dead-letter stream. ARGV: at most this many (the caller runs
// it in batches: one script blocks Redis while it runs), now ms.
// Oldest first; each comes back as a new generation with a fresh attempt
// count and age; a dead letter of a generation already replayed (a copy) is
// only removed. Returns {put back, looked at}.
extern const char REPLAY_LUA[] = R"lua(
local n, seen = 0, 0
for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', tonumber(ARGV[1]))) do
  seen = seen + 1
  local f, id, gen = e[2], nil, '0'
  for i = 1, #f, 2 do
    if f[i] == 'id' then id = f[i + 1] elseif f[i] == 'gen' then gen = f[i + 1] end
  end
  local key = KEYS[1] .. ':' .. (id or '')
  if id and redis.call('EXISTS', key) == 1 and (redis.call('HGET', key, 'gen') or '0') == gen then
    local gen = redis.call('HINCRBY', key, 'gen', 1)
    redis.call('HSET', key, 'attempt', '0', 'since', ARGV[2])
    redis.call('HDEL', key, 'owner', 'lease', 'sent', 'dead')
    local h = redis.call('HMGET', key, 'tenant', 'created', 'send_at', 'done', 'keep')
    local entry = {'id', id, 'tenant', h[1], 'created', h[2], 'send_at', h[3], 'attempt', '0',
                   'gen', tostring(gen), 'since', ARGV[2], 'size', tostring(redis.call('HSTRLEN', key, 'env'))}
    if h[4] then entry[#entry + 1] = 'done'; entry[#entry + 1] = h[4] end
    if h[5] then entry[#entry + 1] = 'keep'; entry[#entry + 1] = h[5] end
    redis.call('XADD', KEYS[1], '*', unpack(entry))
    n = n + 1
  end
  redis.call('XDEL', KEYS[2], e[1])
end
return {n, seen}
)lua";

// KEYS: stream. ARGV: group, idle ms, this consumer's name.
// A consumer with nothing pending that has been quiet that long is gone (a
// live one reads every second and would be re-created by its next read).
// Checked and deleted in one script: a consumer never loses pending entries.
extern const char REAP_LUA[] = R"lua(
local n = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending, idle
  for i = 1, #c, 2 do
    if c[i] == 'name' then name = c[i + 1]
    elseif c[i] == 'pending' then pending = c[i + 1]
    elseif c[i] == 'idle' then idle = c[i + 1] end
  end
  if pending == 0 and idle > tonumber(ARGV[2]) and name ~= ARGV[3] then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
    n = n + 1
  end
end
return n
)lua";

// KEYS: message hash. ARGV: consumer, lease ms.
// {0}: gone (finished); {1, owner}: another consumer holds a live lease on it
// (it is being sent: a re-read entry, a lost group, a copy); {3, env}:
// cancelled (record it so, send nothing); {2, env, sent}: this consumer
// holds it now, `sent` is the SENT marker or "".
// Leases are in Redis's time (ms), never a consumer's: an instance whose
// clock is off neither keeps a message from the others when it dies nor
// takes one whose holder lives.
extern const char TAKE_LUA[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'owner', 'lease', 'sent', 'cancelled')
if h[1] and h[1] ~= ARGV[1] and tonumber(h[2] or '0') > now then return {1, h[1]} end
if h[4] then return {3, redis.call('HGET', KEYS[1], 'env')} end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease', string.format('%.0f', now + tonumber(ARGV[2])))
return {2, redis.call('HGET', KEYS[1], 'env'), h[3] or ''}
)lua";

// KEYS: message hashes. ARGV: consumer, lease ms. Renews the leases this
// consumer still holds, to that long from now in Redis's time (TAKE_LUA);
// returns how many.
extern const char RENEW_LUA[] = R"lua(
local t = redis.call('TIME')
local until_ms = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]))
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('HGET', key, 'owner') == ARGV[1] then
    redis.call('HSET', key, 'lease', until_ms)
    n = n + 1
  end
end
return n
)lua";

// KEYS: message hash. ARGV: marker ("<gen> <provider> <code> <ms> <recipients>",
// the recipients the providers took in this attempt, by index: "0,2").
// Between a provider taking a message and its record, a takeover records it
// instead of sending it again. Never makes a hash that is gone.
extern const char SENT_LUA[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'sent', ARGV[1])
return 1
)lua";

// KEYS: events stream, Mailgun token key or "". ARGV: token TTL s, source,
// then (message id, sealed event) pairs. A token seen before refuses the
// whole request ({-1}); else every event is added: {n}.
extern const char EVENTS_IN_LUA[] = R"lua(
if KEYS[2] ~= '' and not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then return {-1} end
local n = 0
for i = 3, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'src', ARGV[2], 'mid', ARGV[i], 'env', ARGV[i + 1])
  n = n + 1
end
return {n}
)lua";

// KEYS: events stream. ARGV: group, entry id.
extern const char EVENT_DONE_LUA[] = R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
)lua";

std::string events_stream(std::string_view stream) { return std::string(stream) + ":events"; }

std::string event_aad(std::string_view source, std::string_view message_id) {
    std::string aad("mailapi-v1\0event\0", 17);
    aad.append(source);
    aad.push_back('\0');
    aad.append(message_id);
    return aad;
}

std::string mailgun_token_key(std::string_view stream, std::string_view source, std::string_view token) {
    return std::string(stream) + ":mgtoken:" + std::string(source) + ":" + std::string(token);
}

// KEYS: message hash, scheduled set, stream. ARGV: tenant, (unused), message id.
// Leases are compared in Redis's time, as TAKE stamps them.
// {0}: not accepted-and-unfinished (or another tenant's): the store says
// what it is; {1}: cancelled (now, or before); {2}: too late: a consumer is
// sending it, a provider took it for someone, or it was given up. Atomic
// with TAKE: a message either is taken to be sent, or is cancelled, never
// both. A scheduled one gets an entry at once, for its record.
extern const char CANCEL_LUA[] = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local h = redis.call('HMGET', KEYS[1], 'tenant', 'owner', 'lease', 'sent', 'done', 'dead', 'cancelled')
if h[1] ~= ARGV[1] then return {0} end
if h[7] then return {1} end
if h[4] or h[6] or (h[5] and string.find(h[5], '%d,') ~= nil) or (h[5] and string.find(h[5], '%d$') ~= nil) then
  return {2}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if h[2] and tonumber(h[3] or '0') > now then return {2} end
redis.call('HSET', KEYS[1], 'cancelled', string.format('%.0f', now))
if redis.call('ZREM', KEYS[2], ARGV[3]) == 1 then
  local m = redis.call('HMGET', KEYS[1], 'tenant', 'created', 'attempt', 'gen', 'since', 'keep')
  local entry = {'id', ARGV[3], 'tenant', m[1], 'created', m[2], 'send_at', '0', 'attempt', m[3] or '0',
                 'gen', m[4] or '0', 'size', tostring(redis.call('HSTRLEN', KEYS[1], 'env'))}
  if m[5] then entry[#entry + 1] = 'since'; entry[#entry + 1] = m[5] end
  if m[6] then entry[#entry + 1] = 'keep'; entry[#entry + 1] = m[6] end
  redis.call('XADD', KEYS[3], '*', unpack(entry))
end
return {1}
)lua";

std::string webhook_set_key(std::string_view stream, std::string_view tenant) {
    return std::string(stream) + ":wh:" + std::string(tenant);
}
std::string webhook_key(std::string_view stream, std::string_view endpoint) {
    return std::string(stream) + ":whe:" + std::string(endpoint);
}
std::string webhook_log_key(std::string_view stream, std::string_view endpoint) {
    return std::string(stream) + ":whlog:" + std::string(endpoint);
}
std::string webhooks_stream(std::string_view stream) { return std::string(stream) + ":webhooks"; }
std::string webhook_retry_key(std::string_view stream) { return std::string(stream) + ":whretry"; }
std::string webhook_aad(std::string_view tenant, std::string_view what) {
    std::string aad("mailapi-v1\0webhook\0", 19);
    aad.append(tenant);
    aad.push_back('\0');
    aad.append(what);
    return aad;
}

// ---------------------------------------------------------------- suppression

std::string suppression_key(std::string_view stream, std::string_view tenant) {
    return std::string(stream) + ":supp:" + std::string(tenant);
}

std::string suppression_time_key(std::string_view stream, std::string_view tenant) {
    return std::string(stream) + ":suppt:" + std::string(tenant);
}

std::string suppression_aad(std::string_view tenant, std::string_view rkey) {
    std::string aad("mailapi-v1\0suppression\0", 23);
    aad.append(tenant);
    aad.push_back('\0');
    aad.append(rkey);
    return aad;
}

bool suppression_reason_valid(std::string_view r) {
    return r == reason::BOUNCED || r == reason::COMPLAINED || r == reason::UNSUBSCRIBED || r == reason::MANUAL ||
           r == reason::ERASED;
}

// KEYS: hash, sorted set. ARGV: at ms, reason, most entries, replace (1: a
// new reason and time for those already there), then pairs of recipient key
// and sealed address (base64). {added, there already (kept as they were
// unless replaced), refused because the tenant's list is full}.
extern const char SUPP_ADD_LUA[] = R"lua(
local added, kept, full = 0, 0, 0
local size = redis.call('HLEN', KEYS[1])
for i = 5, #ARGV, 2 do
  local old = redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1
  if old and ARGV[4] ~= '1' then
    kept = kept + 1
  elseif not old and size >= tonumber(ARGV[3]) then
    full = full + 1
  else
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[i + 1])
    redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
    if old then kept = kept + 1 else added = added + 1; size = size + 1 end
  end
end
return {added, kept, full}
)lua";

// KEYS: hash, sorted set. ARGV: recipient keys. How many were removed.
extern const char SUPP_DEL_LUA[] = R"lua(
local n = 0
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  n = n + redis.call('HDEL', KEYS[1], ARGV[i])
end
return n
)lua";

// KEYS: hash, sorted set. ARGV: before (at ms of the cursor, "+inf" for the
// newest), cursor key ("" for none), limit. Entries older than the cursor
// (or as old, with a smaller key), newest first: {key, value, key, value...}.
extern const char SUPP_LIST_LUA[] = R"lua(
local limit = tonumber(ARGV[3])
local out = {}
local offset = 0
while #out < 2 * limit do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[1], '-inf', 'WITHSCORES', 'LIMIT', offset, limit + 1)
  if #page == 0 then break end
  for i = 1, #page, 2 do
    local k, at = page[i], page[i + 1]
    if ARGV[2] == '' or tonumber(at) < tonumber(ARGV[1]) or k < ARGV[2] then
      local v = redis.call('HGET', KEYS[1], k)
      if v then
        out[#out + 1] = k
        out[#out + 1] = v
        if #out >= 2 * limit then break end
      end
    end
  end
  offset = offset + (#page / 2)
  if #page / 2 < limit + 1 then break end
end
return out
)lua";

// ---------------------------------------------------------------- links

std::string link_key(std::string_view stream, char kind, std::string_view message_id, int rcpt) {
    return std::string(stream) + ":link:" + kind + ":" + std::string(message_id) + ":" + std::to_string(rcpt);
}

// KEYS: link key, events stream. ARGV: what it records, seconds until the
// link expires, source, message id, sealed event. {1} the first use (its
// event queued), {0, what the first recorded} a repeat.
extern const char LINK_ONCE_LUA[] = R"lua(
local was = redis.call('GET', KEYS[1])
if was then return {0, was} end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'src', ARGV[3], 'mid', ARGV[4], 'env', ARGV[5])
return {1}
)lua";

// KEYS: tenant's set, endpoint hash. ARGV: tenant, id, url, types, sealed
// secrets, created ms, most endpoints. {1} made, {0} the tenant has enough.
extern const char WH_CREATE_LUA[] = R"lua(
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[7]) then return {0} end
redis.call('SADD', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'tenant', ARGV[1], 'url', ARGV[3], 'types', ARGV[4], 'secrets', ARGV[5],
           'created', ARGV[6], 'disabled', '')
return {1}
)lua";

// KEYS: endpoint hash. ARGV: tenant, then field/value pairs ("" deletes).
// {0} not the tenant's (or none), {1} set.
extern const char WH_SET_LUA[] = R"lua(
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return {0} end
for i = 2, #ARGV, 2 do
  if ARGV[i + 1] == '' and ARGV[i] ~= 'disabled' then redis.call('HDEL', KEYS[1], ARGV[i])
  else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return {1}
)lua";

// KEYS: endpoint hash. ARGV: tenant, the sealed secrets read, the new ones.
// {0} not the tenant's, {2} another rotation wrote since they were read,
// {1} set. (Read, changed and written back, a rotation would otherwise
// drop the secret an overlapping one just handed out.)
extern const char WH_ROTATE_LUA[] = R"lua(
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[1] then return {0} end
if (redis.call('HGET', KEYS[1], 'secrets') or '') ~= ARGV[2] then return {2} end
redis.call('HSET', KEYS[1], 'secrets', ARGV[3])
return {1}
)lua";

// KEYS: tenant's set, endpoint hash, its log. ARGV: tenant, id.
// Its deliveries still queued find it gone and are dropped.
extern const char WH_DELETE_LUA[] = R"lua(
if redis.call('HGET', KEYS[2], 'tenant') ~= ARGV[1] then return {0} end
redis.call('SREM', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return {1}
)lua";

// KEYS: tenant's set. ARGV: endpoint hash prefix. Per endpoint: {id, url,
// types, created, disabled, failing_since}.
extern const char WH_LIST_LUA[] = R"lua(
local out = {}
for _, ep in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. ep, 'url', 'types', 'created', 'disabled', 'failing_since')
  if h[1] then out[#out + 1] = {ep, h[1], h[2], h[3], h[4] or '', h[5] or ''} end
end
return out
)lua";

// KEYS: endpoint hash, its log. ARGV: tenant, how many log lines.
// {} not the tenant's; else {url, types, created, disabled, failing_since,
// secrets (sealed), {log lines}}.
extern const char WH_GET_LUA[] = R"lua(
local h = redis.call('HMGET', KEYS[1], 'tenant', 'url', 'types', 'created', 'disabled', 'failing_since', 'secrets')
if h[1] ~= ARGV[1] then return {} end
return {h[2], h[3], h[4], h[5] or '', h[6] or '', h[7] or '', redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)}
)lua";

// KEYS: tenant's set, webhooks stream. ARGV: endpoint hash prefix
// ("<stream>:whe:"), then (event id, type, sealed payload) triples. One
// delivery an endpoint that is enabled and wants the type. Returns how many.
extern const char WH_FANOUT_LUA[] = R"lua(
local n = 0
for _, ep in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local h = redis.call('HMGET', ARGV[1] .. ep, 'types', 'disabled')
  if h[1] and (h[2] == false or h[2] == '') then
    for i = 2, #ARGV, 3 do
      local wanted = h[1] == '*'
      if not wanted then
        for t in string.gmatch(h[1], '[^,]+') do if t == ARGV[i + 1] then wanted = true end end
      end
      if wanted then
        redis.call('XADD', KEYS[2], '*', 'ep', ep, 'eid', ARGV[i], 'type', ARGV[i + 1], 'attempt', '0',
                   'env', ARGV[i + 2])
        n = n + 1
      end
    end
  end
end
return n
)lua";

// KEYS: webhooks stream, retry set, endpoint hash, its log. ARGV: group,
// entry id, due ms, member (ep, eid, type, attempt, env joined by "\n"; env
// last, as it is binary), the attempt as JSON, most log lines, now ms, most
// deliveries an endpoint may have waiting ("waiting" counts those in the
// retry set; past it the endpoint is disabled, so that one down for long
// does not keep all its tenant's traffic in Redis; once disabled, none is
// kept).
extern const char WH_DEFER_LUA[] = R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local disabled = redis.call('HGET', KEYS[3], 'disabled')
if (disabled == false or disabled == '') and redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) == 1 then
  if redis.call('HINCRBY', KEYS[3], 'waiting', 1) > tonumber(ARGV[8]) then
    redis.call('HSET', KEYS[3], 'disabled', 'more than ' .. ARGV[8] .. ' deliveries waiting for a retry')
  end
end
redis.call('LPUSH', KEYS[4], ARGV[5])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
if not redis.call('HGET', KEYS[3], 'failing_since') then redis.call('HSET', KEYS[3], 'failing_since', ARGV[7]) end
return 1
)lua";

// KEYS: webhooks stream, retry set, endpoint hash. ARGV: group, entry id,
// due ms, member (as WH_DEFER's, its attempt unchanged).
extern const char WH_LATER_LUA[] = R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
if redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4]) == 1 then redis.call('HINCRBY', KEYS[3], 'waiting', 1) end
return 1
)lua";

// KEYS: webhooks stream, retry set. ARGV: now ms, at most this many,
// endpoint hash prefix ("<stream>:whe:").
extern const char WH_MOVE_LUA[] = R"lua(
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  local f, pos = {}, 1
  for i = 1, 4 do
    local nl = string.find(m, '\n', pos, true)
    if not nl then break end
    f[i] = string.sub(m, pos, nl - 1)
    pos = nl + 1
  end
  if #f == 4 then
    redis.call('XADD', KEYS[1], '*', 'ep', f[1], 'eid', f[2], 'type', f[3], 'attempt', f[4],
               'env', string.sub(m, pos))
    local ep = ARGV[3] .. f[1]
    if tonumber(redis.call('HGET', ep, 'waiting') or '0') > 0 then redis.call('HINCRBY', ep, 'waiting', -1) end
  end
  redis.call('ZREM', KEYS[2], m)
end
return #due
)lua";

// KEYS: webhooks stream, endpoint hash, its log. ARGV: group, entry id, the
// attempt as JSON, most log lines, outcome ("ok", "failed" or "disable"),
// the reason (for "disable"), now ms.
extern const char WH_DONE_LUA[] = R"lua(
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('LPUSH', KEYS[3], ARGV[3])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
if ARGV[5] == 'ok' then
  redis.call('HDEL', KEYS[2], 'failing_since')
elseif ARGV[5] == 'failed' then
  if not redis.call('HGET', KEYS[2], 'failing_since') then redis.call('HSET', KEYS[2], 'failing_since', ARGV[7]) end
else
  redis.call('HSET', KEYS[2], 'disabled', ARGV[6])
end
return 1
)lua";

std::string script_sha(const char *script) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char *>(script), std::char_traits<char>::length(script), md);
    char hex[2 * SHA_DIGEST_LENGTH + 1];
    for (size_t i = 0; i < sizeof md; i++) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
    return hex;
}

std::string event_id_queued() { return "q"; }

std::string event_id_provider_failed(int gen, int attempt, int index) {
    return "g" + std::to_string(gen) + "a" + std::to_string(attempt) + "p" + std::to_string(index);
}

std::string event_id_deferred(int gen, int attempt) {
    return "g" + std::to_string(gen) + "a" + std::to_string(attempt) + "d";
}

std::string event_id_terminal(int gen) { return "t" + std::to_string(gen); }

std::string event_id_recipient(int gen, int attempt, size_t index, char what) {
    std::string id = "g" + std::to_string(gen);
    if (what == 'd') id += "a" + std::to_string(attempt);  // deferred: once per attempt; sent, failed: once
    return id + "r" + std::to_string(index) + what;
}

bool is_terminal_type(std::string_view type) {
    return type == event::SENT || type == event::FAILED || type == event::CANCELLED || type == event::SUPPRESSED;
}

bool is_recipient_type(std::string_view type) {
    return type == event::RECIPIENT_SENT || type == event::RECIPIENT_FAILED || type == event::RECIPIENT_DEFERRED ||
           type == event::RECIPIENT_SUPPRESSED;
}

RecipientsDone done_parse(std::string_view text) {
    RecipientsDone d;
    size_t start = 0;
    while (start < text.size()) {
        size_t comma = text.find(',', start);
        std::string_view item = text.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
        bool refused = !item.empty() && item.back() == 'x';
        if (refused) item.remove_suffix(1);
        size_t n = 0;
        bool ok = !item.empty() && item.size() <= 6;
        for (char c : item) {
            ok &= c >= '0' && c <= '9';
            n = n * 10 + static_cast<size_t>(c - '0');
        }
        if (ok) (refused ? d.refused : d.sent).push_back(n);
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return d;
}

std::string done_format(const RecipientsDone &d) {
    std::string out;
    for (size_t i : d.sent) out += (out.empty() ? "" : ",") + std::to_string(i);
    for (size_t i : d.refused) out += (out.empty() ? "" : ",") + std::to_string(i) + "x";
    return out;
}

int terminal_generation(std::string_view id) {
    if (id.size() < 2 || id.size() > 10 || id[0] != 't') return -1;
    int gen = 0;
    for (char c : id.substr(1)) {
        if (c < '0' || c > '9') return -1;
        gen = gen * 10 + (c - '0');
    }
    return gen;
}

std::string recipient_key(const Keyring &ring, std::string_view tenant, std::string_view addr) {
    unsigned char md[32];
    std::string_view key(reinterpret_cast<const char *>(ring.index_key.data()), ring.index_key.size());
    if (!hmac_sha256(key, {tenant, std::string_view("\0", 1), addr}, md)) return "";
    return base64url_encode(std::string_view(reinterpret_cast<char *>(md), 16));
}

std::string Bucket::key() const {
    if (level < 0) return rkey;
    std::string k = rkey;
    k.push_back('.');
    k.push_back(LEVEL[level].tag);
    k.append(std::to_string(n));
    return k;
}

int64_t Bucket::start_ms() const { return level < 0 ? 0 : n * LEVEL[level].span_ms; }

int64_t Bucket::end_ms() const { return level < 0 ? INT64_MAX : (n + 1) * LEVEL[level].span_ms; }

Bucket Bucket::parent() const {
    if (level <= 0) return Bucket{rkey, -1, 0};
    return Bucket{rkey, level - 1, start_ms() / LEVEL[level - 1].span_ms};
}

Bucket Bucket::child_at(int64_t ms) const { return Bucket{rkey, level + 1, ms / LEVEL[level + 1].span_ms}; }

void bucket_keys(std::string_view rkey, int64_t created_ms, std::vector<std::string> &out) {
    Bucket b{std::string(rkey), -1, 0};
    out.push_back(b.key());
    for (int l = 0; l < LEVELS; l++) {
        b = b.child_at(created_ms);
        out.push_back(b.key());
    }
}

std::string hint_id(std::string_view tenant, const Bucket &b) { return std::string(tenant) + "." + b.key(); }

std::string hint_parent(std::string_view tenant, const Bucket &b) {
    return std::string(tenant) + "." + b.parent().key();
}

std::string summary_aad(std::string_view tenant, std::string_view message_id) {
    std::string aad = envelope_aad(tenant, message_id);
    aad.append(std::string_view("\0summary", 8));
    return aad;
}

int64_t message_id_time_ms(std::string_view id) {
    if (!message_id_valid(id)) return -1;
    // 26 Crockford digits hold 2 pad bits, 48 bits of time, 80 random bits.
    static const char digits[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    uint64_t acc = 0;
    for (size_t i = 4; i < 4 + 10; i++) {  // 10 digits = 50 bits: 2 pad + 48 time
        acc = (acc << 5) | static_cast<uint64_t>(std::char_traits<char>::find(digits, 32, id[i]) - digits);
    }
    return static_cast<int64_t>(acc & ((1ULL << 48) - 1));
}

// ---------------------------------------------------------------- retention

std::string retention_lock_key(std::string_view stream) { return std::string(stream) + ":retention:lock"; }
std::string retention_cursor_key(std::string_view stream) { return std::string(stream) + ":retention:cursor"; }

int64_t expiry_ms(int64_t created_ms, int64_t keep_days) {
    return keep_days > 0 ? created_ms + keep_days * DAY_MS : 0;
}

// KEYS: the lock. ARGV: its holder. Lets go of the lock only if it is still
// this holder's (one that took longer than the lock's time finds another's).
extern const char RETENTION_UNLOCK_LUA[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua";

}  // namespace mailapi::contract

// The contract between ngx_mail_api_module and deliveryd, in one place: the
// Redis keys and stream entry fields, the Lua scripts with their arguments,
// the statuses and event ids, and the time buckets that make a recipient's
// messages an indexed lookup. docs/storage.md describes all of it; the store's
// documents themselves are built and read in records.h.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "crypto.h"

namespace mailapi::contract {

// ---------------------------------------------------------------- Redis
//
// The stream (mail_api_redis_stream, deliveryd's `stream`) holds one small
// entry per message to work on; the message itself is a hash beside it,
// "<stream>:<id>", from acceptance until its terminal outcome is recorded
// (or it is dropped from the dead letters). Its existence is what "accepted
// and not finished" means, for GET /v1/messages/{id} too.
std::string message_key(std::string_view stream, std::string_view id);

// The other keys (docs/storage.md, "Redis"). Tenants and key ids are
// [A-Za-z0-9_-], so no two of them make one key.
constexpr char DEFAULT_STREAM[] = "mailapi:messages";  // mail_api_redis_stream, deliveryd's `stream`
constexpr char DEFAULT_GROUP[] = "deliveryd";
constexpr char DEFAULT_SCHEDULED[] = "mailapi:scheduled";  // deliveryd's `scheduled`
constexpr char DEFAULT_DEAD_LETTERS[] = "mailapi:dead";    // deliveryd's `dead_letters`
std::string idempotency_key(std::string_view tenant, std::string_view key);  // mailapi:idem:<tenant>:<key>
std::string rate_key(std::string_view key_id);                               // mailapi:rate:<key id>
std::string quota_key(std::string_view key_id, int64_t now_ms);              // mailapi:quota:<key id>:<UTC day>
constexpr int64_t QUOTA_KEY_TTL_S = 2 * 86400;                                // a day's counter outlives it by a day

namespace field {
// In the stream entry (all but env, error) and in the message hash (all but
// id, size, error; attempt, gen and since only once changed from their
// defaults 0, 0 and created).
constexpr char ID[] = "id";            // message id
constexpr char TENANT[] = "tenant";
constexpr char CREATED[] = "created";  // unix ms of acceptance (the id's time)
constexpr char SEND_AT[] = "send_at";  // unix s, 0 = now
constexpr char ATTEMPT[] = "attempt";  // sends tried in this generation
constexpr char GEN[] = "gen";          // 0, then +1 on each replay of a dead letter
constexpr char SINCE[] = "since";      // unix ms this generation began (max_age counts from it)
constexpr char SIZE[] = "size";        // bytes of env: deliveryd budgets memory before fetching it
constexpr char ENVELOPE[] = "env";     // the sealed message (binary)
constexpr char ERROR[] = "error";      // dead letters: why
// In the hash only: the message's recipient keys (recipient_key),
// space-separated; DELETE /v1/recipients finds a recipient's queued mail by them.
constexpr char RECIPIENT_KEYS[] = "rk";
// In the hash only, while a deliveryd works on the message:
constexpr char OWNER[] = "owner";      // the consumer working on it
constexpr char LEASE[] = "lease";      // unix ms until which that holds (renewed while it works)
constexpr char SENT[] = "sent";        // "<gen> <provider> <code> <ms> <recipients>": providers took it (those
                                       // recipients, by index), the record may not be written yet
// In the hash and the entry, once some recipients are finished and others
// are not (an SMTP relay took or refused some): their indices into
// message_envelope_recipients, "x" after a refused one ("0,2x"); later
// attempts and replays send to the others only.
constexpr char DONE[] = "done";
// In the hash only, while its dead letter waits (set by DEAD, cleared by
// REPLAY): the record says failed, whatever the hash's existence suggests.
constexpr char DEAD[] = "dead";
// In the hash only, once DELETE /v1/messages/{id} cancelled it (unix ms):
// the next consumer to take it records it cancelled and sends nothing.
constexpr char CANCELLED[] = "cancelled";
// In the hash and the entry of a tenant with a retention (the keys file's
// retention=Nd): days its records are kept, counted from `created`.
constexpr char KEEP[] = "keep";
}  // namespace field

// The recipients a message has finished with (field::DONE).
struct RecipientsDone {
    std::vector<size_t> sent, refused;
};
RecipientsDone done_parse(std::string_view text);
std::string done_format(const RecipientsDone &d);
// The longest done_format can make: 1000 recipients (mail_api_max_recipients'
// bound), each "NNNx," at most.
constexpr size_t DONE_MAX = 1000 * 5;

// Every script's KEYS and ARGV are listed above it in contract.cpp.
extern const char ENQUEUE_LUA[];  // module: idempotency, rate, quota, then the hash and the entry
// A send whose key has no idempotency key, rate or daily quota needs none of
// ENQUEUE_LUA's checks: the module writes what the script would, the hash
// then the entry, as HSET and XADD inside the MULTI/EXEC it sends each loop
// turn's sends in (no Lua: copying the envelope into the script and out of
// it again costs as much as the writes themselves).
struct EnqueuePlain {
    std::string_view stream, hash, id, tenant, created, send_at, envelope, size, recipients;
    std::string_view keep;  // retention days, "" = none
};
// A command's arguments, views into what it was built from.
struct Argv {
    static constexpr int MAX = 20;
    const char *argv[MAX];
    size_t lens[MAX];
    int argc = 0;
    void add(std::string_view s) {
        argv[argc] = s.data();
        lens[argc++] = s.size();
    }
};
void enqueue_plain(const EnqueuePlain &e, Argv &hset, Argv &xadd);
extern const char ACK_LUA[];      // terminal outcome recorded: the entry and the hash go
extern const char DEFER_LUA[];    // retry or send_at: the entry goes, the id waits in the scheduled set
extern const char MOVE_LUA[];     // due ids back onto the stream
extern const char DEAD_LUA[];     // given up: the entry goes, a dead letter keeps the hash
extern const char REPLAY_LUA[];   // dead letters back onto the stream as a new generation
extern const char REAP_LUA[];     // consumers that died with nothing pending leave the group
extern const char TAKE_LUA[];     // a consumer takes a message to send: its envelope, unless another holds it
extern const char RENEW_LUA[];    // a consumer renews the leases of the messages it works on
extern const char SENT_LUA[];     // a provider took it: remembered until the record is written
extern const char CANCEL_LUA[];   // module: cancel a message no consumer is sending and nobody got yet
// Not scripts: deliveryd reads with XREADGROUP, takes over a dead consumer's
// entries with XAUTOCLAIM after claim_idle, and keeps the idle time of the
// entries it still works on low with XCLAIM ... JUSTID, so that a slow send is
// never taken over by another instance.

// ---------------------------------------------------------------- provider events
//
// The providers' events the module took (POST /v1/events/{source}) wait
// for deliveryd on a stream of their own, "<stream>:events": one entry an
// event, {src, mid, env}: the source's name, our message id, and the
// normalised event (pevents::event_to_json) sealed under event_aad.
std::string events_stream(std::string_view stream);
std::string event_aad(std::string_view source, std::string_view message_id);
namespace field {
constexpr char SRC[] = "src";
constexpr char MID[] = "mid";
}  // namespace field
// Mailgun's tokens seen lately: "<stream>:mgtoken:<source>:<token>", kept as
// long as a signed timestamp is taken (a replay within it is refused).
std::string mailgun_token_key(std::string_view stream, std::string_view source, std::string_view token);
extern const char EVENTS_IN_LUA[];  // module: a request's events onto the stream (and its Mailgun token, once)
extern const char EVENT_DONE_LUA[]; // deliveryd: an event is in its timeline: its entry goes

// ---------------------------------------------------------------- webhooks out
//
// A tenant's endpoints (managed by the module, POST /v1/webhooks...):
//   "<stream>:wh:<tenant>"      set of its endpoint ids
//   "<stream>:whe:<endpoint>"   hash: tenant, url, types ("*" or a list),
//                               secrets (sealed, webhook_aad: the secrets, one a
//                               line, "<secret> <expires ms or 0>"), created,
//                               disabled (why; empty: enabled), failing_since (ms)
//   "<stream>:whlog:<endpoint>" list of its latest deliveries (JSON, newest first)
// What is to be delivered (deliveryd: the timeline's events, fanned out):
//   "<stream>:webhooks"         stream, group as the messages': {ep, eid, type, attempt, env}
//                               env: the sealed payload (webhook_aad of the event)
//   "<stream>:whretry"          sorted set, score = due ms: deliveries to try again
std::string webhook_set_key(std::string_view stream, std::string_view tenant);
std::string webhook_key(std::string_view stream, std::string_view endpoint);
std::string webhook_log_key(std::string_view stream, std::string_view endpoint);
std::string webhooks_stream(std::string_view stream);
std::string webhook_retry_key(std::string_view stream);
std::string webhook_aad(std::string_view tenant, std::string_view what);
namespace field {
constexpr char URL[] = "url";
constexpr char TYPES[] = "types";
constexpr char SECRETS[] = "secrets";
constexpr char DISABLED[] = "disabled";
constexpr char FAILING_SINCE[] = "failing_since";
constexpr char EP[] = "ep";
constexpr char EID[] = "eid";
constexpr char TYPE[] = "type";
}  // namespace field
constexpr size_t WEBHOOK_LOG_MAX = 100;
extern const char WH_CREATE_LUA[];  // module: a new endpoint, if the tenant has room
extern const char WH_SET_LUA[];     // module: set fields of one of the tenant's endpoints
extern const char WH_ROTATE_LUA[];  // module: new secrets, if no other rotation came between
extern const char WH_DELETE_LUA[];  // module: an endpoint and its log go
extern const char WH_LIST_LUA[];    // module: a tenant's endpoints
extern const char WH_GET_LUA[];     // module: one of them, with its latest deliveries
extern const char WH_FANOUT_LUA[];  // deliveryd: events to each enabled endpoint of the tenant that wants them
extern const char WH_DEFER_LUA[];   // deliveryd: a delivery to try again later
extern const char WH_LATER_LUA[];  // deliveryd: a delivery put off, no attempt counted
extern const char WH_MOVE_LUA[];    // deliveryd: due retries back onto the stream
extern const char WH_DONE_LUA[];    // deliveryd: a delivery ended: logged, the entry goes, the endpoint's state

// ---------------------------------------------------------------- suppression
//
// A tenant's suppressed addresses (a hard bounce, a complaint, an
// unsubscribe, or POST /v1/suppressions), by recipient_key; the address
// itself only sealed (suppression_aad), for the list to show:
//   "<stream>:supp:<tenant>"   hash: recipient key -> "<at ms> <reason> <sealed address, base64>"
//   "<stream>:suppt:<tenant>"  sorted set, score = at ms: the same keys, to list newest first
// deliveryd reads the hash (HMGET) before each send: a suppressed recipient
// is not sent to. Kept in Redis, not the store: it is read for every message.
std::string suppression_key(std::string_view stream, std::string_view tenant);
std::string suppression_time_key(std::string_view stream, std::string_view tenant);
std::string suppression_aad(std::string_view tenant, std::string_view rkey);
namespace reason {
constexpr char BOUNCED[] = "bounced";          // a hard bounce, a provider's or the relay's (5.1.x)
constexpr char COMPLAINED[] = "complained";
constexpr char UNSUBSCRIBED[] = "unsubscribed";
constexpr char MANUAL[] = "manual";            // POST /v1/suppressions
constexpr char ERASED[] = "erased";            // DELETE /v1/recipients/{address} kept it suppressed
}  // namespace reason
bool suppression_reason_valid(std::string_view reason);
constexpr size_t SUPPRESSIONS_MAX = 1000000;  // a tenant's; past it, adding answers "full"
extern const char SUPP_ADD_LUA[];   // one address suppressed (the first reason stays unless replaced)
extern const char SUPP_DEL_LUA[];   // one address no longer suppressed
extern const char SUPP_LIST_LUA[];  // a page, newest first

// ---------------------------------------------------------------- links
//
// What a recipient's link recorded (links.h), once:
//   "<stream>:link:<kind>:<message id>:<rcpt>"  string, until the link expires:
//                                               the response's label ("1": unsubscribed)
// The first use queues an event for deliveryd on the events stream, from
// the source LINKS_SOURCE (a name no configured source may take).
std::string link_key(std::string_view stream, char kind, std::string_view message_id, int rcpt);
constexpr char LINKS_SOURCE[] = "links";
extern const char LINK_ONCE_LUA[];  // module: a link's first use recorded and its event queued

// SHA1 of a script, as EVALSHA wants it.
std::string script_sha(const char *script);

// ---------------------------------------------------------------- statuses

namespace status {
constexpr char QUEUED[] = "queued";
constexpr char SCHEDULED[] = "scheduled";  // accepted with a future send_at, not tried yet
constexpr char SENT[] = "sent";
constexpr char FAILED[] = "failed";
constexpr char CANCELLED[] = "cancelled";
constexpr char SUPPRESSED[] = "suppressed";  // every recipient was on the suppression list: nothing sent
// what the providers' events say after they took it (provider_events.h)
constexpr char DELIVERED[] = "delivered";
constexpr char BOUNCED[] = "bounced";
constexpr char COMPLAINED[] = "complained";
}  // namespace status

namespace event {
constexpr char QUEUED[] = "queued";
constexpr char PROVIDER_FAILED[] = "provider_failed";
constexpr char DEFERRED[] = "deferred";
constexpr char SENT[] = "sent";
constexpr char FAILED[] = "failed";
constexpr char CANCELLED[] = "cancelled";  // terminal: DELETE /v1/messages/{id} before any send
constexpr char SUPPRESSED[] = "suppressed";  // terminal: every recipient suppressed, no provider asked
// One recipient's own outcome, when the recipients of a message fared
// differently (an event's `rcpt` is its index): taken by the relay while
// others were not yet; refused for good (the others may still get it);
// refused for now (retried with the message).
constexpr char RECIPIENT_SENT[] = "recipient_sent";
constexpr char RECIPIENT_FAILED[] = "recipient_failed";
constexpr char RECIPIENT_DEFERRED[] = "recipient_deferred";
constexpr char RECIPIENT_SUPPRESSED[] = "recipient_suppressed";  // on the suppression list: not sent to
// A recipient's use of its links (links.h): the response's label in `response`.
constexpr char RESPONDED[] = "responded";
// A provider's, after it took the message (pevents types; `provider` is the
// event source's name, `rcpt` the recipient when it matched one).
constexpr char DELIVERED[] = "delivered";
constexpr char DELIVERY_DEFERRED[] = "delivery_deferred";
constexpr char BOUNCED[] = "bounced";
constexpr char COMPLAINED[] = "complained";
constexpr char OPENED[] = "opened";
constexpr char CLICKED[] = "clicked";
constexpr char UNSUBSCRIBED[] = "unsubscribed";
}  // namespace event

// Event ids are fixed by what happened, so that writing an event again (a
// retry after a store error, a takeover after a crash) writes nothing new,
// and a message has one terminal event per generation.
std::string event_id_queued();                                           // "q"
std::string event_id_provider_failed(int gen, int attempt, int index);   // "g<gen>a<attempt>p<index>"
std::string event_id_deferred(int gen, int attempt);                     // "g<gen>a<attempt>d"
std::string event_id_terminal(int gen);                                  // "t<gen>"
// "g<gen>r<i>s" / "g<gen>r<i>f" / "g<gen>r<i>u" (suppressed; once a generation each), "g<gen>a<attempt>r<i>d"
std::string event_id_recipient(int gen, int attempt, size_t index, char what);
bool is_terminal_type(std::string_view type);                   // sent, failed, cancelled, suppressed
bool is_recipient_type(std::string_view type);
// The generation of a terminal event id, or -1.
int terminal_generation(std::string_view event_id);

// ---------------------------------------------------------------- buckets
//
// A recipient's messages are found through keys in each record's `rk`: the
// recipient key alone (all its messages) and one key per time level, each
// level 16 times finer than the one above, so that any span of time is an
// equality lookup. A reader takes a bucket whole while it holds at most
// BUCKET_FULL documents and goes down a level when it holds more (hints).
struct Level {
    char tag;
    int64_t span_ms;
};
constexpr int LEVELS = 5;
constexpr Level LEVEL[LEVELS] = {
    {'a', 256LL * 86400000},  // ~8.4 months
    {'b', 16LL * 86400000},
    {'c', 86400000},
    {'d', 5400000},  // 90 minutes
    {'e', 337500},   // 5.6 minutes: the finest, always read whole
};
constexpr size_t BUCKET_FULL = 64;  // documents a bucket read may return before it counts as big

// A tenant's key for a recipient: the first 16 bytes of HMAC-SHA256 under
// the keyring's index key of "<tenant>\0<lower-cased address>", base64url (22
// characters). Per tenant, so that one tenant's lookups never touch (or time)
// another's records, and the same address is not linkable across tenants.
std::string recipient_key(const Keyring &ring, std::string_view tenant, std::string_view normalised_address);

// A bucket: the recipient key, the level (-1 = all time) and the number of
// the span at that level (created_ms / span_ms).
struct Bucket {
    std::string rkey;
    int level = -1;
    int64_t n = 0;

    std::string key() const;  // "<rkey>" or "<rkey>.<tag><n>"
    int64_t start_ms() const;
    int64_t end_ms() const;   // exclusive
    Bucket parent() const;    // the root is its own parent
    Bucket child_at(int64_t ms) const;  // the child holding `ms`
};

// Every bucket key a record with this recipient key and time carries.
void bucket_keys(std::string_view rkey, int64_t created_ms, std::vector<std::string> &out);

// Hints (collection "hints"): {_id: "<tenant>.<bucket key>", h: "<tenant>.<parent key>"}
// says a bucket is big; one lookup by h gives a bucket's big children (and
// for the root, the root itself).
std::string hint_id(std::string_view tenant, const Bucket &b);
std::string hint_parent(std::string_view tenant, const Bucket &b);
// No record is older: a reader's walk back in time stops here (2025-01-01,
// before the first record any deployment can hold). A constant, not a
// document, so that nothing lost from the store can hide history.
constexpr int64_t EPOCH_MS = 1735689600000;
// How far ahead of a reader's clock a record's time may be (another host's
// clock): the walk starts that far ahead of now.
constexpr int64_t CLOCK_SKEW_MS = 300000;

// Additional data of a message's sealed summary (what lists show).
std::string summary_aad(std::string_view tenant, std::string_view message_id);
// Envelopes up to this size live in the message's document; larger ones in a
// document of their own, which only a read of that message fetches.
constexpr size_t INLINE_ENVELOPE_MAX = 64 * 1024;

// The milliseconds in a message id (its first 48 bits); -1 if not an id.
int64_t message_id_time_ms(std::string_view id);

// ---------------------------------------------------------------- retention
//
// A tenant with retention=Nd in the keys file: the module stamps N on each
// message (field::KEEP), deliveryd writes expires_at = created + N days on
// every document of it and one expiry document (records.h) in the day
// bucket of that time; deliveryd's sweeper (one instance at a time, under
// a lock) deletes, day bucket by day bucket from a cursor, what has
// expired, at most retention_batch messages a run (docs/storage.md).
constexpr int64_t DAY_MS = 86400000;
std::string retention_lock_key(std::string_view stream);    // "<stream>:retention:lock": holder, PX
std::string retention_cursor_key(std::string_view stream);  // "<stream>:retention:cursor": the oldest day bucket left
// When a message created then and kept that many days expires (unix ms); 0 = never.
int64_t expiry_ms(int64_t created_ms, int64_t keep_days);
// The day bucket of an expiry time.
constexpr int64_t expiry_day(int64_t expires_ms) { return expires_ms / DAY_MS; }
// A sweep deletes only what expired this long ago (by its clock), and a
// writer writes nothing that has expired (by its clock): a write under way
// while a sweep runs never leaves a document behind it (CLOCK_SKEW_MS of
// skew between two hosts' clocks, and as much again for the write itself).
constexpr int64_t RETENTION_GRACE_MS = 2 * CLOCK_SKEW_MS;
extern const char RETENTION_UNLOCK_LUA[];  // deliveryd's sweeper lets go of its lock

}  // namespace mailapi::contract

// DELETE /v1/recipients {"address": ..., "suppression": "keep"|"drop"}
// (scope erase): everything of one address, for the caller's tenant, goes:
// its records (messages, bodies, events) in the store, found through its
// recipient key; its queued and scheduled messages in Redis, and the
// providers' events, webhook deliveries, dead letters and idempotency keys
// waiting there for those messages. The address stays suppressed as its keyed hash alone (no sealed
// copy: the list shows it as null), so it is not mailed again by accident,
// unless "suppression": "drop".
//
// The work is done in the thread pool with connections of its own (blocking
// hiredis, libmongoc), at most ERASE_MAX messages a request: the answer says
// "done": false when more are left, and the caller asks again. A message a
// deliveryd is sending while this runs is waited for (up to IN_FLIGHT_WAIT)
// and its record erased once written.
#include "ngx_mail_api.h"

#include <jansson.h>
#include <mongoc/mongoc.h>

#include <chrono>
#include <memory>
#include <set>
#include <thread>

#include "bson_doc.h"
#include "clock.h"
#include "contract.h"
#include "crypto.h"
#include "json.h"
#include "message.h"
#include "records.h"
#include "redis_reply.h"
#include "token.h"

namespace contract = mailapi::contract;
namespace records = mailapi::records;

using mailapi::wall_ms;
using mailapi::reply_field;

namespace {

constexpr size_t ERASE_MAX = 5000;          // messages a request
constexpr size_t DELETE_CHUNK = 500;        // ids a store delete names
constexpr long long SCAN_COUNT = 1000;
constexpr auto IN_FLIGHT_WAIT = std::chrono::seconds(30);
constexpr int REDIS_TIMEOUT_S = 10;
// Erasures under way in this worker. One may hold a thread of the pool for
// IN_FLIGHT_WAIT and more; the reads share the pool: a few at a time, the
// rest asked to come back.
constexpr ngx_uint_t ERASURES_MAX = 2;
ngx_uint_t g_erasures = 0;

// KEYS: scheduled set, message hashes (a SCAN page of them). ARGV: tenant,
// recipient key, "<stream>:", "1" if the caller knows these are to the
// recipient. For each hash, in order: 0 not there (or another tenant's, or
// not to this recipient); 2 a deliveryd holds a live lease on it (it is
// being sent: wait); 1 gone; 3 the tenant's, queued by a module older than
// `rk` (the caller opens its envelope to tell). One script a page, not one
// a key: a SCAN of a large Redis is a thousand times fewer round trips.
const char ERASE_QUEUED_LUA[] = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 2, #KEYS do
  local h = redis.call('HMGET', KEYS[i], 'tenant', 'rk', 'lease')
  local v = 0
  local ours = h[1] == ARGV[1] and (ARGV[4] == '1' or
               (h[2] and string.find(' ' .. h[2] .. ' ', ' ' .. ARGV[2] .. ' ', 1, true)))
  if h[1] == ARGV[1] and not h[2] and ARGV[4] ~= '1' then
    v = 3
  elseif ours then
    if h[3] and tonumber(h[3]) > now then
      v = 2
    else
      redis.call('DEL', KEYS[i])
      redis.call('ZREM', KEYS[1], string.sub(KEYS[i], #ARGV[3] + 1))
      v = 1
    end
  end
  out[#out + 1] = v
end
return out
)lua";

// KEYS: an idempotency key. ARGV: the value read. Deleted only if it is
// still that (expired and taken again since: another message's).
const char DEL_IF_LUA[] = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
)lua";

struct Erase {
    // in
    std::string tenant, rkey, stream, redis_host, database;
    const mailapi::Keyring *keyring = nullptr;  // the cycle's: it outlives the request
    int redis_port = 0;
    bool drop_suppression = false;
    // out
    ngx_uint_t status = NGX_HTTP_OK;
    std::string error;
    long long records = 0, documents = 0, queued = 0, events = 0, webhooks = 0;
    bool done = true;
};

struct RedisFree {
    void operator()(redisContext *c) const { redisFree(c); }
};
struct ReplyFree {
    void operator()(redisReply *r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

Reply command(redisContext *c, const std::vector<std::string> &args) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (const std::string &a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return Reply(static_cast<redisReply *>(
        redisCommandArgv(c, static_cast<int>(args.size()), argv.data(), lens.data())));
}

std::string str(const redisReply *r) {
    return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string();
}

// ---------------------------------------------------------------- Redis

class RedisSide {
public:
    explicit RedisSide(Erase &e) : e_(e) {
        struct timeval tv = {REDIS_TIMEOUT_S, 0};
        c_.reset(e.redis_port ? redisConnectWithTimeout(e.redis_host.c_str(), e.redis_port, tv)
                              : redisConnectUnixWithTimeout(e.redis_host.c_str(), tv));
        if (c_ && !c_->err) redisSetTimeout(c_.get(), tv);
    }
    bool ok() const { return c_ && !c_->err && !failed_; }

    // The address stays suppressed while its mail is erased, as its key alone.
    void keep_suppressed() {
        check(command(c_.get(), {"EVAL", contract::SUPP_ADD_LUA, "2", contract::suppression_key(e_.stream, e_.tenant),
                                 contract::suppression_time_key(e_.stream, e_.tenant), std::to_string(wall_ms()),
                                 contract::reason::ERASED, std::to_string(contract::SUPPRESSIONS_MAX + 1), "1",
                                 e_.rkey, "-"}));
    }

    void drop_suppression() {
        check(command(c_.get(), {"EVAL", contract::SUPP_DEL_LUA, "2", contract::suppression_key(e_.stream, e_.tenant),
                                 contract::suppression_time_key(e_.stream, e_.tenant), e_.rkey}));
    }

    // Every queued or scheduled message of the tenant to this recipient:
    // erased, or (a deliveryd is sending it) named in `in_flight`.
    void erase_queued(std::set<std::string> &erased, std::set<std::string> &in_flight) {
        std::string cursor = "0", prefix = e_.stream + ":msg_";
        do {
            Reply r = command(c_.get(), {"SCAN", cursor, "MATCH", prefix + "*", "COUNT", std::to_string(SCAN_COUNT)});
            if (!check(r) || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return;
            cursor = str(r->element[0]);
            std::vector<std::string> ids;
            for (size_t i = 0; i < r->element[1]->elements; i++) {
                ids.push_back(str(r->element[1]->element[i]).substr(e_.stream.size() + 1));
            }
            erase_some(ids, erased, in_flight);
        } while (cursor != "0" && ok());
    }

    // Those of `ids` that are the tenant's to this recipient: erased, or in
    // `in_flight`; those finished (gone) leave `in_flight`.
    void erase_some(const std::vector<std::string> &ids, std::set<std::string> &erased,
                    std::set<std::string> &in_flight, bool known = false) {
        if (ids.empty()) return;
        std::vector<std::string> cmd = {"EVAL", ERASE_QUEUED_LUA, std::to_string(ids.size() + 1),
                                        contract::DEFAULT_SCHEDULED};
        for (const std::string &id : ids) cmd.push_back(contract::message_key(e_.stream, id));
        cmd.insert(cmd.end(), {e_.tenant, e_.rkey, e_.stream + ":", known ? "1" : "0"});
        Reply r = command(c_.get(), cmd);
        if (!check(r) || r->type != REDIS_REPLY_ARRAY || r->elements != ids.size()) {
            failed_ = true;
            return;
        }
        std::vector<std::string> legacy;
        for (size_t i = 0; i < ids.size(); i++) {
            long long v = r->element[i]->integer;
            if (v == 3) {
                if (to_recipient(ids[i])) legacy.push_back(ids[i]);
                continue;
            }
            if (v == 1) {
                erased.insert(ids[i]);
                e_.queued++;
            }
            if (v == 2) {
                in_flight.insert(ids[i]);
            } else {
                in_flight.erase(ids[i]);
            }
        }
        if (!legacy.empty() && ok()) erase_some(legacy, erased, in_flight, true);
    }

    // A hash without `rk` (queued before the module stored it): is it to
    // this recipient? Its envelope says.
    bool to_recipient(const std::string &id) {
        Reply r = command(c_.get(), {"HGET", contract::message_key(e_.stream, id), "env"});
        if (!check(r) || r->type != REDIS_REPLY_STRING) return false;
        std::string plain;
        mailapi::Message msg;
        mailapi::FieldError ferr;
        if (!mailapi::envelope_open(*e_.keyring, mailapi::envelope_aad(e_.tenant, id), str(r.get()), plain) ||
            !mailapi::message_parse(plain, mailapi::MessageLimits::stored(), 0, msg, ferr)) {
            return false;
        }
        for (const std::string &a : mailapi::message_recipients(msg)) {
            if (contract::recipient_key(*e_.keyring, e_.tenant, a) == e_.rkey) return true;
        }
        return false;
    }

    // What waits in Redis for these messages: providers' events, webhook
    // deliveries (their payloads name the recipients) and their retries,
    // dead letters (their error is the last refusal, which often names the
    // address).
    void erase_waiting(const std::set<std::string> &ids) {
        if (ids.empty()) return;
        e_.events += erase_entries(contract::events_stream(e_.stream), ids, [](const redisReply *fields) {
            return reply_field(fields, contract::field::MID);
        });
        e_.webhooks += erase_entries(contract::webhooks_stream(e_.stream), ids, [](const redisReply *fields) {
            return reply_field(fields, contract::field::EID).substr(0, 30);  // "<message id>_<event id>"
        });
        e_.webhooks += erase_retries(contract::webhook_retry_key(e_.stream), ids);
        erase_entries(contract::DEFAULT_DEAD_LETTERS, ids, [](const redisReply *fields) {
            return reply_field(fields, "id");
        });
    }

    // The tenant's idempotency keys of these messages: the key is the
    // tenant's own string, often made of the address ("welcome-<address>"),
    // and a retry with it would answer with the erased message.
    void erase_idempotency_keys(const std::set<std::string> &ids) {
        if (ids.empty()) return;
        std::string cursor = "0", pattern = contract::idempotency_key(e_.tenant, "") + "*";  // no glob in a tenant
        do {
            Reply r = command(c_.get(), {"SCAN", cursor, "MATCH", pattern, "COUNT", std::to_string(SCAN_COUNT)});
            if (!check(r) || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return;
            cursor = str(r->element[0]);
            const redisReply *keys = r->element[1];
            if (keys->elements == 0) continue;
            std::vector<std::string> mget = {"MGET"};
            for (size_t i = 0; i < keys->elements; i++) mget.push_back(str(keys->element[i]));
            Reply values = command(c_.get(), mget);
            if (!check(values) || values->type != REDIS_REPLY_ARRAY || values->elements != keys->elements) return;
            for (size_t i = 0; i < values->elements; i++) {
                std::string v = str(values->element[i]);  // "<fingerprint> <id>"
                size_t sp = v.rfind(' ');
                if (sp == std::string::npos || !ids.count(v.substr(sp + 1))) continue;
                check(command(c_.get(), {"EVAL", DEL_IF_LUA, "1", mget[i + 1], v}));
            }
        } while (cursor != "0" && ok());
    }

    bool check(const Reply &r) {
        if (!r || r->type == REDIS_REPLY_ERROR) failed_ = true;
        return !failed_;
    }

private:
    template <typename Fn>
    long long erase_entries(const std::string &stream, const std::set<std::string> &ids, Fn message_of) {
        long long n = 0;
        std::string from = "-";
        for (;;) {
            Reply r = command(c_.get(), {"XRANGE", stream, from, "+", "COUNT", std::to_string(SCAN_COUNT)});
            if (!check(r) || r->type != REDIS_REPLY_ARRAY || r->elements == 0) return n;
            std::string last;
            for (size_t i = 0; i < r->elements; i++) {
                const redisReply *e = r->element[i];
                if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
                last = str(e->element[0]);
                if (!ids.count(message_of(e->element[1]))) continue;
                // a consumer working on it finds it gone (its XACK, XDEL change nothing)
                check(command(c_.get(), {"XDEL", stream, last}));
                n++;
            }
            if (r->elements < static_cast<size_t>(SCAN_COUNT) || last.empty()) return n;
            from = "(" + last;
        }
    }

    long long erase_retries(const std::string &key, const std::set<std::string> &ids) {
        long long n = 0;
        std::string cursor = "0";
        do {
            Reply r = command(c_.get(), {"ZSCAN", key, cursor, "COUNT", std::to_string(SCAN_COUNT)});
            if (!check(r) || r->type != REDIS_REPLY_ARRAY || r->elements != 2) return n;
            cursor = str(r->element[0]);
            const redisReply *list = r->element[1];
            for (size_t i = 0; i + 1 < list->elements; i += 2) {
                std::string member = str(list->element[i]);
                size_t a = member.find('\n');  // "ep\neid\ntype\nattempt\nenv"
                if (a == std::string::npos || !ids.count(member.substr(a + 1, 30))) continue;
                check(command(c_.get(), {"ZREM", key, member}));
                n++;
            }
        } while (cursor != "0" && ok());
        return n;
    }

    Erase &e_;
    std::unique_ptr<redisContext, RedisFree> c_;
    bool failed_ = false;
};

// ---------------------------------------------------------------- the store

struct CursorFree {
    void operator()(mongoc_cursor_t *c) const { mongoc_cursor_destroy(c); }
};
struct CollectionFree {
    void operator()(mongoc_collection_t *c) const { mongoc_collection_destroy(c); }
};

class StoreSide {
public:
    StoreSide(mongoc_client_t *client, Erase &e)
        : e_(e),
          messages_(mongoc_client_get_collection(client, e.database.c_str(), records::MESSAGES)),
          hints_(mongoc_client_get_collection(client, e.database.c_str(), records::HINTS)) {}
    bool ok() const { return !failed_; }

    // The ids of the tenant's messages to the recipient (its messages and
    // their event documents carry its key), at most ERASE_MAX.
    void find(std::set<std::string> &ids) {
        mailapi::Bson filter, opts;
        BSON_APPEND_UTF8(filter.get(), records::field::TENANT, e_.tenant.c_str());
        BSON_APPEND_UTF8(filter.get(), records::field::RK, e_.rkey.c_str());
        bson_t projection;
        BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &projection);
        BSON_APPEND_INT32(&projection, records::field::M, 1);
        bson_append_document_end(opts.get(), &projection);
        std::unique_ptr<mongoc_cursor_t, CursorFree> cursor(
            mongoc_collection_find_with_opts(messages_.get(), filter.get(), opts.get(), nullptr));
        const bson_t *doc;
        while (ids.size() < ERASE_MAX + 1 && mongoc_cursor_next(cursor.get(), &doc)) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, doc, records::field::M) && BSON_ITER_HOLDS_UTF8(&it)) {
                ids.insert(bson_iter_utf8(&it, nullptr));
            }
        }
        bson_error_t err;
        if (mongoc_cursor_error(cursor.get(), &err)) failed_ = true;
        if (ids.size() > ERASE_MAX) {
            ids.erase(std::prev(ids.end()));
            e_.done = false;
        }
    }

    // Every document of these messages: the message, its body, its events.
    void erase(const std::set<std::string> &ids) {
        std::vector<std::string> list(ids.begin(), ids.end());
        for (size_t at = 0; at < list.size() && !failed_; at += DELETE_CHUNK) {
            mailapi::Bson filter, in;
            BSON_APPEND_UTF8(filter.get(), records::field::TENANT, e_.tenant.c_str());
            bson_t m, arr;
            BSON_APPEND_DOCUMENT_BEGIN(filter.get(), records::field::M, &m);
            BSON_APPEND_ARRAY_BEGIN(&m, "$in", &arr);
            for (size_t i = at; i < std::min(list.size(), at + DELETE_CHUNK); i++) {
                BSON_APPEND_UTF8(&arr, std::to_string(i - at).c_str(), list[i].c_str());
            }
            bson_append_array_end(&m, &arr);
            bson_append_document_end(filter.get(), &m);
            mailapi::Bson reply;
            bson_error_t err;
            if (!mongoc_collection_delete_many(messages_.get(), filter.get(), nullptr, reply.get(), &err)) {
                failed_ = true;
                return;
            }
            bson_iter_t it;
            if (bson_iter_init_find(&it, reply.get(), "deletedCount")) e_.documents += bson_iter_as_int64(&it);
        }
    }

    // The hints of the recipient's buckets ("<tenant>.<rkey>..."): they name
    // only its key, but nothing of the address is to stay.
    void erase_hints() {
        mailapi::Bson filter, re;
        std::string pattern = "^" + e_.tenant + "\\." + e_.rkey;  // [A-Za-z0-9_-]: nothing to escape
        BSON_APPEND_REGEX(filter.get(), "_id", pattern.c_str(), "");
        bson_error_t err;
        if (!mongoc_collection_delete_many(hints_.get(), filter.get(), nullptr, nullptr, &err)) failed_ = true;
    }

private:
    Erase &e_;
    std::unique_ptr<mongoc_collection_t, CollectionFree> messages_, hints_;
    bool failed_ = false;
};

void erase_records(StoreSide &store, std::set<std::string> &erased, long long &records) {
    std::set<std::string> ids;
    store.find(ids);
    store.erase(ids);
    records += static_cast<long long>(ids.size());
    erased.insert(ids.begin(), ids.end());
}

void erase_in_thread(void *data, ngx_log_t *) noexcept {
    Erase &e = **static_cast<Erase **>(data);
    try {
        mongoc_client_t *client = ngx_mail_api_store_take();
        if (client == nullptr) {
            e.status = NGX_HTTP_SERVICE_UNAVAILABLE;
            return;
        }
        RedisSide redis(e);
        {
            StoreSide store(client, e);
            std::set<std::string> erased, in_flight;
            if (redis.ok()) redis.keep_suppressed();  // first: nothing new is sent to it meanwhile
            if (redis.ok()) redis.erase_queued(erased, in_flight);
            if (redis.ok()) erase_records(store, erased, e.records);
            // sent while this ran: erased once their records are written
            auto until = std::chrono::steady_clock::now() + IN_FLIGHT_WAIT;
            while (!in_flight.empty() && redis.ok() && store.ok() && std::chrono::steady_clock::now() < until) {
                std::this_thread::sleep_for(std::chrono::milliseconds(200));
                redis.erase_some(std::vector<std::string>(in_flight.begin(), in_flight.end()), erased, in_flight);
                if (in_flight.empty()) erase_records(store, erased, e.records);
            }
            if (!in_flight.empty()) e.done = false;
            if (redis.ok() && store.ok()) store.erase_hints();
            if (redis.ok()) redis.erase_waiting(erased);
            if (redis.ok()) redis.erase_idempotency_keys(erased);
            if (redis.ok() && e.drop_suppression && e.done) redis.drop_suppression();
            if (!redis.ok() || !store.ok()) e.status = NGX_HTTP_SERVICE_UNAVAILABLE;
        }
        ngx_mail_api_store_give(client, e.status == NGX_HTTP_OK);
    } catch (...) {
        e.status = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

void erase_keepalive(ngx_event_t *ev) noexcept { ngx_add_timer(ev, 1000); }

void erased(ngx_event_t *ev) noexcept {
    auto *r = static_cast<ngx_http_request_t *>(ev->data);
    auto *ctx = ngx_mail_api_ctx(r);
    if (ctx->keepalive.timer_set) ngx_del_timer(&ctx->keepalive);
    if (g_erasures) g_erasures--;
    Erase &e = *static_cast<Erase *>(ctx->fetch);
    ngx_int_t rc;
    try {
        if (e.status == NGX_HTTP_SERVICE_UNAVAILABLE) {
            rc = ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                                         "the queue or the store is unavailable: nothing may be erased yet, retry");
        } else if (e.status != NGX_HTTP_OK) {
            rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
        } else {
            mailapi::Json o(json_pack("{s:I, s:I, s:I, s:I, s:I, s:s, s:b}", "messages",
                                      static_cast<json_int_t>(e.records), "documents",
                                      static_cast<json_int_t>(e.documents), "queued", static_cast<json_int_t>(e.queued),
                                      "events", static_cast<json_int_t>(e.events), "webhook_deliveries",
                                      static_cast<json_int_t>(e.webhooks), "suppression",
                                      e.drop_suppression && e.done ? "dropped" : "kept", "done", e.done ? 1 : 0));
            char *s = json_dumps(o.get(), JSON_COMPACT | JSON_PRESERVE_ORDER);
            std::string body = s ? s : "{}";
            free(s);
            rc = ngx_mail_api_send_json(r, NGX_HTTP_OK, body);
        }
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_mail_api_finish(r, rc);
}

ngx_int_t erase_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                     const std::string &body) {
    json_error_t jerr;
    mailapi::Json root(json_loadb(body.data(), body.size(), JSON_REJECT_DUPLICATES, &jerr));
    if (!root || !json_is_object(root.get())) {
        return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json", "the body must be a JSON object");
    }
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        if (std::string_view(k) != "address" && std::string_view(k) != "suppression") {
            return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "unknown_field", "unknown field", k);
        }
    }
    json_t *address = json_object_get(root.get(), "address"), *supp = json_object_get(root.get(), "suppression");
    if (!json_is_string(address) || !mailapi::address_valid(json_string_value(address))) {
        return ngx_mail_api_send_error(r, 422, "invalid_address", "address must be a valid e-mail address", "address");
    }
    std::string how = supp ? (json_is_string(supp) ? json_string_value(supp) : "?") : "keep";
    if (how != "keep" && how != "drop") {
        return ngx_mail_api_send_error(r, 422, "invalid_value", "suppression is \"keep\" or \"drop\"", "suppression");
    }
    if (g_erasures >= ERASURES_MAX) {
        ngx_mail_api_add_header(r, "Retry-After", "30");
        return ngx_mail_api_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS, "erasure_busy",
                                       "other erasures are under way, retry later");
    }
    auto *e = ngx_mail_api_pool_new<Erase>(r->pool);
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (e == nullptr || ctx == nullptr || mcf->thread_pool == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    e->tenant = key->tenant;
    e->keyring = mcf->keyring;
    e->rkey = contract::recipient_key(*mcf->keyring, key->tenant, mailapi::address_normalise(json_string_value(address)));
    e->stream.assign(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    e->redis_host.assign(reinterpret_cast<char *>(mcf->redis_host.data), mcf->redis_host.len);
    e->redis_port = static_cast<int>(mcf->redis_port);
    e->database.assign(reinterpret_cast<char *>(mcf->mongodb_database.data), mcf->mongodb_database.len);
    e->drop_suppression = how == "drop";
    ctx->fetch = e;
    ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, sizeof(Erase *));
    if (task == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    *static_cast<Erase **>(task->ctx) = e;
    task->handler = erase_in_thread;
    task->event.data = r;
    task->event.handler = erased;
    if (ngx_thread_task_post(mcf->thread_pool, task) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    g_erasures++;
    // an exiting worker (a reload) waits for timers, not thread tasks: without
    // one it would leave with the erasure under way and its answer unsent
    ctx->keepalive.handler = erase_keepalive;
    ctx->keepalive.data = r;
    ctx->keepalive.log = r->connection->log;
    ngx_add_timer(&ctx->keepalive, 1000);
    return NGX_DONE;
}

}  // namespace

ngx_int_t ngx_mail_api_handle_erase(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    if (r->method != NGX_HTTP_DELETE) {
        ngx_mail_api_add_header(r, "Allow", "DELETE");
        return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed", "allowed: DELETE");
    }
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_ERASE, auth, rc)) return rc;
    if (!ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, auth.key, 4096, erase_body);
}

// The store (MongoDB, or FerretDB in the tests and the demo), read in an
// nginx thread pool because libmongoc blocks. Decryption and the JSON answer
// are made in the thread too, so the event loop only sends bytes.
//
// Every read is an equality lookup on an indexed field (docs/storage.md):
// one message by {tenant, m}; a recipient's messages bucket by bucket by
// {tenant, rk}, newest bucket first, taking a bucket whole while it holds at
// most BUCKET_FULL documents and going down a level (16 finer buckets) when
// a hint says it is bigger. A page costs a handful of lookups and at most a
// couple of buckets' documents, however many records the store holds.
#include "ngx_mail_api.h"

#include <jansson.h>
#include <malloc.h>
#include <mongoc/mongoc.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <vector>

#include "base64.h"
#include "bson_doc.h"
#include "clock.h"
#include "contract.h"
#include "json.h"
#include "records.h"

using mailapi::wall_ms;

namespace {

namespace contract = mailapi::contract;
namespace records = mailapi::records;
using mailapi::Bson;

// Connections to the store, one per read under way at most. Not libmongoc's
// client pool: a connection that carried a large message keeps a buffer that
// large for its life, so after one it is closed, not kept (Lease::discard).
class Clients {
public:
    explicit Clients(mongoc_uri_t *uri) : uri_(uri) {}
    ~Clients() {
        for (mongoc_client_t *c : idle_) mongoc_client_destroy(c);
        mongoc_uri_destroy(uri_);
    }
    Clients(const Clients &) = delete;
    Clients &operator=(const Clients &) = delete;

    mongoc_client_t *take() {
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (!idle_.empty()) {
                mongoc_client_t *c = idle_.back();
                idle_.pop_back();
                return c;
            }
        }
        mongoc_client_t *c = mongoc_client_new_from_uri(uri_);
        if (c) {
            mongoc_client_set_error_api(c, MONGOC_ERROR_API_VERSION_2);
            mongoc_client_set_appname(c, "ngx_mail_api");
        }
        return c;
    }

    void give(mongoc_client_t *c, bool keep) {
        if (keep) {
            std::lock_guard<std::mutex> lock(mu_);
            idle_.push_back(c);
            return;
        }
        mongoc_client_destroy(c);
    }

private:
    mongoc_uri_t *uri_;
    std::mutex mu_;
    std::vector<mongoc_client_t *> idle_;
};

Clients *g_clients;
std::string *g_database;
ngx_uint_t g_reads;                   // under way in this worker (event loop only)

using mailapi::Json;

std::string dump(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "";
    free(s);
    return out;
}

struct ClientLease {
    mongoc_client_t *client;
    bool discard = false;  // it carried a large message: close it
    ClientLease() : client(g_clients->take()) {}
    ~ClientLease() {
        if (client) g_clients->give(client, !discard);
    }
    ClientLease(const ClientLease &) = delete;
    ClientLease &operator=(const ClientLease &) = delete;
};

struct CollectionFree {
    void operator()(mongoc_collection_t *c) const { mongoc_collection_destroy(c); }
};
using Collection = std::unique_ptr<mongoc_collection_t, CollectionFree>;

// Reads of large envelopes (body documents) under way at once in this
// worker. A store asked for many of them at once serves every one too slowly
// to be answered in time (32 reads of a 10 MB message: all 503 after up to
// 7 s, each alone ~0.3 s), and each holds the worker's memory meanwhile; the
// others wait for a turn, until their deadline.
constexpr int LARGE_READS = 2;
std::mutex g_large_mu;
std::condition_variable g_large_cv;
int g_large_reads;

class LargeRead {
public:
    explicit LargeRead(std::chrono::steady_clock::time_point deadline) {
        std::unique_lock<std::mutex> lock(g_large_mu);
        held_ = g_large_cv.wait_until(lock, deadline, [] { return g_large_reads < LARGE_READS; });
        if (held_) g_large_reads++;
    }
    ~LargeRead() {
        if (!held_) return;
        {
            std::lock_guard<std::mutex> lock(g_large_mu);
            g_large_reads--;
        }
        g_large_cv.notify_one();
    }
    LargeRead(const LargeRead &) = delete;
    LargeRead &operator=(const LargeRead &) = delete;
    bool held() const { return held_; }

private:
    bool held_ = false;
};

struct CursorFree {
    void operator()(mongoc_cursor_t *c) const { mongoc_cursor_destroy(c); }
};

class Reader {
public:
    Reader(mongoc_client_t *client, const ngx_mail_api_task_t *t, ngx_log_t *log)
        : messages_(mongoc_client_get_collection(client, g_database->c_str(), records::MESSAGES)),
          hints_(mongoc_client_get_collection(client, g_database->c_str(), records::HINTS)),
          t_(t),
          log_(log),
          deadline_(t->posted + std::chrono::milliseconds(t->timeout)) {}

    // A store error, or the read's time used up: the answer is 503. (No
    // exceptions: nginx is C, and its sanitizer build cannot unwind them.)
    bool failed() const { return failed_; }

    // Documents matching {tenant, <field>: value}, at most `limit` (0 = all),
    // without their envelopes unless `envelopes`.
    template <typename Fn>
    void find(mongoc_collection_t *coll, const char *field, const std::string &value, int64_t limit, Fn &&each,
              bool envelopes = false) {
        if (failed_ || out_of_time()) return;
        Bson filter, opts;
        if (coll == messages_.get()) BSON_APPEND_UTF8(filter.get(), records::field::TENANT, t_->tenant.c_str());
        BSON_APPEND_UTF8(filter.get(), field, value.c_str());
        if (limit) BSON_APPEND_INT64(opts.get(), "limit", limit);
        // the store's own bound too (a lookup of many documents comes in
        // many replies, each within the socket timeout)
        BSON_APPEND_INT64(opts.get(), "maxTimeMS", std::max<int64_t>(1, left_ms()));
        if (!envelopes && coll == messages_.get()) {
            bson_t projection;
            BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &projection);
            BSON_APPEND_INT32(&projection, records::field::ENVELOPE, 0);
            bson_append_document_end(opts.get(), &projection);
        }
        std::unique_ptr<mongoc_cursor_t, CursorFree> cursor(
            mongoc_collection_find_with_opts(coll, filter.get(), opts.get(), nullptr));
        const bson_t *doc;
        while (mongoc_cursor_next(cursor.get(), &doc)) {
            read_bytes_ += doc->len;
            each(doc);
            if (out_of_time()) return;  // between replies too, not only between lookups
        }
        bson_error_t err;
        if (mongoc_cursor_error(cursor.get(), &err)) {
            // a driver error names hosts and codes, never data
            ngx_log_error(NGX_LOG_ERR, log_, 0, "mail_api: store read failed: %s", err.message);
            failed_ = true;
        }
    }

    // A message with its envelope (inline or its body document) and events.
    // Its own document first, by _id: it holds an envelope up to 64 KiB. Then
    // every document of the message (its events, and its body document when
    // the envelope is larger), a large one in its turn (LargeRead), which this
    // reader keeps until it is done with it. (Not all at once: FerretDB reads
    // a document whole even when a projection leaves most of it out.)
    void message(const std::string &id, std::map<std::string, records::Stored> &out) {
        find(
            messages_.get(), records::field::ID, id, 1, [&](const bson_t *doc) { records::read_document(doc, out); },
            true);
        auto m = out.find(id);
        if (failed_ || m == out.end() || !m->second.has_message) return;  // not recorded (yet)
        bool large = m->second.envelope.empty();
        if (large) {
            large_ = std::make_unique<LargeRead>(deadline_);
            if (!large_->held()) {
                ngx_log_error(NGX_LOG_ERR, log_, 0,
                              "mail_api: no turn to read a large message within mail_api_store_timeout");
                failed_ = true;
                return;
            }
        }
        find(
            messages_.get(), records::field::M, id, 0,
            [&](const bson_t *doc) {
                bson_iter_t it;
                if (bson_iter_init_find(&it, doc, records::field::ID) && BSON_ITER_HOLDS_UTF8(&it) &&
                    id == bson_iter_utf8(&it, nullptr)) {
                    return;  // the message's own, read already
                }
                records::read_document(doc, out);
            },
            large);
    }

    size_t read_bytes() const { return read_bytes_; }

    void bucket(const contract::Bucket &b, int64_t limit, std::map<std::string, records::Stored> &out,
                size_t &docs) {
        find(messages_.get(), records::field::RK, b.key(), limit, [&](const bson_t *doc) {
            docs++;
            records::read_document(doc, out);
        });
    }

    // Ids of the big children of `b` (and, for the root, of the root).
    std::set<std::string> big_children(const contract::Bucket &b) {
        std::set<std::string> out;
        find(hints_.get(), records::field::H, contract::hint_id(t_->tenant, b), 0, [&](const bson_t *doc) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, doc, records::field::ID) && BSON_ITER_HOLDS_UTF8(&it)) {
                out.insert(bson_iter_utf8(&it, nullptr));
            }
        });
        return out;
    }

    // Written by the reader that found a bucket big, so that later reads go
    // straight to its children. A repeat is refused by _id and ignored.
    void hint_big(const contract::Bucket &b) {
        if (failed_) return;
        Bson doc;
        BSON_APPEND_UTF8(doc.get(), records::field::ID, contract::hint_id(t_->tenant, b).c_str());
        BSON_APPEND_UTF8(doc.get(), records::field::H, contract::hint_parent(t_->tenant, b).c_str());
        mongoc_collection_insert_one(hints_.get(), doc.get(), nullptr, nullptr, nullptr);
    }

private:
    int64_t left_ms() const {
        return std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - std::chrono::steady_clock::now())
            .count();
    }

    bool out_of_time() {
        if (std::chrono::steady_clock::now() <= deadline_) return false;
        ngx_log_error(NGX_LOG_ERR, log_, 0, "mail_api: store read took longer than mail_api_store_timeout");
        failed_ = true;
        return true;
    }

    Collection messages_, hints_;
    std::unique_ptr<LargeRead> large_;  // a turn, kept until the answer made from its envelope is done
    const ngx_mail_api_task_t *t_;
    ngx_log_t *log_;
    std::chrono::steady_clock::time_point deadline_;
    bool failed_ = false;
    size_t read_bytes_ = 0;
};

// A recipient's messages, newest first, older than the cursor: buckets are
// visited newest first and each is read whole, so once limit + 1 messages
// are in, everything not visited is older.
class Walk {
public:
    Walk(Reader &reader, const ngx_mail_api_task_t *t) : reader_(reader), t_(t) {
        // A record may be a little ahead of this clock (another host's); a
        // cursor from the future is worth no more than now.
        bound_ms_ = wall_ms() + contract::CLOCK_SKEW_MS;
        if (!t->cursor.empty()) bound_ms_ = std::min(bound_ms_, contract::message_id_time_ms(t->cursor));
    }

    void run() {
        contract::Bucket root{t_->rkey, -1, 0};
        std::set<std::string> hints = reader_.big_children(root);
        visit(root, hints.count(contract::hint_id(t_->tenant, root)) > 0, &hints);
    }

    std::map<std::string, records::Stored> found;

private:
    bool enough() const {
        size_t n = 0;
        for (const auto &m : found) n += m.second.has_message && below_cursor(m.first);
        return n > t_->limit;
    }

    bool below_cursor(const std::string &id) const { return t_->cursor.empty() || id < t_->cursor; }

    void visit(const contract::Bucket &b, bool big, const std::set<std::string> *hints) {
        if (b.start_ms() > bound_ms_) return;  // newer than the cursor
        bool finest = b.level == contract::LEVELS - 1;
        if (!big || finest) {
            std::map<std::string, records::Stored> got;
            size_t docs = 0;
            reader_.bucket(b, finest ? 0 : static_cast<int64_t>(contract::BUCKET_FULL) + 1, got, docs);
            if (finest || docs <= contract::BUCKET_FULL) {
                for (auto &m : got) merge(std::move(m.second));
                return;
            }
            reader_.hint_big(b);
        }
        std::set<std::string> own;
        if (hints == nullptr || b.level >= 0) {
            own = reader_.big_children(b);
            hints = &own;
        }
        int child = b.level + 1;
        int64_t span = contract::LEVEL[child].span_ms;
        int64_t hi = std::min(bound_ms_, b.end_ms() - 1) / span;
        int64_t lo = std::max(b.start_ms(), contract::EPOCH_MS) / span;
        for (int64_t n = hi; n >= lo && !reader_.failed(); n--) {
            contract::Bucket c{t_->rkey, child, n};
            visit(c, hints->count(contract::hint_id(t_->tenant, c)) > 0, nullptr);
            if (enough()) return;
        }
    }

    void merge(records::Stored &&s) {
        records::Stored &into = found[s.id];
        if (s.has_message) {
            into.id = s.id;
            into.created_ms = s.created_ms;
            into.send_at = s.send_at;
            into.summary = std::move(s.summary);
            into.has_message = true;
            // the message document's events first: they win over a repeat
            into.events.insert(into.events.begin(), std::make_move_iterator(s.events.begin()),
                               std::make_move_iterator(s.events.end()));
            return;
        }
        for (records::Event &e : s.events) into.events.push_back(std::move(e));
    }

    Reader &reader_;
    const ngx_mail_api_task_t *t_;
    int64_t bound_ms_;
};

// ---------------------------------------------------------------- answers

void add_outcome(json_t *o, const records::Event &e) {
    if (!e.provider.empty()) json_object_set_new(o, "provider", json_string(e.provider.c_str()));
    if (e.code) json_object_set_new(o, "code", json_integer(e.code));
    if (!e.reason.empty()) json_object_set_new(o, "reason", json_string(e.reason.c_str()));
    if (!e.bounce.empty()) json_object_set_new(o, "bounce", json_string(e.bounce.c_str()));
    if (!e.response.empty()) json_object_set_new(o, "response", json_string(e.response.c_str()));
}

json_t *events_json(const records::Stored &s, const std::vector<std::string> &rcpts) {
    json_t *arr = json_array();
    for (const records::Event &e : s.events) {
        json_t *o = json_object();
        json_object_set_new(o, "type", json_string(e.type.c_str()));
        json_object_set_new(o, "at", json_string(mailapi::rfc3339_format_ms(e.at_ms).c_str()));
        if (e.rcpt >= 0 && static_cast<size_t>(e.rcpt) < rcpts.size()) {
            json_object_set_new(o, "recipient", json_string(rcpts[static_cast<size_t>(e.rcpt)].c_str()));
        }
        add_outcome(o, e);
        json_array_append_new(arr, o);
    }
    return arr;
}

// What happened to whom: each recipient's state (records::recipient_states).
// The recipient's response through its links (the first: only one is recorded).
void add_response(json_t *o, const records::Stored &s, size_t i) {
    for (const records::Event &e : s.events) {
        if (e.type == mailapi::contract::event::RESPONDED && e.rcpt == static_cast<int>(i) && !e.response.empty()) {
            json_object_set_new(o, "response", json_string(e.response.c_str()));
            json_object_set_new(o, "responded_at", json_string(mailapi::rfc3339_format_ms(e.at_ms).c_str()));
            return;
        }
    }
}

json_t *recipients_json(const records::Stored &s, const std::vector<std::string> &rcpts) {
    json_t *arr = json_array();
    std::vector<records::RecipientState> states = records::recipient_states(s, rcpts.size(), wall_ms());
    for (size_t i = 0; i < rcpts.size(); i++) {
        json_t *o = json_object();
        json_object_set_new(o, "email", json_string(rcpts[i].c_str()));
        json_object_set_new(o, "status", json_string(states[i].status.c_str()));
        if (const records::Event *e = states[i].event) {
            json_object_set_new(o, "at", json_string(mailapi::rfc3339_format_ms(e->at_ms).c_str()));
            add_outcome(o, *e);
        }
        add_response(o, s, i);
        json_array_append_new(arr, o);
    }
    return arr;
}

// Bytes this thread read from the store since it last gave memory back.
thread_local size_t t_read;
constexpr size_t LARGE = 1u << 20;

void add_state(json_t *item, records::Stored &s) {
    json_object_set_new(item, "id", json_string(s.id.c_str()));
    std::vector<std::string> rcpts = records::shown_recipients(item);  // none while only Redis knows it
    json_object_set_new(item, "status", json_string(records::message_status(s, rcpts.size(), wall_ms()).c_str()));
    json_object_set_new(item, "created_at", json_string(mailapi::rfc3339_format_ms(s.created_ms).c_str()));
    json_object_set_new(item, "updated_at", json_string(mailapi::rfc3339_format_ms(records::updated_ms(s)).c_str()));
    if (s.send_at) {
        json_object_set_new(item, "send_at", json_string(mailapi::rfc3339_format_ms(s.send_at * 1000).c_str()));
    }
    if (!rcpts.empty()) json_object_set_new(item, "recipients", recipients_json(s, rcpts));
    json_object_set_new(item, "events", events_json(s, rcpts));
}

// One message as GET shows it: decrypted (attachment contents left out),
// its status and its timeline.
json_t *message_answer(records::Stored &s, const ngx_mail_api_task_t *t) {
    records::finish(s);
    json_t *item = nullptr;
    {
        std::string plain;
        mailapi::Message msg;
        mailapi::FieldError ferr;
        if (mailapi::envelope_open(*t->keyring, mailapi::envelope_aad(t->tenant, s.id), s.envelope, plain) &&
            mailapi::message_parse(plain, mailapi::MessageLimits::stored_summary(), 0, msg, ferr)) {
            item = mailapi::message_json(msg);
        }
    }
    std::string().swap(s.envelope);
    if (item == nullptr) {
        item = json_object();
        json_object_set_new(item, "decrypt_error", json_true());
    }
    add_state(item, s);
    return item;
}

// One message as a list shows it: its summary (no text or html bodies).
json_t *summary_answer(records::Stored &s, const ngx_mail_api_task_t *t) {
    records::finish(s);
    json_t *item = records::summary_open(*t->keyring, t->tenant, s.id, s.summary);
    if (item == nullptr) {
        item = json_object();
        json_object_set_new(item, "decrypt_error", json_true());
    }
    add_state(item, s);
    return item;
}

// Accepted and not picked up yet: what Redis holds. No content: it would
// take the worker's one Redis connection as long as the largest message.
json_t *pending_answer(const ngx_mail_api_task_t *t, records::Stored *stored) {
    records::Stored s;
    s.id = t->message_id;
    s.created_ms = t->created_ms;
    s.send_at = t->send_at;
    if (stored) s.events = std::move(stored->events);
    s.events.push_back({contract::event_id_queued(), contract::event::QUEUED, t->created_ms, "", 0, ""});
    if (t->cancelled_ms) {  // its record is not written yet: what Redis says
        s.events.push_back({contract::event_id_terminal(0), contract::event::CANCELLED, t->cancelled_ms, "", 0,
                            "cancelled through the API"});
    }
    records::finish(s);
    json_t *item = json_object();
    add_state(item, s);
    return item;
}

void answer_error(ngx_mail_api_task_t *t, ngx_uint_t status, const char *code, const char *message) {
    t->status = status;
    t->body = ngx_mail_api_error_json(code, message, "");
}

void answer_unavailable(ngx_mail_api_task_t *t) {
    answer_error(t, NGX_HTTP_SERVICE_UNAVAILABLE, "store_unavailable", "the message store is unavailable, retry later");
}

// DELETE of a message Redis no longer holds: cancelled already (200),
// finished (409), or none of this tenant's (404).
void answer_cancel(Reader &reader, ngx_mail_api_task_t *t, std::map<std::string, records::Stored> &found) {
    auto it = found.find(t->message_id);
    if (reader.failed()) return answer_unavailable(t);
    if (it == found.end() || !it->second.has_message) {
        return answer_error(t, NGX_HTTP_NOT_FOUND, "not_found", "no such message");
    }
    records::finish(it->second);
    if (records::status_of(it->second, wall_ms()) == contract::status::CANCELLED) {
        t->status = NGX_HTTP_OK;
        t->body = "{\"id\":\"" + t->message_id + "\",\"status\":\"cancelled\"}";
        return;
    }
    answer_error(t, NGX_HTTP_CONFLICT, "not_cancellable", "a send of this message has started or it is finished");
}

void read_one(Reader &reader, ngx_mail_api_task_t *t) {
    std::map<std::string, records::Stored> found;
    reader.message(t->message_id, found);
    if (t->cancel) return answer_cancel(reader, t, found);
    auto it = found.find(t->message_id);
    if (reader.failed()) {
        // the store cannot say more, but Redis says it is accepted and not
        // finished (unless it is in the dead letters: its record says failed)
        if (!t->pending || t->dead) return answer_unavailable(t);
        Json item(pending_answer(t, nullptr));
        t->status = NGX_HTTP_OK;
        t->body = dump(item.get());
        return;
    }
    if (it != found.end() && it->second.has_message) {
        Json item(message_answer(it->second, t));
        t->status = NGX_HTTP_OK;
        t->body = dump(item.get());
        return;
    }
    if (t->pending) {
        Json item(pending_answer(t, it != found.end() ? &it->second : nullptr));
        t->status = NGX_HTTP_OK;
        t->body = dump(item.get());
        return;
    }
    if (!t->redis_answered) {
        answer_error(t, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                     "the queue is unavailable: a message accepted a moment ago cannot be told from none");
        return;
    }
    answer_error(t, NGX_HTTP_NOT_FOUND, "not_found", "no such message");
}

void read_list(Reader &reader, ngx_mail_api_task_t *t) {
    Walk walk(reader, t);
    walk.run();
    if (reader.failed()) return answer_unavailable(t);
    std::vector<records::Stored *> page;
    for (auto it = walk.found.rbegin(); it != walk.found.rend(); ++it) {  // ids sort by time
        if (it->second.has_message && (t->cursor.empty() || it->first < t->cursor)) page.push_back(&it->second);
    }
    bool more = page.size() > t->limit;
    if (more) page.resize(t->limit);
    Json items(json_array());
    for (records::Stored *s : page) json_array_append_new(items.get(), summary_answer(*s, t));
    Json out(json_object());
    json_object_set(out.get(), "messages", items.get());
    json_object_set_new(out.get(), "next_cursor",
                        more ? json_string(mailapi::base64url_encode(page.back()->id).c_str()) : json_null());
    t->status = NGX_HTTP_OK;
    t->body = dump(out.get());
}

struct ThreadTask {
    ngx_mail_api_task_t *t;
};

void read_in_thread(void *data, ngx_log_t *log) noexcept {
    ngx_mail_api_task_t *t = static_cast<ThreadTask *>(data)->t;
    try {
        ClientLease lease;
        if (lease.client == nullptr) {
            answer_unavailable(t);
        } else {
            Reader reader(lease.client, t, log);
            if (!t->message_id.empty()) {
                read_one(reader, t);
            } else {
                read_list(reader, t);
            }
            t_read += reader.read_bytes();
            // after an error the connection may be broken, and one that
            // carried a large reply keeps a buffer that large: a new one next time
            lease.discard = reader.failed() || reader.read_bytes() > LARGE;
        }
    } catch (...) {
        t->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        t->body.clear();
    }
    // Large messages pass through buffers that grow by realloc (the driver's
    // reply) and stay in this thread's arena; blocks of 1 MiB and more are
    // mmapped (init_process), the rest is given back here.
    if (t_read > 4 * LARGE) {
        malloc_trim(0);
        t_read = 0;
    }
}

}  // namespace

ngx_int_t ngx_mail_api_store_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept {
    mongoc_init();
    bson_error_t err;
    std::string uri_s(reinterpret_cast<char *>(mcf->mongodb_uri.data), mcf->mongodb_uri.len);
    mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_s.c_str(), &err);
    if (uri == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "mail_api: bad mongodb uri: %s", err.message);
        return NGX_ERROR;
    }
    // A stalled or absent store holds a thread about mail_api_store_timeout
    // (a read checks it before each lookup and after each document, asks the
    // store for the same bound (maxTimeMS), a reply is waited for that
    // long, finding a server and connecting take a sixth of it, at most half
    // a second each); a request gets 503, never hangs.
    auto timeout = static_cast<int32_t>(mcf->store_timeout);
    auto part = std::max<int32_t>(50, std::min<int32_t>(timeout / 6, 500));
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, part);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, part);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, timeout);
    }
    try {
        g_clients = new Clients(uri);
    } catch (...) {
        mongoc_uri_destroy(uri);
        return NGX_ERROR;
    }
    try {
        g_database = new std::string(reinterpret_cast<char *>(mcf->mongodb_database.data),
                                     mcf->mongodb_database.len);
    } catch (...) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

void ngx_mail_api_store_exit() noexcept {
    delete g_clients;
    g_clients = nullptr;
    delete g_database;
    g_database = nullptr;
    mongoc_cleanup();
}

mongoc_client_t *ngx_mail_api_store_take() noexcept {
    try {
        return g_clients ? g_clients->take() : nullptr;
    } catch (...) {
        return nullptr;
    }
}

void ngx_mail_api_store_give(mongoc_client_t *client, bool keep) noexcept {
    try {
        if (g_clients) g_clients->give(client, keep);
    } catch (...) {
        mongoc_client_destroy(client);
    }
}

ngx_int_t ngx_mail_api_store_post(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_mail_api_task_t *t,
                                  ngx_event_handler_pt done) noexcept {
    if (g_clients == nullptr || mcf->thread_pool == nullptr) return NGX_ERROR;
    // A stalled store may hold this many of the pool's threads, no more.
    if (g_reads >= mcf->store_concurrency) return NGX_DECLINED;
    ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, sizeof(ThreadTask));
    if (task == nullptr) return NGX_ERROR;
    static_cast<ThreadTask *>(task->ctx)->t = t;
    task->handler = read_in_thread;
    task->event.data = r;
    task->event.handler = done;
    t->posted = std::chrono::steady_clock::now();
    if (ngx_thread_task_post(mcf->thread_pool, task) != NGX_OK) return NGX_ERROR;
    g_reads++;
    return NGX_OK;
}

void ngx_mail_api_store_task_done() noexcept {
    if (g_reads) g_reads--;
}

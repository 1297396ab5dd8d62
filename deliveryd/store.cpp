#include "store.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include "bson_doc.h"
#include "contract.h"
#include "log.h"

namespace records = mailapi::records;
using mailapi::Bson;

namespace {

constexpr size_t BATCH_MAX = 512;  // operations a writer takes at once
// Two connections: the store converts one batch while it commits the other.
constexpr size_t WRITERS = 2;

struct BulkFree {
    void operator()(mongoc_bulk_operation_t *b) const { mongoc_bulk_operation_destroy(b); }
};
using Bulk = std::unique_ptr<mongoc_bulk_operation_t, BulkFree>;

// Indexes (in insert order) of the write errors that are duplicate keys;
// `other` when any other error is among them.
std::vector<uint32_t> duplicate_key_errors(const bson_t *reply, bool &other) {
    std::vector<uint32_t> out;
    other = false;
    bson_iter_t it, errs;
    if (!bson_iter_init_find(&it, reply, "writeErrors") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &errs)) {
        return out;
    }
    while (bson_iter_next(&errs)) {
        bson_iter_t err, f;
        if (!BSON_ITER_HOLDS_DOCUMENT(&errs) || !bson_iter_recurse(&errs, &err)) continue;
        int64_t code = 0, index = -1;
        if (bson_iter_find_descendant(&err, "code", &f)) code = bson_iter_as_int64(&f);
        bson_iter_recurse(&errs, &err);
        if (bson_iter_find_descendant(&err, "index", &f)) index = bson_iter_as_int64(&f);
        if (code == 11000 && index >= 0) out.push_back(static_cast<uint32_t>(index));
        else other = true;
    }
    return out;
}

enum class Inserted { yes, already, failed };

// Inserts `docs` unordered: per document, inserted, there already (a
// duplicate key) or failed.
std::vector<Inserted> insert_all(mongoc_collection_t *coll, const std::vector<std::unique_ptr<Bson>> &docs,
                                 std::string &error) {
    std::vector<Inserted> ok(docs.size(), Inserted::yes);
    if (docs.empty()) return ok;
    Bson opts, reply;
    BSON_APPEND_BOOL(opts.get(), "ordered", false);
    Bulk bulk(mongoc_collection_create_bulk_operation_with_opts(coll, opts.get()));
    for (const auto &d : docs) mongoc_bulk_operation_insert_with_opts(bulk.get(), d->get(), nullptr, nullptr);
    bson_error_t e;
    if (mongoc_bulk_operation_execute(bulk.get(), reply.get(), &e)) return ok;
    bool other = false;
    std::vector<uint32_t> dups = duplicate_key_errors(reply.get(), other);
    if (other || dups.empty()) {
        // A failed batch: which documents went in is unknown; the caller
        // writes them all again, and those that did go in are duplicates then.
        std::fill(ok.begin(), ok.end(), Inserted::failed);
        error = e.message;
        return ok;
    }
    for (uint32_t i : dups) {
        if (i < ok.size()) ok[i] = Inserted::already;
    }
    return ok;
}

// The ids of the events a message's document holds (a lookup by _id, made
// only when a message's document turned out to exist already).
bool embedded_events(mongoc_collection_t *coll, const std::string &id, std::set<std::string> &out, std::string &error) {
    Bson filter, opts;
    BSON_APPEND_UTF8(filter.get(), records::field::ID, id.c_str());
    BSON_APPEND_INT64(opts.get(), "limit", 1);
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll, filter.get(), opts.get(), nullptr);
    const bson_t *doc;
    std::map<std::string, records::Stored> found;
    while (mongoc_cursor_next(cursor, &doc)) records::read_document(doc, found);
    bson_error_t e;
    bool ok = !mongoc_cursor_error(cursor, &e);
    mongoc_cursor_destroy(cursor);
    if (!ok) {
        error = e.message;
        return false;
    }
    for (const auto &m : found) {
        for (const records::Event &ev : m.second.events) out.insert(ev.id);
    }
    return true;
}

}  // namespace

Store::Store(struct ev_loop *loop, const Config &cfg)
    : loop_(loop), uri_(cfg.mongodb), clock_offset_ms_(int64_t{cfg.retention_clock_offset} * 1000), writers_(WRITERS) {
    ev_async_init(&async_, async_cb);
    async_.data = this;
    ev_async_start(loop_, &async_);
    for (Writer &w : writers_) w.thread = std::thread([this, &w] { run(w); });
}

// Shutting down: writes not done are done again by whoever takes the
// messages over (their entries are not acknowledged), so a writer stuck on
// a stalled store is not waited for past a moment.
Store::~Store() {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
    bool all = exited_cv_.wait_for(lock, std::chrono::seconds(3), [this] { return exited_ == writers_.size(); });
    lock.unlock();
    for (Writer &w : writers_) {
        if (all) {
            w.thread.join();
            w.disconnect();
        } else {
            w.thread.detach();  // its client stays: the process is about to end
        }
    }
    if (!all) {
        log_warn("the store did not answer; unrecorded outcomes are left to the next instance", {});
        abandoned_ = true;
    }
    ev_async_stop(loop_, &async_);
}

void Store::Writer::disconnect() {
    if (messages) mongoc_collection_destroy(messages);
    if (client) mongoc_client_destroy(client);
    messages = nullptr;
    client = nullptr;
}

void Store::write(std::shared_ptr<const RecordWrite> w, WriteDone done) {
    auto op = std::make_unique<Op>();
    op->w = std::move(w);
    op->write_done = std::move(done);
    std::lock_guard<std::mutex> lock(mu_);
    todo_.push_back(std::move(op));
    cv_.notify_one();
}

void Store::lookup(const std::string &tenant, const std::string &id, LookupDone done) {
    auto op = std::make_unique<Op>();
    op->is_write = false;
    op->tenant = tenant;
    op->id = id;
    op->lookup_done = std::move(done);
    std::lock_guard<std::mutex> lock(mu_);
    todo_.push_back(std::move(op));
    cv_.notify_one();
}

void Store::async_cb(struct ev_loop *, ev_async *w, int) noexcept {
    auto *self = static_cast<Store *>(w->data);
    std::deque<std::unique_ptr<Op>> done;
    {
        std::lock_guard<std::mutex> lock(self->mu_);
        done.swap(self->done_);
    }
    for (auto &op : done) {
        if (op->is_write) op->write_done(op->ok, op->error);
        else op->lookup_done(op->ok, op->found);
    }
}

// The indexes every read needs (a store serves nothing else without them);
// once a process, not on every reconnect.
bool Store::prepare(mongoc_client_t *client, const std::string &database, std::string &err) {
    struct Index {
        const char *collection, *field;
    };
    // FerretDB (the tests' and the demo's store) makes these btree indexes
    // its queries never use (they use the GIN indexes t/stack.py creates),
    // and one on rk holds a message's whole array of recipient keys as one
    // entry: past ~51 recipients over PostgreSQL's 2704 bytes, so no record
    // of such a message could be written. There only the scalar ones.
    bool ferretdb = false;
    {
        Bson cmd, reply;
        BSON_APPEND_INT32(cmd.get(), "buildInfo", 1);
        bson_iter_t it;
        ferretdb = mongoc_client_command_simple(client, "admin", cmd.get(), nullptr, reply.get(), nullptr) &&
                   bson_iter_init_find(&it, reply.get(), "ferretdbVersion");
    }
    for (Index ix : {Index{records::MESSAGES, records::field::M}, Index{records::MESSAGES, records::field::RK},
                     Index{records::HINTS, records::field::H}}) {
        if (ferretdb && std::string(ix.field) == records::field::RK) continue;
        mongoc_collection_t *coll = mongoc_client_get_collection(client, database.c_str(), ix.collection);
        Bson cmd, reply;
        bson_t indexes, index, key;
        BSON_APPEND_UTF8(cmd.get(), "createIndexes", ix.collection);
        BSON_APPEND_ARRAY_BEGIN(cmd.get(), "indexes", &indexes);
        BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
        BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
        BSON_APPEND_INT32(&key, ix.field, 1);
        bson_append_document_end(&index, &key);
        BSON_APPEND_UTF8(&index, "name", ix.field);
        bson_append_document_end(&indexes, &index);
        bson_append_array_end(cmd.get(), &indexes);
        bson_error_t e;
        bool ok = mongoc_collection_write_command_with_opts(coll, cmd.get(), nullptr, reply.get(), &e);
        mongoc_collection_destroy(coll);
        if (!ok) {
            err = std::string("cannot create indexes: ") + e.message;
            return false;
        }
    }
    return true;
}

mongoc_client_t *store_client_open(const std::string &uri_text, const char *appname, std::string &database,
                                   std::string &err) {
    bson_error_t e;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_text.c_str(), &e);
    if (uri == nullptr) {
        err = std::string("bad mongodb uri: ") + e.message;
        return nullptr;
    }
    // Bounds a stalled store cannot hold a writer past (the URI may set its own).
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 3000);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 10000);
    }
    const char *db = mongoc_uri_get_database(uri);
    database = db ? db : "mailapi";
    mongoc_client_t *client = mongoc_client_new_from_uri(uri);
    mongoc_uri_destroy(uri);
    if (client == nullptr) {
        err = "cannot create a MongoDB client";
        return nullptr;
    }
    mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_set_appname(client, appname);
    return client;
}

bool Store::connect(Writer &w, std::string &err) {
    if (w.messages) return true;
    std::lock_guard<std::mutex> lock(connect_mu_);
    std::string database;
    mongoc_client_t *client = store_client_open(uri_, "deliveryd", database, err);
    if (client == nullptr) return false;
    if (!prepared_ && !(prepared_ = prepare(client, database, err))) {
        mongoc_client_destroy(client);
        return false;
    }
    w.client = client;
    w.messages = mongoc_client_get_collection(client, database.c_str(), records::MESSAGES);
    return true;
}

void Store::execute(Writer &w, std::vector<std::unique_ptr<Op>> &batch) {
    std::string err;
    if (!connect(w, err)) {
        for (auto &op : batch) op->error = err;
        return;
    }
    // Messages first (and the bodies of large ones): one whose document
    // exists already (a previous life of the message wrote it) has its
    // events written as event documents instead, but for those its document
    // holds already, so that an event id is never written twice.
    std::vector<Op *> firsts, events_of, bodies_of;  // bodies_of: the op of each body and expiry document
    std::vector<std::unique_ptr<Bson>> docs;
    // Retention: what has expired already is not written (a sweep may have
    // deleted the message's other documents: this one would stay behind).
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch()).count() + clock_offset_ms_;
    for (auto &op : batch) {
        if (!op->is_write) continue;
        op->ok = true;
        op->expired = op->w->message.expires_ms > 0 && op->w->message.expires_ms <= now;
        if (op->expired) continue;
        if (!op->w->with_message) {
            events_of.push_back(op.get());
            continue;
        }
        for (auto append : {records::append_expiry, records::append_body}) {
            docs.push_back(std::make_unique<Bson>());
            if (append(docs.back()->get(), op->w->message)) {
                bodies_of.push_back(op.get());
            } else {
                docs.pop_back();
            }
        }
    }
    // a message's expiry and body before the message: the sweeper never
    // misses a message, a reader never finds one without its body
    std::string error;
    std::vector<Inserted> in = insert_all(w.messages, docs, error);
    for (size_t i = 0; i < bodies_of.size(); i++) {
        if (in[i] == Inserted::failed) {
            bodies_of[i]->ok = false;
            bodies_of[i]->error = error;
        }
    }
    docs.clear();
    for (auto &op : batch) {
        if (!op->is_write || !op->w->with_message || !op->ok || op->expired) continue;
        firsts.push_back(op.get());
        docs.push_back(std::make_unique<Bson>());
        records::append_message(docs.back()->get(), op->w->message, op->w->events);
    }
    in = insert_all(w.messages, docs, error);
    docs.clear();
    std::map<Op *, std::set<std::string>> already;  // event ids a message's existing document holds
    for (size_t i = 0; i < firsts.size(); i++) {
        if (in[i] == Inserted::failed) {
            firsts[i]->ok = false;
            firsts[i]->error = error;
        } else if (in[i] == Inserted::already && firsts[i]->ok) {
            if (!embedded_events(w.messages, firsts[i]->w->message.id, already[firsts[i]], error)) {
                firsts[i]->ok = false;
                firsts[i]->error = error;
                continue;
            }
            events_of.push_back(firsts[i]);  // the events did not go in with it
        }
    }
    std::vector<Op *> owner;
    for (Op *op : events_of) {
        auto skip = already.find(op);
        for (const records::Event &e : op->w->events) {
            if (skip != already.end() && skip->second.count(e.id)) continue;
            docs.push_back(std::make_unique<Bson>());
            records::append_event(docs.back()->get(), op->w->message, e);
            owner.push_back(op);
        }
    }
    in = insert_all(w.messages, docs, error);
    for (size_t i = 0; i < owner.size(); i++) {
        if (in[i] == Inserted::failed) {
            owner[i]->ok = false;
            owner[i]->error = error;
        }
    }
    for (auto &op : batch) {
        if (op->is_write) continue;
        Bson filter;
        if (!op->tenant.empty()) BSON_APPEND_UTF8(filter.get(), records::field::TENANT, op->tenant.c_str());
        BSON_APPEND_UTF8(filter.get(), records::field::M, op->id.c_str());
        // its events, never its envelope: a takeover of many large messages
        // looks them all up before max_in_flight_bytes admits any of them
        Bson opts;
        bson_t projection;
        BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &projection);
        BSON_APPEND_INT32(&projection, records::field::ENVELOPE, 0);
        bson_append_document_end(opts.get(), &projection);
        mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(w.messages, filter.get(), opts.get(), nullptr);
        std::map<std::string, records::Stored> found;
        const bson_t *doc;
        while (mongoc_cursor_next(cursor, &doc)) records::read_document(doc, found);
        bson_error_t e;
        op->ok = !mongoc_cursor_error(cursor, &e);
        if (!op->ok) op->error = e.message;
        mongoc_cursor_destroy(cursor);
        auto it = found.find(op->id);
        if (it != found.end()) op->found = std::move(it->second);
    }
}

void Store::run(Writer &w) {
    for (;;) {
        std::vector<std::unique_ptr<Op>> batch;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [this] { return stop_ || !todo_.empty(); });
            if (stop_) {
                exited_++;
                exited_cv_.notify_all();
                return;
            }
            while (!todo_.empty() && batch.size() < BATCH_MAX) {
                batch.push_back(std::move(todo_.front()));
                todo_.pop_front();
            }
        }
        execute(w, batch);
        bool failed = std::any_of(batch.begin(), batch.end(), [](const std::unique_ptr<Op> &op) { return !op->ok; });
        {
            std::lock_guard<std::mutex> lock(mu_);
            for (auto &op : batch) done_.push_back(std::move(op));
        }
        healthy_ = !failed;
        ev_async_send(loop_, &async_);
        if (failed) {
            // the store is down: do not spin; callers retry what failed
            w.disconnect();
            std::this_thread::sleep_for(std::chrono::milliseconds(500));
        }
    }
}

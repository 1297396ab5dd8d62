#include "store.h"

#include <algorithm>
#include <chrono>

#include "log.h"

namespace {

constexpr size_t BATCH_MAX = 1024;  // FerretDB: 6.0k docs/s in 256s, 7.0k in 1024s
// Two connections: FerretDB converts one batch while SQLite commits the other
// (measured 6.2k -> 7.3k documents/s); MongoDB gains the same way.
constexpr size_t WRITERS = 2;

// bson_t is over-aligned, which std::unique_ptr's template argument would drop.
class Bson {
public:
    Bson() { bson_init(&b_); }
    ~Bson() { bson_destroy(&b_); }
    Bson(const Bson &) = delete;
    Bson &operator=(const Bson &) = delete;
    bson_t *get() { return &b_; }

private:
    bson_t b_;
};

void append_events(bson_t *parent, const char *name, const std::vector<RecordEvent> &events) {
    bson_t arr, ev;
    bson_append_array_begin(parent, name, -1, &arr);
    for (size_t i = 0; i < events.size(); i++) {
        const RecordEvent &e = events[i];
        bson_append_document_begin(&arr, std::to_string(i).c_str(), -1, &ev);
        BSON_APPEND_UTF8(&ev, "type", e.type.c_str());
        BSON_APPEND_DATE_TIME(&ev, "at", e.at_ms);
        if (!e.provider.empty()) BSON_APPEND_UTF8(&ev, "provider", e.provider.c_str());
        if (e.code) BSON_APPEND_INT32(&ev, "code", e.code);
        if (!e.reason.empty()) BSON_APPEND_UTF8(&ev, "reason", e.reason.c_str());
        bson_append_document_end(&arr, &ev);
    }
    bson_append_array_end(parent, &arr);
}

void append_rcpt(bson_t *parent, const RecordUpdate &rec) {
    bson_t arr;
    BSON_APPEND_ARRAY_BEGIN(parent, "rcpt", &arr);
    for (size_t i = 0; i < rec.rcpt.size(); i++) {
        bson_append_utf8(&arr, std::to_string(i).c_str(), -1, rec.rcpt[i].c_str(), -1);
    }
    bson_append_array_end(parent, &arr);
}

int64_t updated_at(const RecordUpdate &rec) {
    return rec.events.empty() ? rec.created_ms : rec.events.back().at_ms;
}

void append_document(bson_t *doc, const RecordUpdate &rec) {
    BSON_APPEND_UTF8(doc, "_id", rec.id.c_str());
    BSON_APPEND_UTF8(doc, "tenant", rec.tenant.c_str());
    append_rcpt(doc, rec);
    BSON_APPEND_UTF8(doc, "status", rec.status.c_str());
    BSON_APPEND_DATE_TIME(doc, "created_at", rec.created_ms);
    BSON_APPEND_DATE_TIME(doc, "updated_at", updated_at(rec));
    BSON_APPEND_UTF8(doc, "envelope", rec.envelope.c_str());
    append_events(doc, "events", rec.events);
}

void append_update(bson_t *update, const RecordUpdate &rec) {
    bson_t on_insert, set, push, events;
    BSON_APPEND_DOCUMENT_BEGIN(update, "$setOnInsert", &on_insert);
    BSON_APPEND_UTF8(&on_insert, "tenant", rec.tenant.c_str());
    BSON_APPEND_DATE_TIME(&on_insert, "created_at", rec.created_ms);
    BSON_APPEND_UTF8(&on_insert, "envelope", rec.envelope.c_str());
    append_rcpt(&on_insert, rec);
    bson_append_document_end(update, &on_insert);

    BSON_APPEND_DOCUMENT_BEGIN(update, "$set", &set);
    BSON_APPEND_UTF8(&set, "status", rec.status.c_str());
    BSON_APPEND_DATE_TIME(&set, "updated_at", updated_at(rec));
    bson_append_document_end(update, &set);

    BSON_APPEND_DOCUMENT_BEGIN(update, "$push", &push);
    BSON_APPEND_DOCUMENT_BEGIN(&push, "events", &events);
    append_events(&events, "$each", rec.events);
    bson_append_document_end(&push, &events);
    bson_append_document_end(update, &push);
}

// Indexes (in insert order) of the write errors that are duplicate keys.
std::vector<uint32_t> duplicate_key_errors(const bson_t *reply, bool &other_errors) {
    std::vector<uint32_t> out;
    other_errors = false;
    bson_iter_t it, errs;
    if (!bson_iter_init_find(&it, reply, "writeErrors") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &errs)) {
        return out;
    }
    while (bson_iter_next(&errs)) {
        bson_iter_t err, f;
        if (!BSON_ITER_HOLDS_DOCUMENT(&errs) || !bson_iter_recurse(&errs, &err)) continue;
        int32_t code = 0, index = -1;
        if (bson_iter_find_descendant(&err, "code", &f)) code = bson_iter_as_int64(&f);
        bson_iter_recurse(&errs, &err);
        if (bson_iter_find_descendant(&err, "index", &f)) index = static_cast<int32_t>(bson_iter_as_int64(&f));
        if (code == 11000 && index >= 0) out.push_back(static_cast<uint32_t>(index));
        else other_errors = true;
    }
    return out;
}

}  // namespace

Store::Store(struct ev_loop *loop, const Config &cfg) : loop_(loop), uri_(cfg.mongodb), writers_(WRITERS) {
    ev_async_init(&async_, async_cb);
    async_.data = this;
    ev_async_start(loop_, &async_);
    for (Writer &w : writers_) w.thread = std::thread([this, &w] { run(w); });
}

Store::~Store() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    for (Writer &w : writers_) {
        w.thread.join();
        w.disconnect();
    }
    ev_async_stop(loop_, &async_);
}

void Store::Writer::disconnect() {
    if (coll) mongoc_collection_destroy(coll);
    if (client) mongoc_client_destroy(client);
    coll = nullptr;
    client = nullptr;
}

void Store::write(RecordUpdate rec, WriteDone done) {
    auto op = std::make_unique<Op>();
    op->rec = std::move(rec);
    op->write_done = std::move(done);
    std::lock_guard<std::mutex> lock(mu_);
    todo_.push_back(std::move(op));
    cv_.notify_one();
}

void Store::status(const std::string &id, StatusDone done) {
    auto op = std::make_unique<Op>();
    op->is_write = false;
    op->rec.id = id;
    op->status_done = std::move(done);
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
        if (op->is_write) op->write_done(op->ok, op->result);
        else op->status_done(op->ok, op->result);
    }
}

bool Store::connect(Writer &w, std::string &err) {
    if (w.coll) return true;
    std::lock_guard<std::mutex> lock(connect_mu_);  // one createIndexes at a time
    bson_error_t e;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_.c_str(), &e);
    if (uri == nullptr) {
        err = std::string("bad mongodb uri: ") + e.message;
        return false;
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 3000);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 10000);
    }
    const char *db = mongoc_uri_get_database(uri);
    std::string database = db ? db : "mailapi";
    mongoc_client_t *client = mongoc_client_new_from_uri(uri);
    mongoc_uri_destroy(uri);
    if (client == nullptr) {
        err = "cannot create a MongoDB client";
        return false;
    }
    mongoc_client_set_error_api(client, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_set_appname(client, "deliveryd");
    mongoc_collection_t *coll = mongoc_client_get_collection(client, database.c_str(), "messages");
    // Recover queries: a tenant's messages to one recipient, newest first.
    Bson cmd, reply;
    bson_t indexes, index, key;
    BSON_APPEND_UTF8(cmd.get(), "createIndexes", "messages");
    BSON_APPEND_ARRAY_BEGIN(cmd.get(), "indexes", &indexes);
    BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
    BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
    BSON_APPEND_INT32(&key, "tenant", 1);
    BSON_APPEND_INT32(&key, "rcpt", 1);
    BSON_APPEND_INT32(&key, "created_at", -1);
    bson_append_document_end(&index, &key);
    BSON_APPEND_UTF8(&index, "name", "tenant_rcpt_created");
    bson_append_document_end(&indexes, &index);
    bson_append_array_end(cmd.get(), &indexes);
    if (!mongoc_collection_write_command_with_opts(coll, cmd.get(), nullptr, reply.get(), &e)) {
        err = std::string("cannot create indexes: ") + e.message;
        mongoc_collection_destroy(coll);
        mongoc_client_destroy(client);
        return false;
    }
    w.client = client;
    w.coll = coll;
    return true;
}

void Store::execute(Writer &w, std::vector<std::unique_ptr<Op>> &batch) {
    std::string err;
    if (!connect(w, err)) {
        for (auto &op : batch) op->result = err;
        return;
    }
    bson_error_t e;
    // First outcomes: one unordered bulk insert. A duplicate key means a record
    // exists after all (a previous life of this message): that one is upserted.
    std::vector<Op *> inserts, updates;
    for (auto &op : batch) {
        if (op->is_write) (op->rec.first ? inserts : updates).push_back(op.get());
    }
    if (!inserts.empty()) {
        Bson opts, reply;
        BSON_APPEND_BOOL(opts.get(), "ordered", false);
        mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(w.coll, opts.get());
        for (Op *op : inserts) {
            Bson doc;
            append_document(doc.get(), op->rec);
            mongoc_bulk_operation_insert_with_opts(bulk, doc.get(), nullptr, &e);
        }
        bool ok = mongoc_bulk_operation_execute(bulk, reply.get(), &e) != 0;
        mongoc_bulk_operation_destroy(bulk);
        bool other = !ok;
        std::vector<uint32_t> dups = ok ? std::vector<uint32_t>() : duplicate_key_errors(reply.get(), other);
        if (!ok && !dups.empty() && !other) ok = true;  // only duplicates: those become updates
        for (size_t i = 0; i < inserts.size(); i++) {
            if (std::find(dups.begin(), dups.end(), i) != dups.end()) {
                updates.push_back(inserts[i]);
            } else {
                inserts[i]->ok = ok;
                if (!ok) inserts[i]->result = e.message;
            }
        }
    }
    // Later outcomes: one ordered bulk of upserts appending to the timeline.
    if (!updates.empty()) {
        Bson opts, reply;
        BSON_APPEND_BOOL(opts.get(), "ordered", true);
        mongoc_bulk_operation_t *bulk = mongoc_collection_create_bulk_operation_with_opts(w.coll, opts.get());
        for (Op *op : updates) {
            Bson selector, update, uopts;
            BSON_APPEND_UTF8(selector.get(), "_id", op->rec.id.c_str());
            append_update(update.get(), op->rec);
            BSON_APPEND_BOOL(uopts.get(), "upsert", true);
            mongoc_bulk_operation_update_one_with_opts(bulk, selector.get(), update.get(), uopts.get(), &e);
        }
        bool ok = mongoc_bulk_operation_execute(bulk, reply.get(), &e) != 0;
        mongoc_bulk_operation_destroy(bulk);
        for (Op *op : updates) {
            op->ok = ok;
            if (!ok) op->result = e.message;
        }
    }
    // Status look-ups: one find with $in.
    Bson filter, in_doc, opts;
    bson_t id_filter, arr;
    size_t n = 0;
    BSON_APPEND_DOCUMENT_BEGIN(filter.get(), "_id", &id_filter);
    BSON_APPEND_ARRAY_BEGIN(&id_filter, "$in", &arr);
    for (auto &op : batch) {
        if (op->is_write) continue;
        bson_append_utf8(&arr, std::to_string(n++).c_str(), -1, op->rec.id.c_str(), -1);
    }
    bson_append_array_end(&id_filter, &arr);
    bson_append_document_end(filter.get(), &id_filter);
    if (n == 0) return;
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(w.coll, filter.get(), opts.get(), nullptr);
    const bson_t *doc;
    std::vector<std::pair<std::string, std::string>> found;
    while (mongoc_cursor_next(cursor, &doc)) {
        bson_iter_t it;
        std::string id, status;
        if (bson_iter_init_find(&it, doc, "_id") && BSON_ITER_HOLDS_UTF8(&it)) id = bson_iter_utf8(&it, nullptr);
        if (bson_iter_init_find(&it, doc, "status") && BSON_ITER_HOLDS_UTF8(&it)) status = bson_iter_utf8(&it, nullptr);
        found.emplace_back(id, status);
    }
    bool ok = !mongoc_cursor_error(cursor, &e);
    mongoc_cursor_destroy(cursor);
    for (auto &op : batch) {
        if (op->is_write) continue;
        op->ok = ok;
        op->result = ok ? "" : e.message;
        if (!ok) continue;
        for (auto &f : found) {
            if (f.first == op->rec.id) op->result = f.second;
        }
    }
}

void Store::run(Writer &w) {
    for (;;) {
        std::vector<std::unique_ptr<Op>> batch;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [this] { return stop_ || !todo_.empty(); });
            if (stop_ && todo_.empty()) return;
            while (!todo_.empty() && batch.size() < BATCH_MAX) {
                batch.push_back(std::move(todo_.front()));
                todo_.pop_front();
            }
        }
        execute(w, batch);
        bool failed = std::any_of(batch.begin(), batch.end(), [](const std::unique_ptr<Op> &op) {
            return !op->ok && op->result.find("E11000") == std::string::npos;
        });
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

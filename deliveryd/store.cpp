#include "store.h"

namespace {

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

}  // namespace

Store::~Store() {
    if (coll_) mongoc_collection_destroy(coll_);
    if (client_) mongoc_client_destroy(client_);
}

bool Store::connect(std::string &err) {
    bson_error_t e;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(cfg_.mongodb.c_str(), &e);
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
    client_ = mongoc_client_new_from_uri(uri);
    mongoc_uri_destroy(uri);
    if (client_ == nullptr) {
        err = "cannot create a MongoDB client";
        return false;
    }
    mongoc_client_set_error_api(client_, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_set_appname(client_, "deliveryd");
    coll_ = mongoc_client_get_collection(client_, database.c_str(), "messages");

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
    if (!mongoc_collection_write_command_with_opts(coll_, cmd.get(), nullptr, reply.get(), &e)) {
        err = std::string("cannot create indexes: ") + e.message;
        return false;
    }
    return true;
}

bool Store::write(const Record &rec, std::string &err) {
    Bson selector, doc, opts, reply;
    BSON_APPEND_UTF8(selector.get(), "_id", rec.id.c_str());
    BSON_APPEND_UTF8(doc.get(), "_id", rec.id.c_str());
    BSON_APPEND_UTF8(doc.get(), "tenant", rec.tenant.c_str());
    bson_t arr, ev;
    BSON_APPEND_ARRAY_BEGIN(doc.get(), "rcpt", &arr);
    for (size_t i = 0; i < rec.rcpt.size(); i++) {
        bson_append_utf8(&arr, std::to_string(i).c_str(), -1, rec.rcpt[i].c_str(), -1);
    }
    bson_append_array_end(doc.get(), &arr);
    BSON_APPEND_UTF8(doc.get(), "status", rec.status.c_str());
    BSON_APPEND_DATE_TIME(doc.get(), "created_at", rec.created_ms);
    BSON_APPEND_DATE_TIME(doc.get(), "updated_at", rec.events.empty() ? rec.created_ms : rec.events.back().at_ms);
    BSON_APPEND_UTF8(doc.get(), "envelope", rec.envelope.c_str());
    BSON_APPEND_ARRAY_BEGIN(doc.get(), "events", &arr);
    for (size_t i = 0; i < rec.events.size(); i++) {
        const RecordEvent &e = rec.events[i];
        bson_append_document_begin(&arr, std::to_string(i).c_str(), -1, &ev);
        BSON_APPEND_UTF8(&ev, "type", e.type.c_str());
        BSON_APPEND_DATE_TIME(&ev, "at", e.at_ms);
        if (!e.provider.empty()) BSON_APPEND_UTF8(&ev, "provider", e.provider.c_str());
        if (e.code) BSON_APPEND_INT32(&ev, "code", e.code);
        if (!e.reason.empty()) BSON_APPEND_UTF8(&ev, "reason", e.reason.c_str());
        bson_append_document_end(&arr, &ev);
    }
    bson_append_array_end(doc.get(), &arr);
    BSON_APPEND_BOOL(opts.get(), "upsert", true);
    bson_error_t e;
    if (!mongoc_collection_replace_one(coll_, selector.get(), doc.get(), opts.get(), reply.get(), &e)) {
        err = e.message;
        return false;
    }
    return true;
}

bool Store::status(const std::string &id, std::string &out, std::string &err) {
    Bson filter, opts;
    BSON_APPEND_UTF8(filter.get(), "_id", id.c_str());
    BSON_APPEND_INT64(opts.get(), "limit", 1);
    mongoc_cursor_t *cursor = mongoc_collection_find_with_opts(coll_, filter.get(), opts.get(), nullptr);
    const bson_t *doc;
    out.clear();
    if (mongoc_cursor_next(cursor, &doc)) {
        bson_iter_t it;
        if (bson_iter_init_find(&it, doc, "status") && BSON_ITER_HOLDS_UTF8(&it)) out = bson_iter_utf8(&it, nullptr);
    }
    bson_error_t e;
    bool ok = !mongoc_cursor_error(cursor, &e);
    if (!ok) err = e.message;
    mongoc_cursor_destroy(cursor);
    return ok;
}

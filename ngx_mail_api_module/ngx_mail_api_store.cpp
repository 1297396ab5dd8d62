// Recover: MongoDB queries in an nginx thread pool (libmongoc blocks), with a
// client pool per worker. Decryption and the JSON answer are built in the
// thread too, so the event loop only sends bytes.
#include "ngx_mail_api.h"

#include <jansson.h>
#include <mongoc/mongoc.h>

#include <memory>

#include "base64.h"

namespace {

mongoc_client_pool_t *g_pool;
std::string *g_database;

struct JsonFree {
    void operator()(json_t *j) const { json_decref(j); }
};
using Json = std::unique_ptr<json_t, JsonFree>;

struct ClientLease {
    mongoc_client_pool_t *pool;
    mongoc_client_t *client;
    explicit ClientLease(mongoc_client_pool_t *p) : pool(p), client(mongoc_client_pool_pop(p)) {}
    ~ClientLease() { mongoc_client_pool_push(pool, client); }
    ClientLease(const ClientLease &) = delete;
    ClientLease &operator=(const ClientLease &) = delete;
};

// bson_t is over-aligned, which std::unique_ptr's template argument would drop.
class Bson {
public:
    explicit Bson(bson_t *b) : b_(b) {}
    ~Bson() { bson_destroy(b_); }
    Bson(const Bson &) = delete;
    Bson &operator=(const Bson &) = delete;
    bson_t *get() const { return b_; }

private:
    bson_t *b_;
};

struct CursorFree {
    void operator()(mongoc_cursor_t *c) const { mongoc_cursor_destroy(c); }
};

struct CollectionFree {
    void operator()(mongoc_collection_t *c) const { mongoc_collection_destroy(c); }
};

std::string iso_time(const bson_iter_t *it) {
    return mailapi::rfc3339_format_ms(bson_iter_date_time(it));
}

const char *string_field(const bson_t *doc, const char *name) {
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, name) && BSON_ITER_HOLDS_UTF8(&it)) {
        return bson_iter_utf8(&it, nullptr);
    }
    return "";
}

json_t *events_json(const bson_t *doc) {
    json_t *events = json_array();
    bson_iter_t it, arr;
    if (!bson_iter_init_find(&it, doc, "events") || !BSON_ITER_HOLDS_ARRAY(&it) ||
        !bson_iter_recurse(&it, &arr)) {
        return events;
    }
    while (bson_iter_next(&arr)) {
        bson_iter_t ev;
        if (!BSON_ITER_HOLDS_DOCUMENT(&arr) || !bson_iter_recurse(&arr, &ev)) continue;
        json_t *e = json_object();
        while (bson_iter_next(&ev)) {
            const char *key = bson_iter_key(&ev);
            if (BSON_ITER_HOLDS_UTF8(&ev)) {
                json_object_set_new(e, key, json_string(bson_iter_utf8(&ev, nullptr)));
            } else if (BSON_ITER_HOLDS_DATE_TIME(&ev)) {
                json_object_set_new(e, key, json_string(iso_time(&ev).c_str()));
            } else if (BSON_ITER_HOLDS_INT(&ev)) {
                json_object_set_new(e, key, json_integer(bson_iter_as_int64(&ev)));
            }
        }
        json_array_append_new(events, e);
    }
    return events;
}

// One record as the API shows it: the decrypted message, its state and timeline.
json_t *record_json(const bson_t *doc, const ngx_mail_api_query_t *q, int64_t *created_ms) {
    const char *id = string_field(doc, "_id");
    json_t *item = nullptr;
    std::string plain;
    std::string aad = mailapi::envelope_aad(q->tenant, id);
    mailapi::Message msg;
    mailapi::FieldError ferr;
    if (mailapi::envelope_open(*q->keyring, aad, string_field(doc, "envelope"), plain) &&
        mailapi::message_parse(plain, mailapi::MessageLimits::stored(), 0, msg, ferr)) {
        item = mailapi::message_json(msg);
    }
    if (item == nullptr) {
        item = json_object();
        json_object_set_new(item, "decrypt_error", json_true());
    }
    // Attachment bodies stay out of listings: name, type and size only.
    json_t *atts = json_object_get(item, "attachments");
    size_t i;
    json_t *a;
    json_array_foreach(atts, i, a) {
        json_t *content = json_object_get(a, "content");
        const char *b64 = json_string_value(content);
        size_t len = json_string_length(content), pad = 0;
        if (len >= 1 && b64[len - 1] == '=') pad++;
        if (len >= 2 && b64[len - 2] == '=') pad++;
        json_object_set_new(a, "size", json_integer(static_cast<json_int_t>(len / 4 * 3 - pad)));
        json_object_del(a, "content");
    }
    json_object_set_new(item, "id", json_string(id));
    json_object_set_new(item, "status", json_string(string_field(doc, "status")));
    bson_iter_t it;
    if (bson_iter_init_find(&it, doc, "created_at") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        *created_ms = bson_iter_date_time(&it);
        json_object_set_new(item, "created_at", json_string(iso_time(&it).c_str()));
    }
    if (bson_iter_init_find(&it, doc, "updated_at") && BSON_ITER_HOLDS_DATE_TIME(&it)) {
        json_object_set_new(item, "updated_at", json_string(iso_time(&it).c_str()));
    }
    json_object_set_new(item, "events", events_json(doc));
    return item;
}

std::string dump(json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "";
    free(s);
    return out;
}

void run_query(ngx_mail_api_query_t *q, ngx_log_t *log) {
    ClientLease lease(g_pool);
    std::unique_ptr<mongoc_collection_t, CollectionFree> coll(
        mongoc_client_get_collection(lease.client, g_database->c_str(), "messages"));
    Bson filter(bson_new());
    BSON_APPEND_UTF8(filter.get(), "tenant", q->tenant.c_str());
    bool single = !q->message_id.empty();
    if (single) {
        BSON_APPEND_UTF8(filter.get(), "_id", q->message_id.c_str());
    } else {
        BSON_APPEND_UTF8(filter.get(), "rcpt", q->recipient_index.c_str());
        if (q->cursor_ms) {
            bson_t or_arr, a, b, lt_time, lt_id;
            BSON_APPEND_ARRAY_BEGIN(filter.get(), "$or", &or_arr);
            BSON_APPEND_DOCUMENT_BEGIN(&or_arr, "0", &a);
            BSON_APPEND_DOCUMENT_BEGIN(&a, "created_at", &lt_time);
            BSON_APPEND_DATE_TIME(&lt_time, "$lt", q->cursor_ms);
            bson_append_document_end(&a, &lt_time);
            bson_append_document_end(&or_arr, &a);
            BSON_APPEND_DOCUMENT_BEGIN(&or_arr, "1", &b);
            BSON_APPEND_DATE_TIME(&b, "created_at", q->cursor_ms);
            BSON_APPEND_DOCUMENT_BEGIN(&b, "_id", &lt_id);
            BSON_APPEND_UTF8(&lt_id, "$lt", q->cursor_id.c_str());
            bson_append_document_end(&b, &lt_id);
            bson_append_document_end(&or_arr, &b);
            bson_append_array_end(filter.get(), &or_arr);
        }
    }
    Bson opts(BCON_NEW("sort", "{", "created_at", BCON_INT32(-1), "_id", BCON_INT32(-1), "}",
                       "limit", BCON_INT64(static_cast<int64_t>(single ? 1 : q->limit + 1))));
    std::unique_ptr<mongoc_cursor_t, CursorFree> cursor(
        mongoc_collection_find_with_opts(coll.get(), filter.get(), opts.get(), nullptr));
    Json items(json_array());
    const bson_t *doc;
    int64_t last_ms = 0;
    std::string last_id;
    bool more = false;
    while (mongoc_cursor_next(cursor.get(), &doc)) {
        if (!single && json_array_size(items.get()) == q->limit) {
            more = true;
            break;
        }
        int64_t created = 0;
        json_array_append_new(items.get(), record_json(doc, q, &created));
        last_ms = created;
        last_id = string_field(doc, "_id");
    }
    bson_error_t err;
    if (mongoc_cursor_error(cursor.get(), &err)) {
        // The message of a driver error holds no personal data: hosts and codes.
        ngx_log_error(NGX_LOG_ERR, log, 0, "mail_api: mongodb query failed: %s", err.message);
        q->status = NGX_HTTP_SERVICE_UNAVAILABLE;
        q->body = ngx_mail_api_error_json("store_unavailable",
                                          "the message store is unavailable, retry later", "");
        return;
    }
    if (single) {
        if (json_array_size(items.get()) == 0) {
            q->status = NGX_HTTP_NOT_FOUND;
            q->body = ngx_mail_api_error_json("not_found", "no such message", "");
        } else {
            q->status = NGX_HTTP_OK;
            q->body = dump(json_array_get(items.get(), 0));
        }
        return;
    }
    Json out(json_object());
    json_object_set(out.get(), "messages", items.get());
    if (more) {
        std::string c = std::to_string(last_ms) + ":" + last_id;
        json_object_set_new(out.get(), "next_cursor", json_string(mailapi::base64url_encode(c).c_str()));
    } else {
        json_object_set_new(out.get(), "next_cursor", json_null());
    }
    q->status = NGX_HTTP_OK;
    q->body = dump(out.get());
}

struct QueryTask {
    ngx_mail_api_query_t *q;
};

void query_thread(void *data, ngx_log_t *log) noexcept {
    auto *t = static_cast<QueryTask *>(data);
    try {
        run_query(t->q, log);
    } catch (...) {
        t->q->status = NGX_HTTP_INTERNAL_SERVER_ERROR;
        t->q->body.clear();
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
    // Fail fast when the store is down: a request gets 503, never hangs.
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SERVERSELECTIONTIMEOUTMS, 2000);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_CONNECTTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_CONNECTTIMEOUTMS, 2000);
    }
    if (!mongoc_uri_has_option(uri, MONGOC_URI_SOCKETTIMEOUTMS)) {
        mongoc_uri_set_option_as_int32(uri, MONGOC_URI_SOCKETTIMEOUTMS, 10000);
    }
    g_pool = mongoc_client_pool_new(uri);
    mongoc_uri_destroy(uri);
    if (g_pool == nullptr) return NGX_ERROR;
    mongoc_client_pool_set_error_api(g_pool, MONGOC_ERROR_API_VERSION_2);
    mongoc_client_pool_set_appname(g_pool, "ngx_mail_api");
    try {
        g_database = new std::string(reinterpret_cast<char *>(mcf->mongodb_database.data),
                                     mcf->mongodb_database.len);
    } catch (...) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

void ngx_mail_api_store_exit() noexcept {
    if (g_pool) mongoc_client_pool_destroy(g_pool);
    g_pool = nullptr;
    delete g_database;
    g_database = nullptr;
    mongoc_cleanup();
}

ngx_int_t ngx_mail_api_store_query(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                   ngx_mail_api_query_t *q, ngx_event_handler_pt done) noexcept {
    if (g_pool == nullptr || mcf->thread_pool == nullptr) return NGX_ERROR;
    ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, sizeof(QueryTask));
    if (task == nullptr) return NGX_ERROR;
    static_cast<QueryTask *>(task->ctx)->q = q;
    task->handler = query_thread;
    task->event.data = r;
    task->event.handler = done;
    if (ngx_thread_task_post(mcf->thread_pool, task) != NGX_OK) return NGX_ERROR;
    return NGX_OK;
}

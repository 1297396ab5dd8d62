// Recover: GET /v1/messages/{id} and POST /v1/messages/search.
//
// A message is visible from its 202: while it is accepted and not finished
// Redis holds it ("<stream>:<id>"), and once deliveryd has an outcome the
// store does. GET asks Redis first and the store second, so that a message
// finishing in between (record written, then the hash deleted) is found in
// one or the other. The store is read in the thread pool (ngx_mail_api_store.cpp).
#include "ngx_mail_api.h"

#include <jansson.h>

#include <memory>

#include "base64.h"
#include "contract.h"
#include "ngx_mail_api_parse.h"
#include "token.h"

namespace {

void task_done(ngx_event_t *ev) noexcept {
    auto *r = static_cast<ngx_http_request_t *>(ev->data);
    ngx_mail_api_store_task_done();
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (ctx->keepalive.timer_set) {
        ngx_del_timer(&ctx->keepalive);
    }
    ngx_mail_api_task_t *t = ctx->task;
    if (t->status == NGX_HTTP_SERVICE_UNAVAILABLE) ngx_mail_api_add_header(r, "Retry-After", "1");
    ngx_int_t rc = t->status ? ngx_mail_api_send_json(r, t->status, t->body) : NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_mail_api_finish(r, rc);
}

// Only there to be a timer: an exiting worker (nginx -s reload) waits for
// its timers, not for its thread tasks, and would drop a read under way.
void keepalive_expired(ngx_event_t *ev) noexcept {
    auto *r = static_cast<ngx_http_request_t *>(ev->data);
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "mail_api: a store read outlasts mail_api_store_timeout");
    ngx_add_timer(ev, 1000);
}

// Answers, or returns NGX_DONE with the task under way. The caller holds a
// reference on the request (r->main->count) that the answer gives back.
ngx_int_t post_task(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_mail_api_task_t *t) {
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->task = t;
    switch (ngx_mail_api_store_post(r, mcf, t, task_done)) {
    case NGX_OK:
        ctx->keepalive.handler = keepalive_expired;
        ctx->keepalive.data = r;
        ctx->keepalive.log = r->connection->log;
        ngx_add_timer(&ctx->keepalive, mcf->store_timeout + 1000);
        return NGX_DONE;
    case NGX_DECLINED:
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "store_busy",
                                       "too many reads are waiting for the message store, retry later");
    default:
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                                       "the message store is unavailable, retry later");
    }
}

// ---------------------------------------------------------------- GET /v1/messages/{id}

// Lives until Redis answers, which may be after the lookup timed out and the
// store was asked without it; `r` is then NULL and the reply only frees this.
struct Lookup {
    ngx_http_request_t *r;
    ngx_mail_api_main_conf_t *mcf;
    ngx_mail_api_task_t *task;
    ngx_event_t timer;
};

void lookup_continue(Lookup *l) noexcept {
    ngx_http_request_t *r = l->r;
    l->r = nullptr;
    ngx_int_t rc;
    try {
        rc = post_task(r, l->mcf, l->task);
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc != NGX_DONE) ngx_mail_api_finish(r, rc);
}

std::string reply_field(const redisReply *reply, size_t i) {
    if (reply->elements <= i || reply->element[i]->type != REDIS_REPLY_STRING) return "";
    return std::string(reply->element[i]->str, reply->element[i]->len);
}

void lookup_reply(void *data, redisReply *reply) noexcept {
    auto *l = static_cast<Lookup *>(data);
    if (l->timer.timer_set) {
        ngx_del_timer(&l->timer);
    }
    if (l->r == nullptr) {
        ngx_free(l);
        return;
    }
    ngx_mail_api_task_t *t = l->task;
    try {
        // tenant, created, send_at, dead, cancelled: all NULL when the message is not (or no longer) there
        if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 5) {
            t->redis_answered = true;
            std::string tenant = reply_field(reply, 0);
            if (!tenant.empty() && tenant == t->tenant) {
                t->pending = true;
                t->created_ms = std::atoll(reply_field(reply, 1).c_str());
                t->send_at = std::atoll(reply_field(reply, 2).c_str());
                t->dead = !reply_field(reply, 3).empty();
                t->cancelled_ms = std::atoll(reply_field(reply, 4).c_str());
            }
        }
    } catch (...) {
        t->redis_answered = false;
    }
    lookup_continue(l);
    ngx_free(l);
}

void lookup_timeout(ngx_event_t *ev) noexcept {
    auto *l = static_cast<Lookup *>(ev->data);
    ngx_log_error(NGX_LOG_WARN, l->r->connection->log, 0, "mail_api: redis did not answer a lookup in time");
    lookup_continue(l);  // without Redis; the reply, if it comes, frees `l`
    ngx_mail_api_redis_stalled(l->mcf->redis_timeout);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_get(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t id_s) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_READ, auth, rc)) return rc;
    std::string_view id(reinterpret_cast<char *>(id_s.data), id_s.len);
    if (!mailapi::message_id_valid(id)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such message");
    }
    auto *t = ngx_mail_api_pool_new<ngx_mail_api_task_t>(r->pool);
    if (t == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    t->tenant = auth.key->tenant;
    t->keyring = mcf->keyring;
    t->message_id.assign(id);
    t->timeout = mcf->store_timeout;

    std::string key = mailapi::contract::message_key(
        std::string_view(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len), id);
    namespace f = mailapi::contract::field;
    // not the envelope: the answer shows a queued message's state, and one
    // worker's Redis connection must not carry megabytes for a GET
    const char *argv[] = {"HMGET", key.c_str(), f::TENANT, f::CREATED, f::SEND_AT, f::DEAD, f::CANCELLED};
    constexpr int argc = sizeof argv / sizeof argv[0];
    size_t lens[argc];
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    auto *l = static_cast<Lookup *>(ngx_calloc(sizeof(Lookup), r->connection->log));
    if (l == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    l->r = r;
    l->mcf = mcf;
    l->task = t;
    l->timer.handler = lookup_timeout;
    l->timer.data = l;
    l->timer.log = r->connection->log;
    r->main->count++;
    if (ngx_mail_api_redis_command(argc, argv, lens, lookup_reply, l) != NGX_OK) {
        // Redis is down: the store alone can still answer for finished messages.
        lookup_continue(l);
        ngx_free(l);
        return NGX_DONE;
    }
    ngx_add_timer(&l->timer, mcf->redis_timeout);
    return NGX_DONE;
}

// ---------------------------------------------------------------- DELETE /v1/messages/{id}

namespace {

ngx_int_t cancelled(ngx_http_request_t *r, const std::string &id) {
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"id\":\"" + id + "\",\"status\":\"cancelled\"}");
}

ngx_int_t too_late(ngx_http_request_t *r) {
    return ngx_mail_api_send_error(r, NGX_HTTP_CONFLICT, "not_cancellable",
                                   "a send of this message has started or it is finished");
}

ngx_int_t cancel_reply(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *t = static_cast<ngx_mail_api_task_t *>(data);
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "mail_api: cancel failed: %s", reply->str);
        }
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
    switch (reply->element[0]->integer) {
    case 1:
        return cancelled(r, t->message_id);
    case 2:
        return too_late(r);
    default:  // not waiting in Redis: finished, or unknown
        t->cancel = true;
        t->redis_answered = true;
        return post_task(r, static_cast<ngx_mail_api_main_conf_t *>(
                                ngx_http_get_module_main_conf(r, ngx_mail_api_module)), t);
    }
}

}  // namespace

ngx_int_t ngx_mail_api_handle_cancel(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t id_s) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_SEND, auth, rc)) return rc;
    std::string_view id(reinterpret_cast<char *>(id_s.data), id_s.len);
    if (!mailapi::message_id_valid(id)) return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such message");
    auto *t = ngx_mail_api_pool_new<ngx_mail_api_task_t>(r->pool);
    if (t == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    t->tenant = auth.key->tenant;
    t->keyring = mcf->keyring;
    t->message_id.assign(id);
    t->timeout = mcf->store_timeout;
    std::string stream(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    std::vector<std::string> args = {"EVAL", mailapi::contract::CANCEL_LUA, "3",
                                     mailapi::contract::message_key(stream, id),
                                     mailapi::contract::DEFAULT_SCHEDULED, stream, t->tenant,
                                     std::to_string(ngx_mail_api_now_ms()), t->message_id};
    rc = ngx_mail_api_redis_request(r, mcf, args, cancel_reply, t);
    if (rc == NGX_DONE) r->main->count++;  // the reply's answer gives it back
    return rc;
}

// ---------------------------------------------------------------- POST /v1/messages/search

namespace {

ngx_int_t search_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                      const std::string &body) {
    mailapi::request::SearchQuery q;
    mailapi::request::RequestError e;
    if (!mailapi::request::search_query_parse(body, mcf->max_page_size, q, e)) {
        return ngx_mail_api_send_error(r, static_cast<ngx_uint_t>(e.status), e.code, e.message, e.field);
    }
    auto *t = ngx_mail_api_pool_new<ngx_mail_api_task_t>(r->pool);
    if (t == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    t->tenant = key->tenant;
    t->keyring = mcf->keyring;
    t->limit = q.limit;
    t->cursor = q.cursor;
    t->timeout = mcf->store_timeout;
    t->rkey = mailapi::contract::recipient_key(*mcf->keyring, key->tenant, mailapi::address_normalise(q.recipient));
    // the request body reader holds the reference the answer gives back
    return post_task(r, mcf, t);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_search(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_READ, auth, rc)) return rc;
    if (!ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, auth.key, 4096, search_body);
}

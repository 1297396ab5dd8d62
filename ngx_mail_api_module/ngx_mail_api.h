// Shared declarations of ngx_mail_api_module's parts:
//   ngx_mail_api_module.cpp   the module, its directives, routing
//   ngx_mail_api_http.cpp     answers and request bodies
//   ngx_mail_api_auth.cpp     Bearer tokens, POST /v1/tokens
//   ngx_mail_api_send.cpp     POST /v1/messages
//   ngx_mail_api_recover.cpp  GET /v1/messages/{id}, POST /v1/messages/search
//   ngx_mail_api_events.cpp   POST /v1/events/{source}: providers' event webhooks
//   ngx_mail_api_webhooks.cpp /v1/webhooks: a tenant's outbound webhook endpoints
//   ngx_mail_api_links.cpp    /u/{token}, /r/{token}: recipients' unsubscribe and response links
//   ngx_mail_api_suppressions.cpp /v1/suppressions: a tenant's suppression list
//   ngx_mail_api_erase.cpp    DELETE /v1/recipients: everything of one address erased
//   ngx_mail_api_store.cpp    the store (MongoDB), queried in a thread pool
//   ngx_mail_api_redis.cpp    one Redis connection per worker on the event loop
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_thread_pool.h>
}

#include <hiredis/hiredis.h>

#include <new>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "apikeys.h"
#include "crypto.h"
#include "event_sources.h"
#include "message.h"

extern "C" ngx_module_t ngx_mail_api_module;

struct ngx_mail_api_main_conf_t {
    ngx_flag_t enabled;  // some location has "mail_api"

    std::vector<mailapi::ApiKey> *keys;  // owned, freed by a cf->pool cleanup
    mailapi::Keyring *keyring;           // likewise
    std::vector<mailapi::EventSource> *event_sources;  // likewise; NULL: no POST /v1/events
    ngx_str_t keys_file;
    ngx_str_t keyring_file;
    ngx_str_t event_sources_file;

    ngx_str_t redis_host;  // or a unix socket path
    ngx_int_t redis_port;  // 0 for a unix socket
    ngx_str_t redis_stream;
    ngx_msec_t redis_timeout;
    ngx_msec_t redis_connect_timeout;

    ngx_str_t mongodb_uri;
    ngx_str_t mongodb_database;
    ngx_str_t thread_pool_name;
    ngx_thread_pool_t *thread_pool;
    ngx_msec_t store_timeout;        // a store read gives up after this
    ngx_uint_t store_concurrency;    // store reads under way per worker; more get 503

    ngx_msec_t idempotency_ttl;
    time_t token_max_ttl;
    time_t token_clock_skew;
    size_t max_message_size;
    ngx_uint_t max_recipients;
    ngx_uint_t max_page_size;

    // This service's public URL, where recipients' links point (/u/, /r/);
    // empty: sends may not ask for links.
    ngx_str_t link_url;
    time_t link_ttl;  // how long a link works from the send

    mailapi::MessageLimits *limits;
};

struct ngx_mail_api_loc_conf_t {
    ngx_flag_t enable;
};

struct ngx_mail_api_auth_t {
    const mailapi::ApiKey *key = nullptr;
    unsigned scopes = 0;
};

struct ngx_mail_api_task_t;

// Takes a request body once read: answers, or returns NGX_DONE when it will
// finish the request later.
typedef ngx_int_t (*ngx_mail_api_body_pt)(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                          const mailapi::ApiKey *key, const std::string &body);

// Per request.
struct ngx_mail_api_ctx_t {
    const mailapi::ApiKey *key;
    size_t max_body;
    ngx_mail_api_body_pt on_body;
    ngx_mail_api_task_t *task;  // a store read under way
    ngx_event_t keepalive;      // while it is: keeps an exiting worker waiting
    const void *source;         // POST /v1/events: the mailapi::EventSource
    void *fetch;                // an HTTPS fetch under way (ngx_mail_api_events.cpp)
};

// ---------------------------------------------------------------- helpers

template <typename T>
void ngx_mail_api_delete(void *data) noexcept {
    delete static_cast<T *>(data);
}

// A C++ object owned by an nginx pool: destroyed by the pool's cleanup.
template <typename T, typename... Args>
T *ngx_mail_api_pool_new(ngx_pool_t *pool, Args &&...args) noexcept {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == nullptr) return nullptr;
    T *obj = new (std::nothrow) T(std::forward<Args>(args)...);
    if (obj == nullptr) return nullptr;
    cln->handler = ngx_mail_api_delete<T>;
    cln->data = obj;
    return obj;
}

// The event loop's cached wall time in milliseconds (event handlers only;
// pool threads use mailapi::wall_ms() from common/clock.h).
inline int64_t ngx_mail_api_now_ms() {
    ngx_time_t *tp = ngx_timeofday();
    return static_cast<int64_t>(tp->sec) * 1000 + tp->msec;
}

// ---------------------------------------------------------------- http

ngx_int_t ngx_mail_api_send_json(ngx_http_request_t *r, ngx_uint_t status, const std::string &body) noexcept;
ngx_int_t ngx_mail_api_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const std::string &message, const std::string &field = "") noexcept;
// A small HTML page for a person (a recipient following a link): a title, a
// sentence, and optionally a button that posts back to the same URL.
ngx_int_t ngx_mail_api_send_page(ngx_http_request_t *r, ngx_uint_t status, const std::string &title,
                                 const std::string &text, const char *button = nullptr) noexcept;
std::string ngx_mail_api_error_json(const char *code, const std::string &message, const std::string &field);
bool ngx_mail_api_add_header(ngx_http_request_t *r, const char *key, const std::string &value) noexcept;
bool ngx_mail_api_content_type_json(ngx_http_request_t *r) noexcept;
// Reads the body, at most `max` bytes (else a JSON 413), then calls on_body.
ngx_int_t ngx_mail_api_read_body(ngx_http_request_t *r, const mailapi::ApiKey *key, size_t max,
                                 ngx_mail_api_body_pt on_body) noexcept;
// The first request header of that name (any case), or "".
std::string_view ngx_mail_api_header(ngx_http_request_t *r, std::string_view name) noexcept;
// Finalizes a request from an event handler outside nginx's HTTP core.
void ngx_mail_api_finish(ngx_http_request_t *r, ngx_int_t rc) noexcept;
ngx_mail_api_ctx_t *ngx_mail_api_ctx(ngx_http_request_t *r) noexcept;  // created on first use

// ---------------------------------------------------------------- handlers

// True with `auth` set; otherwise the request was answered and `rc` is what
// answering returned (which may itself be NGX_OK).
bool ngx_mail_api_authenticate(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need,
                               ngx_mail_api_auth_t &auth, ngx_int_t &rc);
ngx_int_t ngx_mail_api_handle_tokens(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);
ngx_int_t ngx_mail_api_handle_send(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);
ngx_int_t ngx_mail_api_handle_get(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t id);
ngx_int_t ngx_mail_api_handle_cancel(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t id);
ngx_int_t ngx_mail_api_handle_search(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);
ngx_int_t ngx_mail_api_handle_events(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t source);
ngx_int_t ngx_mail_api_handle_link(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, char kind,
                                   std::string_view token);
ngx_int_t ngx_mail_api_handle_suppressions(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);
ngx_int_t ngx_mail_api_handle_erase(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);
// /v1/webhooks and below: `rest` is what follows "/v1/webhooks" ("" or "/{id}[/action]" without its "/").
ngx_int_t ngx_mail_api_handle_webhooks(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, std::string_view rest);

// ---------------------------------------------------------------- redis

typedef void (*ngx_mail_api_redis_handler_pt)(void *data, redisReply *reply);

ngx_int_t ngx_mail_api_redis_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept;
void ngx_mail_api_redis_exit() noexcept;
bool ngx_mail_api_redis_ready() noexcept;
// Sends one command; `handler` is called exactly once, with NULL when the
// connection failed. Returns NGX_ERROR (and never calls handler) when there is
// no connection.
ngx_int_t ngx_mail_api_redis_command(int argc, const char **argv, const size_t *lens,
                                     ngx_mail_api_redis_handler_pt handler, void *data) noexcept;
// Queues one request's commands in this loop turn's transaction (MULTI ...
// EXEC, sent when the turn ends, so that its sends share one AOF fsync):
// `handler` gets the reply of the last of them, or the first error among
// them, or NULL if the connection was lost first.
struct ngx_mail_api_redis_cmd_t {
    int argc;
    const char *const *argv;
    const size_t *lens;
};
ngx_int_t ngx_mail_api_redis_transact(const ngx_mail_api_redis_cmd_t *cmds, ngx_uint_t n,
                                      ngx_mail_api_redis_handler_pt handler, void *data) noexcept;
// A command whose reply answers request `r`: `on_reply(r, reply, data)`
// returns what the request finishes with (reply NULL: Redis failed). After
// mail_api_redis_timeout the request gets 503 queue_unavailable and a later
// reply is dropped. Returns NGX_DONE, or an error already answered.
typedef ngx_int_t (*ngx_mail_api_reply_pt)(ngx_http_request_t *r, redisReply *reply, void *data);
ngx_int_t ngx_mail_api_redis_request(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                     const std::vector<std::string> &args, ngx_mail_api_reply_pt on_reply,
                                     void *data) noexcept;
// The enqueue script's SHA1; the script is loaded on every new connection.
const char *ngx_mail_api_enqueue_sha() noexcept;
// Loads the script again (after Redis answered NOSCRIPT).
void ngx_mail_api_redis_load_script() noexcept;
// Called when a command timed out: drops a connection that has gone quiet so
// that the next request finds a fresh one.
void ngx_mail_api_redis_stalled(ngx_msec_t timeout) noexcept;

// ---------------------------------------------------------------- store

ngx_int_t ngx_mail_api_store_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept;
void ngx_mail_api_store_exit() noexcept;

// A store read, run in the thread pool. The request keeps it alive (and is
// kept alive) until `done` runs on the event loop.
struct ngx_mail_api_task_t {
    // in
    std::string tenant;
    std::string message_id;      // one message, or
    std::string rkey;            // a recipient's key (contract::recipient_key)
    std::string cursor;          // list: the last message id seen ("" = first page)
    ngx_uint_t limit = 0;
    const mailapi::Keyring *keyring = nullptr;
    ngx_msec_t timeout = 0;
    // when it was given to the thread pool: the timeout counts from then,
    // however long it waited there for a thread
    std::chrono::steady_clock::time_point posted;
    // one message: what Redis holds while it is accepted and not finished
    bool redis_answered = false;
    bool pending = false;
    bool dead = false;  // pending in the dead letters: its record says failed
    int64_t cancelled_ms = 0;  // cancelled then, its record not written yet
    // DELETE /v1/messages/{id}: Redis no longer holds it; what the store
    // holds answers whether it was cancelled (200), finished (409) or is unknown (404)
    bool cancel = false;
    int64_t created_ms = 0, send_at = 0;
    // out
    ngx_uint_t status = 0;
    std::string body;  // JSON
};

// Runs the task in the thread pool and calls `done(r)` on the event loop;
// NGX_DECLINED when this worker already has store_concurrency reads under way.
ngx_int_t ngx_mail_api_store_post(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_mail_api_task_t *t,
                                  ngx_event_handler_pt done) noexcept;
// A connection to the store for work of a thread's own (erasure): taken in
// the thread, given back there (keep false after an error).
struct _mongoc_client_t;
_mongoc_client_t *ngx_mail_api_store_take() noexcept;
void ngx_mail_api_store_give(_mongoc_client_t *client, bool keep) noexcept;
// Called by `done`: the read is over.
void ngx_mail_api_store_task_done() noexcept;

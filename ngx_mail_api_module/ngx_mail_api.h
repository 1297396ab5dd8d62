// Shared declarations of ngx_mail_api_module's parts: configuration, the
// per-worker Redis connection, and the MongoDB store run in a thread pool.
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_thread_pool.h>
}

#include <hiredis/hiredis.h>

#include <string>
#include <vector>

#include "apikeys.h"
#include "crypto.h"
#include "message.h"

extern "C" ngx_module_t ngx_mail_api_module;

struct ngx_mail_api_main_conf_t {
    ngx_flag_t enabled;  // some location has "mail_api"

    std::vector<mailapi::ApiKey> *keys;  // owned, freed by a cf->pool cleanup
    mailapi::Keyring *keyring;           // likewise
    ngx_str_t keys_file;
    ngx_str_t keyring_file;

    ngx_str_t redis_host;  // or a unix socket path
    ngx_int_t redis_port;  // 0 for a unix socket
    ngx_str_t redis_stream;
    ngx_msec_t redis_timeout;
    ngx_msec_t redis_connect_timeout;

    ngx_str_t mongodb_uri;
    ngx_str_t mongodb_database;
    ngx_str_t thread_pool_name;
    ngx_thread_pool_t *thread_pool;

    ngx_msec_t idempotency_ttl;
    time_t token_max_ttl;
    time_t token_clock_skew;
    size_t max_message_size;
    ngx_uint_t max_recipients;
    ngx_uint_t max_page_size;

    mailapi::MessageLimits *limits;
};

struct ngx_mail_api_loc_conf_t {
    ngx_flag_t enable;
};

// Per request.
struct ngx_mail_api_auth_t {
    const mailapi::ApiKey *key = nullptr;
    unsigned scopes = 0;
};

struct ngx_mail_api_query_t;

// Takes a request body once read: answers, or returns NGX_DONE when it will
// finish the request later.
typedef ngx_int_t (*ngx_mail_api_body_pt)(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                          const mailapi::ApiKey *key, const std::string &body);

struct ngx_mail_api_ctx_t {
    const mailapi::ApiKey *key;
    ngx_mail_api_query_t *query;
    size_t max_body;
    ngx_mail_api_body_pt on_body;
};

// True with `auth` set; otherwise the request was answered and `rc` is what
// answering returned (which may itself be NGX_OK).
bool ngx_mail_api_authenticate(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need,
                               ngx_mail_api_auth_t &auth, ngx_int_t &rc);
bool ngx_mail_api_content_type_json(ngx_http_request_t *r) noexcept;
// The body as one string, from memory buffers and, for large bodies, nginx's
// temp file; NGX_HTTP_REQUEST_ENTITY_TOO_LARGE past `max`.
ngx_int_t ngx_mail_api_body_string(ngx_http_request_t *r, size_t max, std::string &out);
// Reads the body, at most `max` bytes (else a JSON 413), then calls on_body.
ngx_int_t ngx_mail_api_read_body(ngx_http_request_t *r, const mailapi::ApiKey *key, size_t max,
                                 ngx_mail_api_body_pt on_body) noexcept;
// Finalizes a request from an event handler outside nginx's HTTP core.
void ngx_mail_api_finish(ngx_http_request_t *r, ngx_int_t rc) noexcept;
bool ngx_mail_api_add_header(ngx_http_request_t *r, const char *key, const std::string &value) noexcept;

// POST /v1/messages
ngx_int_t ngx_mail_api_handle_send(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf);

// Redis: one connection per worker on nginx's event loop.
typedef void (*ngx_mail_api_redis_handler_pt)(void *data, redisReply *reply);

ngx_int_t ngx_mail_api_redis_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept;
void ngx_mail_api_redis_exit() noexcept;
bool ngx_mail_api_redis_ready() noexcept;
// Sends one command; `handler` is called exactly once, with NULL when the
// connection failed. Returns NGX_ERROR (and never calls handler) when there is
// no connection.
ngx_int_t ngx_mail_api_redis_command(int argc, const char **argv, const size_t *lens,
                                     ngx_mail_api_redis_handler_pt handler, void *data) noexcept;
// The enqueue script (Lua), loaded on every new connection.
extern const char ngx_mail_api_enqueue_script[];
const char *ngx_mail_api_enqueue_sha() noexcept;
// Loads the script again (after Redis answered NOSCRIPT).
void ngx_mail_api_redis_load_script() noexcept;
// Called when a command timed out: drops a connection that has gone quiet so
// that the next request finds a fresh one.
void ngx_mail_api_redis_stalled(ngx_msec_t timeout) noexcept;

// MongoDB: a client pool per worker, queried in an nginx thread pool.
ngx_int_t ngx_mail_api_store_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept;
void ngx_mail_api_store_exit() noexcept;

struct ngx_mail_api_query_t {
    // in
    std::string tenant;
    std::string message_id;      // one message, or
    std::string recipient_index; // the blind index of a recipient
    int64_t cursor_ms;           // list: created_at of the last item seen, 0 = first page
    std::string cursor_id;
    ngx_uint_t limit;
    const mailapi::Keyring *keyring;
    // out
    ngx_uint_t status;
    std::string body;            // JSON
};

// Runs `q` in the thread pool and calls `done(r)` on the event loop.
ngx_int_t ngx_mail_api_store_query(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                   ngx_mail_api_query_t *q, ngx_event_handler_pt done) noexcept;

// Responses.
ngx_int_t ngx_mail_api_send_json(ngx_http_request_t *r, ngx_uint_t status,
                                 const std::string &body) noexcept;
ngx_int_t ngx_mail_api_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const std::string &message, const std::string &field = "") noexcept;
std::string ngx_mail_api_error_json(const char *code, const std::string &message,
                                    const std::string &field);

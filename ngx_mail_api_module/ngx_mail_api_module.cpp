// ngx_mail_api_module: the HTTP API of the transactional e-mail service.
//
//   POST /v1/tokens          API key (Basic) -> time-limited token
//   POST /v1/messages        validate, encrypt, XADD to Redis, 202 once Redis acked
//   GET  /v1/messages        messages to a recipient (MongoDB, in a thread pool)
//   GET  /v1/messages/{id}   one message
//   GET  /healthz            liveness and dependency state
#include "ngx_mail_api.h"

#include <jansson.h>
#include <mongoc/mongoc.h>
#include <openssl/crypto.h>

#include <memory>
#include <new>

#include "base64.h"
#include "token.h"

namespace {

// ---------------------------------------------------------------- conf

void *create_main_conf(ngx_conf_t *cf) noexcept;
char *init_main_conf(ngx_conf_t *cf, void *conf) noexcept;
void *create_loc_conf(ngx_conf_t *cf) noexcept;
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept;
char *set_mail_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_keyring(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_mongodb(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
ngx_int_t init_process(ngx_cycle_t *cycle) noexcept;
void exit_process(ngx_cycle_t *cycle) noexcept;

ngx_command_t commands[] = {
    {ngx_string("mail_api"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS, set_mail_api,
     NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("mail_api_keys"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_keys,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("mail_api_keyring"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_keyring,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("mail_api_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_redis,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("mail_api_redis_stream"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_mail_api_main_conf_t, redis_stream), nullptr},
    {ngx_string("mail_api_redis_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, redis_timeout), nullptr},
    {ngx_string("mail_api_redis_connect_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, redis_connect_timeout), nullptr},
    {ngx_string("mail_api_mongodb"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_mongodb,
     NGX_HTTP_MAIN_CONF_OFFSET, 0, nullptr},
    {ngx_string("mail_api_thread_pool"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_mail_api_main_conf_t, thread_pool_name), nullptr},
    {ngx_string("mail_api_idempotency_ttl"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, idempotency_ttl), nullptr},
    {ngx_string("mail_api_token_max_ttl"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, token_max_ttl), nullptr},
    {ngx_string("mail_api_token_clock_skew"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_sec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, token_clock_skew), nullptr},
    {ngx_string("mail_api_max_message_size"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, max_message_size), nullptr},
    {ngx_string("mail_api_max_recipients"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, max_recipients), nullptr},
    {ngx_string("mail_api_max_page_size"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, max_page_size), nullptr},
    ngx_null_command};

ngx_http_module_t module_ctx = {
    nullptr,          // preconfiguration
    nullptr,          // postconfiguration
    create_main_conf, // create main configuration
    init_main_conf,   // init main configuration
    nullptr,          // create server configuration
    nullptr,          // merge server configuration
    create_loc_conf,  // create location configuration
    merge_loc_conf    // merge location configuration
};

}  // namespace

extern "C" {
ngx_module_t ngx_mail_api_module = {
    NGX_MODULE_V1,
    &module_ctx,   // module context
    commands,      // module directives
    NGX_HTTP_MODULE,
    nullptr,       // init master
    nullptr,       // init module
    init_process,  // init process
    nullptr,       // init thread
    nullptr,       // exit thread
    exit_process,  // exit process
    nullptr,       // exit master
    NGX_MODULE_V1_PADDING};
}

namespace {

std::string to_string(const ngx_str_t &s) {
    return std::string(reinterpret_cast<const char *>(s.data), s.len);
}

template <typename T>
void delete_cleanup(void *data) noexcept {
    delete static_cast<T *>(data);
}

// A C++ object owned by an nginx pool: destroyed by the pool's cleanup.
template <typename T, typename... Args>
T *pool_new(ngx_pool_t *pool, Args &&...args) noexcept {
    ngx_pool_cleanup_t *cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == nullptr) return nullptr;
    T *obj = new (std::nothrow) T(std::forward<Args>(args)...);
    if (obj == nullptr) return nullptr;
    cln->handler = delete_cleanup<T>;
    cln->data = obj;
    return obj;
}

void *create_main_conf(ngx_conf_t *cf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(
        ngx_pcalloc(cf->pool, sizeof(ngx_mail_api_main_conf_t)));
    if (mcf == nullptr) return nullptr;
    mcf->enabled = 0;
    mcf->redis_port = NGX_CONF_UNSET;
    mcf->redis_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_connect_timeout = NGX_CONF_UNSET_MSEC;
    mcf->idempotency_ttl = NGX_CONF_UNSET_MSEC;
    mcf->token_max_ttl = NGX_CONF_UNSET;
    mcf->token_clock_skew = NGX_CONF_UNSET;
    mcf->max_message_size = NGX_CONF_UNSET_SIZE;
    mcf->max_recipients = NGX_CONF_UNSET_UINT;
    mcf->max_page_size = NGX_CONF_UNSET_UINT;
    return mcf;
}

char *init_main_conf(ngx_conf_t *cf, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    ngx_conf_init_msec_value(mcf->redis_timeout, 2000);
    ngx_conf_init_msec_value(mcf->redis_connect_timeout, 1000);
    ngx_conf_init_msec_value(mcf->idempotency_ttl, 86400000);
    ngx_conf_init_value(mcf->token_max_ttl, 86400);
    ngx_conf_init_value(mcf->token_clock_skew, 30);
    ngx_conf_init_size_value(mcf->max_message_size, 10 * 1024 * 1024);
    ngx_conf_init_uint_value(mcf->max_recipients, 50);
    ngx_conf_init_uint_value(mcf->max_page_size, 100);
    if (mcf->redis_stream.data == nullptr) {
        ngx_str_set(&mcf->redis_stream, "mailapi:messages");
    }
    if (mcf->thread_pool_name.data == nullptr) {
        ngx_str_set(&mcf->thread_pool_name, "default");
    }
    if (!mcf->enabled) return NGX_CONF_OK;

    const char *missing = mcf->keys == nullptr        ? "mail_api_keys"
                          : mcf->keyring == nullptr   ? "mail_api_keyring"
                          : mcf->redis_host.data == nullptr ? "mail_api_redis"
                          : mcf->mongodb_uri.data == nullptr ? "mail_api_mongodb"
                                                          : nullptr;
    if (missing) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "\"mail_api\" is used but \"%s\" is not set", missing);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->max_recipients == 0 || mcf->max_recipients > 1000) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "\"mail_api_max_recipients\" must be 1..1000");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->token_max_ttl <= 0) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "\"mail_api_token_max_ttl\" must be positive");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->max_page_size == 0 || mcf->max_page_size > 1000) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "\"mail_api_max_page_size\" must be 1..1000");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    mcf->thread_pool = ngx_thread_pool_add(cf, &mcf->thread_pool_name);
    if (mcf->thread_pool == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    mcf->limits = pool_new<mailapi::MessageLimits>(cf->pool);
    if (mcf->limits == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    mcf->limits->max_recipients = mcf->max_recipients;
    return NGX_CONF_OK;
}

void *create_loc_conf(ngx_conf_t *cf) noexcept {
    auto *lcf = static_cast<ngx_mail_api_loc_conf_t *>(ngx_pcalloc(cf->pool, sizeof(ngx_mail_api_loc_conf_t)));
    if (lcf == nullptr) return nullptr;
    lcf->enable = NGX_CONF_UNSET;
    return lcf;
}

char *merge_loc_conf(ngx_conf_t *, void *parent, void *child) noexcept {
    auto *prev = static_cast<ngx_mail_api_loc_conf_t *>(parent);
    auto *conf = static_cast<ngx_mail_api_loc_conf_t *>(child);
    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    return NGX_CONF_OK;
}

ngx_int_t handler(ngx_http_request_t *r) noexcept;

char *set_mail_api(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *lcf = static_cast<ngx_mail_api_loc_conf_t *>(conf);
    if (lcf->enable != NGX_CONF_UNSET) return const_cast<char *>("is duplicate");
    lcf->enable = 1;
    auto *clcf = static_cast<ngx_http_core_loc_conf_t *>(ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = handler;
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_conf_get_module_main_conf(cf, ngx_mail_api_module));
    mcf->enabled = 1;
    return NGX_CONF_OK;
}

// Reads a file named by a directive, resolved against the prefix like nginx's own paths.
bool read_conf_file(ngx_conf_t *cf, ngx_command_t *cmd, ngx_str_t *name, std::string &out) noexcept {
    ngx_str_t *value = static_cast<ngx_str_t *>(cf->args->elts);
    *name = value[1];
    if (ngx_conf_full_name(cf->cycle, name, 0) != NGX_OK) return false;
    ngx_fd_t fd = ngx_open_file(name->data, NGX_FILE_RDONLY, NGX_FILE_OPEN, 0);
    if (fd == NGX_INVALID_FILE) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "\"%V\": cannot open \"%V\"", &cmd->name, name);
        return false;
    }
    try {
        char buf[4096];
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, ngx_errno, "read \"%V\" failed", name);
                ngx_close_file(fd);
                return false;
            }
            if (n == 0) break;
            out.append(buf, static_cast<size_t>(n));
            if (out.size() > 16 * 1024 * 1024) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" is larger than 16 MiB", name);
                ngx_close_file(fd);
                return false;
            }
        }
    } catch (...) {
        ngx_close_file(fd);
        return false;
    }
    ngx_close_file(fd);
    return true;
}

// Loads a file of secrets named by a directive into a pool-owned object and
// wipes the text it was read into, on success and failure alike.
template <typename T>
char *load_secrets(ngx_conf_t *cf, ngx_command_t *cmd, ngx_str_t *name, T *&obj,
                   bool (*parse)(std::string_view, T &, std::string &)) noexcept {
    if (obj) return const_cast<char *>("is duplicate");
    std::string text, err;
    bool ok = read_conf_file(cf, cmd, name, text) && (obj = pool_new<T>(cf->pool)) != nullptr;
    try {
        if (ok && !parse(text, *obj, err)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" \"%V\" %s", &cmd->name, name, err.c_str());
            ok = false;
        }
    } catch (...) {
        ok = false;
    }
    OPENSSL_cleanse(text.data(), text.size());
    return ok ? NGX_CONF_OK : static_cast<char *>(NGX_CONF_ERROR);
}

char *set_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    return load_secrets(cf, cmd, &mcf->keys_file, mcf->keys, mailapi::apikeys_parse);
}

char *set_keyring(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    return load_secrets(cf, cmd, &mcf->keyring_file, mcf->keyring, mailapi::keyring_parse);
}

// "host:port", "host" (port 6379) or "unix:/path".
char *set_redis(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    if (mcf->redis_host.data) return const_cast<char *>("is duplicate");
    ngx_str_t v = static_cast<ngx_str_t *>(cf->args->elts)[1];
    ngx_str_t host = v;
    ngx_int_t port = 6379;
    if (v.len > 5 && ngx_strncmp(v.data, "unix:", 5) == 0) {
        host.data = v.data + 5;
        host.len = v.len - 5;
        port = 0;
    } else {
        u_char *colon = static_cast<u_char *>(ngx_strlchr(v.data, v.data + v.len, ':'));
        if (colon) {
            host.len = static_cast<size_t>(colon - v.data);
            port = ngx_atoi(colon + 1, static_cast<size_t>(v.data + v.len - colon - 1));
            if (port < 1 || port > 65535) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid port in \"%V\"", &v);
                return static_cast<char *>(NGX_CONF_ERROR);
            }
        }
        if (host.len == 0) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "no host in \"%V\"", &v);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    }
    mcf->redis_host.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, host.len + 1));
    if (mcf->redis_host.data == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    ngx_cpystrn(mcf->redis_host.data, host.data, host.len + 1);
    mcf->redis_host.len = host.len;
    mcf->redis_port = port;
    return NGX_CONF_OK;
}

char *set_mongodb(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    if (mcf->mongodb_uri.data) return const_cast<char *>("is duplicate");
    ngx_str_t v = static_cast<ngx_str_t *>(cf->args->elts)[1];
    std::string uri_s;
    try {
        uri_s = to_string(v);
    } catch (...) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    bson_error_t err;
    mongoc_uri_t *uri = mongoc_uri_new_with_error(uri_s.c_str(), &err);
    if (uri == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid MongoDB URI: %s", err.message);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    const char *db = mongoc_uri_get_database(uri);
    if (db == nullptr) db = "mailapi";
    mcf->mongodb_database.len = ngx_strlen(db);
    mcf->mongodb_database.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, mcf->mongodb_database.len + 1));
    if (mcf->mongodb_database.data == nullptr) {
        mongoc_uri_destroy(uri);
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    ngx_cpystrn(mcf->mongodb_database.data, reinterpret_cast<u_char *>(const_cast<char *>(db)), mcf->mongodb_database.len + 1);
    mongoc_uri_destroy(uri);
    mcf->mongodb_uri = v;
    return NGX_CONF_OK;
}

ngx_mail_api_main_conf_t *cycle_main_conf(ngx_cycle_t *cycle) noexcept {
    auto *ctx = reinterpret_cast<ngx_http_conf_ctx_t *>(cycle->conf_ctx[ngx_http_module.index]);
    if (ctx == nullptr) return nullptr;
    return static_cast<ngx_mail_api_main_conf_t *>(ctx->main_conf[ngx_mail_api_module.ctx_index]);
}

ngx_int_t init_process(ngx_cycle_t *cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) return NGX_OK;
    ngx_mail_api_main_conf_t *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || !mcf->enabled) return NGX_OK;
    if (ngx_mail_api_store_init(cycle, mcf) != NGX_OK) return NGX_ERROR;
    return ngx_mail_api_redis_init(cycle, mcf);
}

void exit_process(ngx_cycle_t *cycle) noexcept {
    ngx_mail_api_main_conf_t *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || !mcf->enabled) return;
    ngx_mail_api_redis_exit();
    ngx_mail_api_store_exit();
}

// ---------------------------------------------------------------- responses

}  // namespace

bool ngx_mail_api_add_header(ngx_http_request_t *r, const char *key, const std::string &value) noexcept {
    ngx_table_elt_t *h = static_cast<ngx_table_elt_t *>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) return false;
    u_char *v = static_cast<u_char *>(ngx_pnalloc(r->pool, value.size()));
    if (v == nullptr) return false;
    ngx_memcpy(v, value.data(), value.size());
    h->hash = 1;
    h->key.data = reinterpret_cast<u_char *>(const_cast<char *>(key));
    h->key.len = ngx_strlen(key);
    h->value.data = v;
    h->value.len = value.size();
    return true;
}

std::string ngx_mail_api_error_json(const char *code, const std::string &message,
                                    const std::string &field) {
    json_t *err = json_object();
    json_object_set_new(err, "code", json_string(code));
    json_object_set_new(err, "message", json_stringn(message.data(), message.size()));
    if (!field.empty()) json_object_set_new(err, "field", json_stringn(field.data(), field.size()));
    json_t *root = json_object();
    json_object_set_new(root, "error", err);
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    std::string out = s ? s : "{\"error\":{\"code\":\"internal\",\"message\":\"internal error\"}}";
    free(s);
    return out;
}

ngx_int_t ngx_mail_api_send_json(ngx_http_request_t *r, ngx_uint_t status, const std::string &body) noexcept {
    // An answer before the body was read: drop the body so that keep-alive
    // does not read it as the next request. A no-op once it was read.
    if (ngx_http_discard_request_body(r) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    r->headers_out.status = status;
    r->headers_out.content_length_n = static_cast<off_t>(body.size());
    ngx_str_set(&r->headers_out.content_type, "application/json");
    r->headers_out.content_type_len = r->headers_out.content_type.len;
    r->headers_out.content_type_lowcase = nullptr;
    // Answers hold personal data or credentials: never cache them.
    if (!ngx_mail_api_add_header(r, "Cache-Control", "no-store")) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) return rc;
    ngx_buf_t *b = ngx_create_temp_buf(r->pool, body.size() ? body.size() : 1);
    if (b == nullptr) return NGX_ERROR;
    b->last = ngx_cpymem(b->pos, body.data(), body.size());
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t ngx_mail_api_send_error(ngx_http_request_t *r, ngx_uint_t status, const char *code,
                                  const std::string &message, const std::string &field) noexcept {
    try {
        if (status == NGX_HTTP_UNAUTHORIZED) {
            ngx_mail_api_add_header(r, "WWW-Authenticate", "Bearer error=\"invalid_token\"");
        } else if (status == NGX_HTTP_FORBIDDEN && ngx_strcmp(code, "insufficient_scope") == 0) {
            ngx_mail_api_add_header(r, "WWW-Authenticate", "Bearer error=\"insufficient_scope\"");
        } else if (status == NGX_HTTP_SERVICE_UNAVAILABLE) {
            ngx_mail_api_add_header(r, "Retry-After", "1");
        }
        return ngx_mail_api_send_json(r, status, ngx_mail_api_error_json(code, message, field));
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

namespace {

using mailapi::TokenStatus;

// ---------------------------------------------------------------- auth


// True with `auth` set; otherwise the request was answered and `rc` is what
// answering returned (which may itself be NGX_OK).
ngx_int_t authenticate_or_answer(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need, ngx_mail_api_auth_t &auth) {
    ngx_table_elt_t *h = r->headers_in.authorization;
    if (h == nullptr || h->value.len < 7 || ngx_strncasecmp(h->value.data, (u_char *)"Bearer ", 7) != 0) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_missing",
                                       "send \"Authorization: Bearer <token>\"");
    }
    std::string_view token(reinterpret_cast<char *>(h->value.data) + 7, h->value.len - 7);
    mailapi::TokenParts parts;
    TokenStatus st = mailapi::token_parse(token, parts);
    const mailapi::ApiKey *key = nullptr;
    if (st == TokenStatus::ok) {
        key = mailapi::apikeys_find(*mcf->keys, parts.key_id);
        st = key ? mailapi::token_verify(parts, key->secret, ngx_time(), mcf->token_clock_skew,
                                         mcf->token_max_ttl)
                 : TokenStatus::unknown_key;
    }
    switch (st) {
    case TokenStatus::ok: break;
    case TokenStatus::malformed:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_malformed",
                                       "the token is not of the form v1.<key_id>.<expires>.<scopes>.<signature>");
    case TokenStatus::bad_version:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_version_unsupported",
                                       "only v1 tokens are accepted");
    case TokenStatus::unknown_key:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_unknown_key",
                                       "the token names an unknown key");
    case TokenStatus::bad_signature:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_signature_invalid",
                                       "the token's signature does not match");
    case TokenStatus::expired:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_expired",
                                       "the token has expired: mint a new one");
    case TokenStatus::lifetime_exceeded:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_lifetime_exceeded",
                                       "the token expires further ahead than the maximum lifetime of " +
                                           std::to_string(mcf->token_max_ttl) + " seconds");
    }
    // A token never carries more than its key has now: scopes taken away from a
    // key stop working on reload.
    unsigned scopes = parts.scopes & key->scopes;
    if ((scopes & need) != need) {
        return ngx_mail_api_send_error(r, NGX_HTTP_FORBIDDEN, "insufficient_scope",
                                       std::string("this endpoint needs the \"") + mailapi::scopes_name(need) +
                                           "\" scope");
    }
    auth.key = key;
    auth.scopes = scopes;
    return NGX_OK;
}

}  // namespace

bool ngx_mail_api_authenticate(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need, ngx_mail_api_auth_t &auth, ngx_int_t &rc) {
    rc = authenticate_or_answer(r, mcf, need, auth);
    return auth.key != nullptr;
}

// ---------------------------------------------------------------- request body


bool ngx_mail_api_content_type_json(ngx_http_request_t *r) noexcept {
    ngx_table_elt_t *ct = r->headers_in.content_type;
    if (ct == nullptr) return false;
    static const char json[] = "application/json";
    size_t n = sizeof(json) - 1;
    if (ct->value.len < n || ngx_strncasecmp(ct->value.data, (u_char *)json, n) != 0) return false;
    return ct->value.len == n || ct->value.data[n] == ';' || ct->value.data[n] == ' ';
}

ngx_int_t ngx_mail_api_body_string(ngx_http_request_t *r, size_t max, std::string &out) {
    if (r->request_body == nullptr) return NGX_OK;
    for (ngx_chain_t *cl = r->request_body->bufs; cl; cl = cl->next) {
        ngx_buf_t *b = cl->buf;
        size_t size = b->in_file ? static_cast<size_t>(b->file_last - b->file_pos)
                                 : static_cast<size_t>(b->last - b->pos);
        if (out.size() + size > max) return NGX_HTTP_REQUEST_ENTITY_TOO_LARGE;
        if (b->in_file) {
            size_t at = out.size();
            out.resize(at + size);
            ssize_t n = ngx_read_file(b->file, reinterpret_cast<u_char *>(&out[at]), size, b->file_pos);
            if (n != static_cast<ssize_t>(size)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        } else {
            out.append(reinterpret_cast<char *>(b->pos), size);
        }
    }
    return NGX_OK;
}

static ngx_int_t too_large(ngx_http_request_t *r, size_t max) {
    return ngx_mail_api_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large",
                                   "the request body is larger than " + std::to_string(max) + " bytes");
}

static void body_read(ngx_http_request_t *r) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_mail_api_module));
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_http_get_module_ctx(r, ngx_mail_api_module));
    ngx_int_t rc;
    try {
        std::string body;
        rc = ngx_mail_api_body_string(r, ctx->max_body, body);
        if (rc == NGX_HTTP_REQUEST_ENTITY_TOO_LARGE) {
            rc = too_large(r, ctx->max_body);
        } else if (rc == NGX_OK) {
            rc = ctx->on_body(r, mcf, ctx->key, body);
            if (rc == NGX_DONE) return;  // the handler finishes the request later
        }
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_finalize_request(r, rc);
}

ngx_int_t ngx_mail_api_read_body(ngx_http_request_t *r, const mailapi::ApiKey *key, size_t max,
                                 ngx_mail_api_body_pt on_body) noexcept {
    try {
        // refused before a byte of it is read, when the length is announced
        if (r->headers_in.content_length_n > static_cast<off_t>(max)) return too_large(r, max);
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_pcalloc(r->pool, sizeof(ngx_mail_api_ctx_t)));
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->key = key;
    ctx->max_body = max;
    ctx->on_body = on_body;
    ngx_http_set_ctx(r, ctx, ngx_mail_api_module);
    ngx_int_t rc = ngx_http_read_client_request_body(r, body_read);
    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) return rc;
    return NGX_DONE;
}

void ngx_mail_api_finish(ngx_http_request_t *r, ngx_int_t rc) noexcept {
    ngx_connection_t *c = r->connection;
    ngx_http_finalize_request(r, rc);
    ngx_http_run_posted_requests(c);
}

namespace {

// ---------------------------------------------------------------- recover

void query_done(ngx_event_t *ev) noexcept {
    auto *r = static_cast<ngx_http_request_t *>(ev->data);
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_http_get_module_ctx(r, ngx_mail_api_module));
    ngx_mail_api_query_t *q = ctx->query;
    if (q->status == NGX_HTTP_SERVICE_UNAVAILABLE) ngx_mail_api_add_header(r, "Retry-After", "1");
    ngx_int_t rc = q->status ? ngx_mail_api_send_json(r, q->status, q->body) : NGX_HTTP_INTERNAL_SERVER_ERROR;
    ngx_mail_api_finish(r, rc);
}

bool arg(ngx_http_request_t *r, const char *name, std::string &out, bool &present) {
    ngx_str_t v;
    present = ngx_http_arg(r, (u_char *)name, ngx_strlen(name), &v) == NGX_OK;
    if (!present) return true;
    out.resize(v.len);
    u_char *dst = reinterpret_cast<u_char *>(&out[0]), *src = v.data;
    ngx_unescape_uri(&dst, &src, v.len, 0);
    out.resize(static_cast<size_t>(dst - reinterpret_cast<u_char *>(&out[0])));
    return out.find('\0') == std::string::npos;
}

ngx_int_t start_query(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_mail_api_query_t *q) {
    auto *ctx = static_cast<ngx_mail_api_ctx_t *>(ngx_pcalloc(r->pool, sizeof(ngx_mail_api_ctx_t)));
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->query = q;
    ngx_http_set_ctx(r, ctx, ngx_mail_api_module);
    if (ngx_mail_api_store_query(r, mcf, q, query_done) != NGX_OK) {
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "store_unavailable",
                                       "the message store is unavailable, retry later");
    }
    r->main->count++;
    return NGX_DONE;
}

ngx_int_t handle_list(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_READ, auth, rc)) return rc;
    std::string recipient, limit_s, cursor_s;
    bool has_rcpt, has_limit, has_cursor;
    if (!arg(r, "recipient", recipient, has_rcpt) || !has_rcpt || !mailapi::address_valid(recipient)) {
        return ngx_mail_api_send_error(r, 422, has_rcpt ? "invalid_address" : "required",
                                       "recipient must be one e-mail address", "recipient");
    }
    ngx_int_t limit = 20;
    if (!arg(r, "limit", limit_s, has_limit)) limit = NGX_ERROR;
    if (has_limit) limit = ngx_atoi(reinterpret_cast<u_char *>(&limit_s[0]), limit_s.size());
    if (limit < 1 || static_cast<ngx_uint_t>(limit) > mcf->max_page_size) {
        return ngx_mail_api_send_error(r, 422, "invalid_value",
                                       "limit must be 1.." + std::to_string(mcf->max_page_size), "limit");
    }
    ngx_mail_api_query_t *q = pool_new<ngx_mail_api_query_t>(r->pool);
    if (q == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    if (!arg(r, "cursor", cursor_s, has_cursor)) has_cursor = true, cursor_s = "!";
    if (has_cursor && !cursor_s.empty()) {  // "cursor=" is the first page
        std::string raw;
        size_t colon;
        if (!mailapi::base64url_decode(cursor_s, raw) || (colon = raw.find(':')) == std::string::npos ||
            colon == 0 || colon > 15 || !mailapi::message_id_valid(raw.substr(colon + 1)) ||
            raw.find_first_not_of("0123456789") != colon) {
            return ngx_mail_api_send_error(r, 422, "invalid_value", "cursor is not one this API returned",
                                           "cursor");
        }
        q->cursor_ms = std::stoll(raw.substr(0, colon));
        q->cursor_id = raw.substr(colon + 1);
    }
    q->tenant = auth.key->tenant;
    q->keyring = mcf->keyring;
    q->limit = static_cast<ngx_uint_t>(limit);
    q->recipient_index = mailapi::blind_index(*mcf->keyring, mailapi::address_normalise(recipient));
    return start_query(r, mcf, q);
}

ngx_int_t handle_get(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, std::string_view id) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_READ, auth, rc)) return rc;
    if (!mailapi::message_id_valid(id)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such message");
    }
    ngx_mail_api_query_t *q = pool_new<ngx_mail_api_query_t>(r->pool);
    if (q == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    q->tenant = auth.key->tenant;
    q->keyring = mcf->keyring;
    q->message_id = std::string(id);
    return start_query(r, mcf, q);
}

// ---------------------------------------------------------------- tokens

ngx_int_t handle_tokens_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                             const std::string &body) {
    json_error_t jerr;
    std::string_view json = body.empty() ? std::string_view("{}") : std::string_view(body);  // all defaults
    std::unique_ptr<json_t, void (*)(json_t *)> root(
        json_loadb(json.data(), json.size(), JSON_REJECT_DUPLICATES, &jerr), [](json_t *j) { json_decref(j); });
    if (!root) return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json", "malformed JSON");
    if (!json_is_object(root.get())) {
        return ngx_mail_api_send_error(r, 422, "invalid_type", "the request body must be a JSON object");
    }
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        if (ngx_strcmp(k, "ttl") != 0 && ngx_strcmp(k, "scopes") != 0) {
            return ngx_mail_api_send_error(r, 422, "unknown_field", "unknown field", k);
        }
    }
    json_int_t ttl = 3600;
    if (json_t *t = json_object_get(root.get(), "ttl")) {
        if (!json_is_integer(t)) return ngx_mail_api_send_error(r, 422, "invalid_type", "ttl is whole seconds", "ttl");
        ttl = json_integer_value(t);
        if (ttl < 1 || ttl > mcf->token_max_ttl) {
            return ngx_mail_api_send_error(r, 422, "invalid_value",
                                           "ttl must be 1.." + std::to_string(mcf->token_max_ttl), "ttl");
        }
    }
    unsigned scopes = key->scopes;
    if (json_t *s = json_object_get(root.get(), "scopes")) {
        if (!json_is_array(s) || json_array_size(s) == 0 || json_array_size(s) > 2) {
            return ngx_mail_api_send_error(r, 422, "invalid_type", "scopes is an array such as [\"send\"]",
                                           "scopes");
        }
        scopes = 0;
        size_t i;
        json_t *e;
        json_array_foreach(s, i, e) {
            unsigned one = json_is_string(e) ? mailapi::scopes_parse(json_string_value(e)) : 0;
            std::string field = "scopes[" + std::to_string(i) + "]";
            if (one != mailapi::SCOPE_SEND && one != mailapi::SCOPE_READ) {
                return ngx_mail_api_send_error(r, 422, "invalid_value", "a scope is \"send\" or \"read\"", field);
            }
            if ((one & key->scopes) != one) {
                return ngx_mail_api_send_error(r, NGX_HTTP_FORBIDDEN, "scope_not_allowed",
                                               "this key does not have that scope", field);
            }
            scopes |= one;
        }
    }
    int64_t expires = ngx_time() + ttl;
    std::string token = mailapi::token_mint(key->id, key->secret, expires, scopes);
    json_t *out = json_object();
    json_object_set_new(out, "token", json_string(token.c_str()));
    json_object_set_new(out, "expires_at", json_string(mailapi::rfc3339_format_ms(expires * 1000).c_str()));
    json_object_set_new(out, "scopes", json_string(mailapi::scopes_name(scopes)));
    char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(out);
    std::string resp = s ? s : "";
    free(s);
    return ngx_mail_api_send_json(r, NGX_HTTP_CREATED, resp);
}

ngx_int_t handle_tokens(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    // HTTP Basic: key_id as the user, the key's base64 secret as the password.
    ngx_table_elt_t *h = r->headers_in.authorization;
    std::string decoded;
    const mailapi::ApiKey *key = nullptr;
    bool ok = false;
    if (h && h->value.len > 6 && ngx_strncasecmp(h->value.data, (u_char *)"Basic ", 6) == 0 &&
        mailapi::base64_decode(std::string_view(reinterpret_cast<char *>(h->value.data) + 6, h->value.len - 6),
                               decoded)) {
        size_t colon = decoded.find(':');
        std::string secret;
        if (colon != std::string::npos && (key = mailapi::apikeys_find(*mcf->keys, decoded.substr(0, colon))) &&
            mailapi::base64_decode(decoded.substr(colon + 1), secret) && secret.size() == key->secret.size()) {
            ok = CRYPTO_memcmp(secret.data(), key->secret.data(), secret.size()) == 0;
        }
        OPENSSL_cleanse(secret.data(), secret.size());
        OPENSSL_cleanse(decoded.data(), decoded.size());
    }
    if (!ok) {
        ngx_mail_api_add_header(r, "WWW-Authenticate", "Basic realm=\"mail_api\"");
        return ngx_mail_api_send_json(
            r, NGX_HTTP_UNAUTHORIZED,
            ngx_mail_api_error_json("invalid_credentials", "send HTTP Basic with the key id and its secret", ""));
    }
    if (r->headers_in.content_length_n > 0 && !ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, key, 4096, handle_tokens_body);
}

// ---------------------------------------------------------------- routing

ngx_int_t handle_health(ngx_http_request_t *r) {
    bool redis = ngx_mail_api_redis_ready();
    return ngx_mail_api_send_json(r, redis ? NGX_HTTP_OK : NGX_HTTP_SERVICE_UNAVAILABLE,
                                  std::string("{\"status\":\"") + (redis ? "ok" : "degraded") +
                                      "\",\"queue\":\"" + (redis ? "up" : "down") + "\"}");
}

ngx_int_t method_not_allowed(ngx_http_request_t *r, const char *allow) {
    ngx_mail_api_add_header(r, "Allow", allow);
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed",
                                   std::string("allowed: ") + allow);
}

ngx_int_t route(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    std::string_view uri(reinterpret_cast<char *>(r->uri.data), r->uri.len);
    bool post = r->method == NGX_HTTP_POST, get = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    if (uri == "/v1/messages") {
        if (post) return ngx_mail_api_handle_send(r, mcf);
        if (get) return handle_list(r, mcf);
        return method_not_allowed(r, "GET, POST");
    }
    static constexpr std::string_view prefix = "/v1/messages/";
    if (uri.size() > prefix.size() && uri.substr(0, prefix.size()) == prefix) {
        if (get) return handle_get(r, mcf, uri.substr(prefix.size()));
        return method_not_allowed(r, "GET");
    }
    if (uri == "/v1/tokens") {
        if (post) return handle_tokens(r, mcf);
        return method_not_allowed(r, "POST");
    }
    if (uri == "/healthz") {
        if (get) return handle_health(r);
        return method_not_allowed(r, "GET");
    }
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such endpoint");
}

// An error nginx itself raised (bad request line, TRACE, body over
// client_max_body_size, ...) and sent here by error_page: the same JSON shape
// as every other error.
ngx_int_t nginx_error(ngx_http_request_t *r, ngx_uint_t status) {
    struct Known {
        ngx_uint_t status;
        const char *code, *message;
    };
    static const Known known[] = {
        {NGX_HTTP_BAD_REQUEST, "bad_request", "the request is not valid HTTP"},
        {NGX_HTTP_NOT_FOUND, "not_found", "no such endpoint"},
        {NGX_HTTP_NOT_ALLOWED, "method_not_allowed", "allowed: GET, POST"},
        {NGX_HTTP_REQUEST_TIME_OUT, "request_timeout", "the request was not received in time"},
        {NGX_HTTP_LENGTH_REQUIRED, "length_required", "send Content-Length or a chunked body"},
        {NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large", "the request body is too large"},
        {NGX_HTTP_REQUEST_URI_TOO_LARGE, "uri_too_long", "the request URI is too long"},
        {NGX_HTTP_REQUEST_HEADER_TOO_LARGE, "headers_too_large", "the request headers are too large"},
        {NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable", "the service is unavailable, retry later"},
    };
    if (status == NGX_HTTP_NOT_ALLOWED) ngx_mail_api_add_header(r, "Allow", "GET, POST");
    for (const Known &k : known) {
        if (k.status == status) return ngx_mail_api_send_error(r, status, k.code, k.message);
    }
    if (status >= 500) return ngx_mail_api_send_error(r, status, "internal", "internal error");
    return ngx_mail_api_send_error(r, status, "bad_request", "the request was refused");
}

ngx_int_t handler(ngx_http_request_t *r) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_mail_api_module));
    try {
        if (r->err_status) return nginx_error(r, r->err_status);
        return route(r, mcf);
    } catch (...) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "mail_api: internal error");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

}  // namespace

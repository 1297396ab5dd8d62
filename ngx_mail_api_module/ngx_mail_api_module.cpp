// ngx_mail_api_module: the HTTP API of the transactional e-mail service.
//
//   POST /v1/tokens            API key (Basic) -> time-limited token     (_auth.cpp)
//   POST /v1/messages          validate, seal, enqueue in Redis, 202     (_send.cpp)
//   GET  /v1/messages/{id}     one message: Redis, then the store        (_recover.cpp)
//   DELETE /v1/messages/{id}   cancel one not sent yet                   (_recover.cpp)
//   POST /v1/messages/search   a recipient's messages, newest first      (_recover.cpp)
//   POST /v1/events/{source}   a provider's event webhook, verified      (_events.cpp)
//   /v1/webhooks...            a tenant's outbound webhook endpoints     (_webhooks.cpp)
//   /v1/suppressions           list, add, remove suppressed addresses    (_suppressions.cpp)
//   DELETE /v1/recipients      erase everything of one address           (_erase.cpp)
//   GET|POST /u/{token}        one-click unsubscribe (RFC 8058)          (_links.cpp)
//   GET /r/{token}             a recipient's response                    (_links.cpp)
//   GET  /healthz              liveness and dependency state
//
// This file: the module, its directives and configuration, worker start and
// exit, and routing.
#include "ngx_mail_api.h"

#include <curl/curl.h>
#include <dirent.h>
#include <malloc.h>
#include <mongoc/mongoc.h>
#include <openssl/crypto.h>

#include <cstring>

#include "contract.h"
#include "links.h"
#include "redis_address.h"

namespace {

// ---------------------------------------------------------------- conf

void *create_main_conf(ngx_conf_t *cf) noexcept;
char *init_main_conf(ngx_conf_t *cf, void *conf) noexcept;
void *create_loc_conf(ngx_conf_t *cf) noexcept;
char *merge_loc_conf(ngx_conf_t *cf, void *parent, void *child) noexcept;
char *set_mail_api(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_keys(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_keyring(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
char *set_event_sources(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept;
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
    {ngx_string("mail_api_event_sources"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, set_event_sources,
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
    {ngx_string("mail_api_store_timeout"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, store_timeout), nullptr},
    {ngx_string("mail_api_store_concurrency"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_MAIN_CONF_OFFSET,
     offsetof(ngx_mail_api_main_conf_t, store_concurrency), nullptr},
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
    {ngx_string("mail_api_link_url"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_str_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_mail_api_main_conf_t, link_url), nullptr},
    {ngx_string("mail_api_link_ttl"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, ngx_conf_set_sec_slot,
     NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_mail_api_main_conf_t, link_ttl), nullptr},
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

// Where recipients' links point: put into every such link and into the
// envelope's JSON, so only plain URL characters.
bool link_url_valid(const std::string &u) {
    size_t host = u.rfind("https://", 0) == 0 ? 8 : u.rfind("http://", 0) == 0 ? 7 : 0;
    if (host == 0 || u.size() == host || u.size() > 200 || u.back() == '/') return false;
    for (size_t i = host; i < u.size(); i++) {
        char c = u[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  std::strchr("-._~/:[]", c) != nullptr;
        if (!ok) return false;
    }
    return true;
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
    mcf->store_timeout = NGX_CONF_UNSET_MSEC;
    mcf->store_concurrency = NGX_CONF_UNSET_UINT;
    mcf->link_ttl = NGX_CONF_UNSET;
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
    ngx_conf_init_msec_value(mcf->store_timeout, 3000);
    ngx_conf_init_uint_value(mcf->store_concurrency, 32);
    ngx_conf_init_value(mcf->link_ttl, 30 * 86400);
    if (mcf->link_ttl < mailapi::links::TTL_MIN_S || mcf->link_ttl > mailapi::links::TTL_MAX_S) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "mail_api_link_ttl must be 1h..400d");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->link_url.len && !link_url_valid(to_string(mcf->link_url))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "mail_api_link_url must be http(s)://host[:port][/path] without a trailing \"/\", "
                           "query or fragment");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->redis_stream.data == nullptr) {
        mcf->redis_stream.data = reinterpret_cast<u_char *>(const_cast<char *>(mailapi::contract::DEFAULT_STREAM));
        mcf->redis_stream.len = sizeof mailapi::contract::DEFAULT_STREAM - 1;
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
    // A message's envelope is one store document (its body), and MongoDB
    // takes none over 16 MiB: a larger one would be accepted with a 202 and
    // its record refused by the store, again and again, for ever.
    if (mcf->max_message_size > 15 * 1024 * 1024) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"mail_api_max_message_size\" must be at most 15m (a message is kept in one store "
                      "document, which MongoDB caps at 16 MiB)");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    if (mcf->store_concurrency == 0 || mcf->store_concurrency > 1024) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "\"mail_api_store_concurrency\" must be 1..1024");
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    mcf->thread_pool = ngx_thread_pool_add(cf, &mcf->thread_pool_name);
    if (mcf->thread_pool == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    mcf->limits = ngx_mail_api_pool_new<mailapi::MessageLimits>(cf->pool);
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
    bool ok = read_conf_file(cf, cmd, name, text) && (obj = ngx_mail_api_pool_new<T>(cf->pool)) != nullptr;
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

char *set_event_sources(ngx_conf_t *cf, ngx_command_t *cmd, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    return load_secrets(cf, cmd, &mcf->event_sources_file, mcf->event_sources, mailapi::event_sources_parse);
}

// "host:port", "host" (port 6379) or "unix:/path".
char *set_redis(ngx_conf_t *cf, ngx_command_t *, void *conf) noexcept {
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(conf);
    if (mcf->redis_host.data) return const_cast<char *>("is duplicate");
    ngx_str_t v = static_cast<ngx_str_t *>(cf->args->elts)[1];
    mailapi::RedisAddress addr;
    std::string err;
    try {
        if (!mailapi::redis_address_parse(to_string(v), addr, err)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s in \"%V\"", err.c_str(), &v);
            return static_cast<char *>(NGX_CONF_ERROR);
        }
    } catch (...) {
        return static_cast<char *>(NGX_CONF_ERROR);
    }
    mcf->redis_host.data = static_cast<u_char *>(ngx_pnalloc(cf->pool, addr.host.size() + 1));
    if (mcf->redis_host.data == nullptr) return static_cast<char *>(NGX_CONF_ERROR);
    ngx_cpystrn(mcf->redis_host.data, reinterpret_cast<u_char *>(addr.host.data()), addr.host.size() + 1);
    mcf->redis_host.len = addr.host.size();
    mcf->redis_port = addr.port;
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
    // Blocks of 1 MiB and more come from mmap and go back on free: a request
    // for a 10 MiB message would otherwise leave its buffers in the arena of
    // whichever thread served it, for the life of the worker.
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    curl_global_init(CURL_GLOBAL_DEFAULT);  // before any thread fetches (SNS certificates)
    if (ngx_mail_api_store_init(cycle, mcf) != NGX_OK) return NGX_ERROR;
    return ngx_mail_api_redis_init(cycle, mcf);
}

// Threads of this process other than the one calling.
int other_threads() noexcept {
    DIR *d = opendir("/proc/self/task");
    if (d == nullptr) return 0;
    int n = -1;
    while (struct dirent *e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

// nginx's thread pools were stopped just before this (their module's
// exit_process runs first), but a pool thread lets the worker go on as soon
// as it starts to stop: pthread_exit then still runs its thread-local
// destructors, OpenSSL's among them. Freeing the store's clients and
// mongoc's state here, and OpenSSL's at exit(), under such a thread is a
// double free (ASan saw one after a stalled store's reads); so wait, at most
// a second, until the worker has no other thread.
void wait_for_threads_to_end() noexcept {
    for (int i = 0; i < 1000 && other_threads() > 0; i++) ngx_msleep(1);
}

void exit_process(ngx_cycle_t *cycle) noexcept {
    ngx_mail_api_main_conf_t *mcf = cycle_main_conf(cycle);
    if (mcf == nullptr || !mcf->enabled) return;
    wait_for_threads_to_end();
    ngx_mail_api_redis_exit();
    ngx_mail_api_store_exit();
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

// A recipient in the query string would be written to access and error logs
// (and HTTP/2 cancel lines) wherever nginx logs the request line; the
// address travels in the body of POST /v1/messages/search instead.
ngx_int_t list_moved(ngx_http_request_t *r) {
    ngx_mail_api_add_header(r, "Allow", "POST");
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "use_search",
                                   "list a recipient's messages with POST /v1/messages/search "
                                   "{\"recipient\": ...}: addresses stay out of URLs and so out of logs");
}

// The same for an address to erase: DELETE /v1/recipients with it in the body.
ngx_int_t erase_moved(ngx_http_request_t *r) {
    ngx_mail_api_add_header(r, "Allow", "");
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "use_body",
                                   "erase a recipient with DELETE /v1/recipients {\"address\": ...}: addresses "
                                   "stay out of URLs and so out of logs");
}

ngx_int_t route(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    std::string_view uri(reinterpret_cast<char *>(r->uri.data), r->uri.len);
    bool post = r->method == NGX_HTTP_POST, get = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    if (uri == "/v1/messages") {
        if (post) return ngx_mail_api_handle_send(r, mcf);
        if (get) return list_moved(r);
        return method_not_allowed(r, "POST");
    }
    if (uri == "/v1/messages/search") {
        if (post) return ngx_mail_api_handle_search(r, mcf);
        return method_not_allowed(r, "POST");
    }
    static constexpr std::string_view prefix = "/v1/messages/";
    if (uri.size() > prefix.size() && uri.substr(0, prefix.size()) == prefix) {
        ngx_str_t id = {r->uri.len - prefix.size(), r->uri.data + prefix.size()};
        if (get) return ngx_mail_api_handle_get(r, mcf, id);
        if (r->method == NGX_HTTP_DELETE) return ngx_mail_api_handle_cancel(r, mcf, id);
        return method_not_allowed(r, "GET, DELETE");
    }
    if (uri == "/v1/tokens") {
        if (post) return ngx_mail_api_handle_tokens(r, mcf);
        return method_not_allowed(r, "POST");
    }
    if (uri == "/v1/webhooks") return ngx_mail_api_handle_webhooks(r, mcf, "");
    if (uri.rfind("/v1/webhooks/", 0) == 0) return ngx_mail_api_handle_webhooks(r, mcf, uri.substr(13));
    static constexpr std::string_view events = "/v1/events/";
    if (uri.size() > events.size() && uri.substr(0, events.size()) == events) {
        ngx_str_t name = {r->uri.len - events.size(), r->uri.data + events.size()};
        if (post) return ngx_mail_api_handle_events(r, mcf, name);
        return method_not_allowed(r, "POST");
    }
    if (uri == "/v1/suppressions") return ngx_mail_api_handle_suppressions(r, mcf);
    if (uri == "/v1/recipients") return ngx_mail_api_handle_erase(r, mcf);
    if (uri.rfind("/v1/recipients/", 0) == 0) return erase_moved(r);
    if (uri.size() > 3 && (uri.rfind("/u/", 0) == 0 || uri.rfind("/r/", 0) == 0)) {
        return ngx_mail_api_handle_link(r, mcf, uri[1], uri.substr(3));
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

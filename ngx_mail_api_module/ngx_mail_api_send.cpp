// POST /v1/messages: validate, seal, and enqueue through one Lua script that
// also answers idempotency keys, rate limits and daily quotas, atomically and
// in the one Redis round trip a send makes anyway.
#include "ngx_mail_api.h"

#include <openssl/sha.h>

#include <cmath>
#include <cstdio>

#include "base64.h"
#include "ossl.h"
#include "token.h"

// KEYS: stream, idempotency key ("" = none), rate key, quota key
// ARGV: now_us, id, tenant, created_ms, send_at, envelope, fingerprint,
//       idempotency_ttl_ms, interval_us (0 = no rate limit), burst,
//       daily quota (0 = none), quota key ttl seconds
// Returns {0, id, rate_remaining, quota_remaining} accepted, {1, id} the same
// idempotency key and payload seen before, {2} the key with another payload,
// {3, retry_after_us} rate limited, {4} daily quota used up.
extern const char ngx_mail_api_enqueue_script[] = R"lua(
local now = tonumber(ARGV[1])
local idem = KEYS[2] ~= ''
if idem then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    local fp, id = string.match(seen, '^(%S+) (%S+)$')
    if fp == ARGV[7] then return {1, id} end
    return {2}
  end
end
local quota = tonumber(ARGV[11])
local used = 0
if quota > 0 then
  used = tonumber(redis.call('GET', KEYS[4]) or '0')
  if used >= quota then return {4} end
end
local interval = tonumber(ARGV[9])
local remaining = -1
local new_tat = 0
if interval > 0 then
  local window = interval * tonumber(ARGV[10])
  local tat = tonumber(redis.call('GET', KEYS[3]) or '0')
  if tat < now then tat = now end
  new_tat = tat + interval
  if new_tat - now > window then return {3, math.ceil(new_tat - now - window)} end
  remaining = math.floor((window - (new_tat - now)) / interval)
end
redis.call('XADD', KEYS[1], '*', 'id', ARGV[2], 'tenant', ARGV[3], 'created', ARGV[4],
           'send_at', ARGV[5], 'attempt', '0', 'env', ARGV[6])
if interval > 0 then
  redis.call('SET', KEYS[3], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
local quota_left = -1
if quota > 0 then
  used = redis.call('INCR', KEYS[4])
  if used == 1 then redis.call('EXPIRE', KEYS[4], ARGV[12]) end
  quota_left = quota - used
end
if idem then redis.call('SET', KEYS[2], ARGV[7] .. ' ' .. ARGV[2], 'PX', ARGV[8]) end
return {0, ARGV[2], remaining, quota_left}
)lua";

const char *ngx_mail_api_enqueue_sha() noexcept {
    static char hex[2 * SHA_DIGEST_LENGTH + 1];
    if (hex[0] == '\0') {
        unsigned char md[SHA_DIGEST_LENGTH];
        SHA1(reinterpret_cast<const unsigned char *>(ngx_mail_api_enqueue_script),
             sizeof(ngx_mail_api_enqueue_script) - 1, md);
        for (size_t i = 0; i < sizeof md; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
    }
    return hex;
}

namespace {

constexpr size_t IDEMPOTENCY_KEY_MAX = 255;

// Lives until Redis answers, which may be after the request timed out and
// ended; `r` is then NULL and the reply only frees this.
struct EnqueueCall {
    ngx_http_request_t *r;
    const mailapi::ApiKey *key;
    ngx_event_t timer;
    ngx_msec_t timeout;
    int64_t now_ms;
    char id[32];
};

int64_t reply_int(const redisReply *reply, size_t i) {
    if (reply->elements <= i) return 0;
    const redisReply *e = reply->element[i];
    return e->type == REDIS_REPLY_INTEGER ? e->integer : 0;
}

std::string reply_str(const redisReply *reply, size_t i) {
    if (reply->elements <= i || reply->element[i]->type != REDIS_REPLY_STRING) return "";
    return std::string(reply->element[i]->str, reply->element[i]->len);
}

void add_rate_headers(ngx_http_request_t *r, const mailapi::ApiKey *key, int64_t remaining, int64_t reset_s) {
    ngx_mail_api_add_header(r, "RateLimit-Limit", std::to_string(key->burst));
    ngx_mail_api_add_header(r, "RateLimit-Remaining", std::to_string(remaining < 0 ? 0 : remaining));
    ngx_mail_api_add_header(r, "RateLimit-Reset", std::to_string(reset_s));
}

ngx_int_t accepted(ngx_http_request_t *r, const std::string &id) {
    return ngx_mail_api_send_json(r, NGX_HTTP_ACCEPTED, "{\"id\":\"" + id + "\",\"status\":\"queued\"}");
}

ngx_int_t answer(EnqueueCall *call, redisReply *reply) {
    ngx_http_request_t *r = call->r;
    const mailapi::ApiKey *key = call->key;
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            if (ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0) ngx_mail_api_redis_load_script();
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "mail_api: enqueue failed: %s", reply->str);
        }
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
    double interval_s = key->rate > 0 ? 1.0 / key->rate : 0;
    switch (reply_int(reply, 0)) {
    case 0: {
        int64_t remaining = reply_int(reply, 2);
        if (key->rate > 0) {
            add_rate_headers(r, key, remaining, static_cast<int64_t>(std::ceil((key->burst - remaining) * interval_s)));
        }
        return accepted(r, reply_str(reply, 1));
    }
    case 1:
        ngx_mail_api_add_header(r, "Idempotent-Replayed", "true");
        return accepted(r, reply_str(reply, 1));
    case 2:
        return ngx_mail_api_send_error(r, NGX_HTTP_CONFLICT, "idempotency_conflict",
                                       "this Idempotency-Key was used with a different message",
                                       "Idempotency-Key");
    case 3: {
        int64_t retry = std::max<int64_t>(1, (reply_int(reply, 1) + 999999) / 1000000);
        ngx_mail_api_add_header(r, "Retry-After", std::to_string(retry));
        add_rate_headers(r, key, 0, retry);
        return ngx_mail_api_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS, "rate_limited",
                                       "this key may send " + std::to_string(key->burst) + " at once and " +
                                           std::to_string(key->rate) + " per second; retry after " +
                                           std::to_string(retry) + " s");
    }
    case 4: {
        int64_t to_midnight = 86400 - (call->now_ms / 1000) % 86400;
        ngx_mail_api_add_header(r, "Retry-After", std::to_string(to_midnight));
        return ngx_mail_api_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS, "quota_exceeded",
                                       "this key's daily quota of " + std::to_string(key->daily_quota) +
                                           " messages is used up until 00:00 UTC");
    }
    default:
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
}

void enqueue_done(void *data, redisReply *reply) noexcept {
    auto *call = static_cast<EnqueueCall *>(data);
    ngx_http_request_t *r = call->r;
    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }
    if (r == nullptr) {
        ngx_free(call);
        return;
    }
    ngx_int_t rc;
    try {
        rc = answer(call, reply);
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_free(call);
    ngx_mail_api_finish(r, rc);
}

void enqueue_timeout(ngx_event_t *ev) noexcept {
    auto *call = static_cast<EnqueueCall *>(ev->data);
    ngx_http_request_t *r = call->r;
    call->r = nullptr;  // the reply, if it ever comes, only frees the call
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "mail_api: redis did not answer in time");
    ngx_mail_api_finish(r, ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                                   "the queue did not answer in time, retry later"));
    ngx_mail_api_redis_stalled(call->timeout);
}

// The Idempotency-Key header: absent (true, empty), valid (true), or invalid.
bool idempotency_key(ngx_http_request_t *r, std::string &out) {
    ngx_list_part_t *part = &r->headers_in.headers.part;
    auto *h = static_cast<ngx_table_elt_t *>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) return true;
            part = part->next;
            h = static_cast<ngx_table_elt_t *>(part->elts);
            i = 0;
        }
        if (h[i].key.len == 15 && ngx_strncasecmp(h[i].key.data, (u_char *)"Idempotency-Key", 15) == 0) {
            if (h[i].value.len == 0 || h[i].value.len > IDEMPOTENCY_KEY_MAX) return false;
            for (size_t j = 0; j < h[i].value.len; j++) {
                if (h[i].value.data[j] < 0x21 || h[i].value.data[j] > 0x7e) return false;
            }
            out.assign(reinterpret_cast<char *>(h[i].value.data), h[i].value.len);
            return true;
        }
    }
}

ngx_int_t enqueue(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                  const std::string &body) {
    std::string idem;
    if (!idempotency_key(r, idem)) {
        return ngx_mail_api_send_error(r, 422, "invalid_value",
                                       "Idempotency-Key must be 1-255 visible ASCII characters", "Idempotency-Key");
    }
    mailapi::Message msg;
    mailapi::FieldError ferr;
    if (!mailapi::message_parse(body, *mcf->limits, ngx_time(), msg, ferr)) {
        return ngx_mail_api_send_error(r, static_cast<ngx_uint_t>(ferr.status), ferr.code.c_str(), ferr.message,
                                       ferr.field);
    }
    ngx_time_t *tp = ngx_timeofday();
    int64_t now_ms = static_cast<int64_t>(tp->sec) * 1000 + tp->msec;
    // The envelope holds the body as received: it has just been validated, and
    // deliveryd and the recover path read it with the same parser.
    std::string id, envelope;
    if (!mailapi::message_id_new(now_ms, id) ||
        !mailapi::envelope_seal(*mcf->keyring, mailapi::envelope_aad(key->tenant, id), body, envelope)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!ngx_mail_api_redis_ready()) {
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
    std::string idem_key, fingerprint;
    if (!idem.empty()) {
        // Keyed, so the stored fingerprint says nothing about the message.
        unsigned char md[32];
        std::string data = key->tenant + '\0' + body;
        std::string_view ikey(reinterpret_cast<const char *>(mcf->keyring->index_key.data()), 32);
        if (!mailapi::hmac_sha256(ikey, data, md)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        fingerprint = mailapi::base64url_encode(std::string_view(reinterpret_cast<char *>(md), sizeof md));
        idem_key = "mailapi:idem:" + key->tenant + ":" + idem;
    }
    auto *call = static_cast<EnqueueCall *>(ngx_calloc(sizeof(EnqueueCall), r->connection->log));
    if (call == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    call->r = r;
    call->key = key;
    call->now_ms = now_ms;
    call->timeout = mcf->redis_timeout;
    ngx_memcpy(call->id, id.c_str(), id.size() + 1);
    call->timer.handler = enqueue_timeout;
    call->timer.data = call;
    call->timer.log = r->connection->log;

    char interval[32];
    snprintf(interval, sizeof interval, "%.3f", key->rate > 0 ? 1e6 / key->rate : 0.0);
    std::string stream(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    std::string rate_key = "mailapi:rate:" + key->id;
    std::string quota_key = "mailapi:quota:" + key->id + ":" + std::to_string(now_ms / 86400000);
    std::string now_us = std::to_string(now_ms * 1000), created = std::to_string(now_ms),
                send_at = std::to_string(msg.send_at), idem_ttl = std::to_string(mcf->idempotency_ttl),
                burst = std::to_string(key->burst), quota = std::to_string(key->daily_quota);
    const char *argv[] = {"EVALSHA", ngx_mail_api_enqueue_sha(), "4", stream.c_str(), idem_key.c_str(),
                          rate_key.c_str(), quota_key.c_str(), now_us.c_str(), id.c_str(), key->tenant.c_str(),
                          created.c_str(), send_at.c_str(), envelope.c_str(), fingerprint.c_str(),
                          idem_ttl.c_str(), interval, burst.c_str(), quota.c_str(), "172800"};
    constexpr int argc = sizeof argv / sizeof argv[0];
    size_t lens[argc];
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    if (ngx_mail_api_redis_command(argc, argv, lens, enqueue_done, call) != NGX_OK) {
        ngx_free(call);
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
    ngx_add_timer(&call->timer, mcf->redis_timeout);
    return NGX_DONE;
}

}  // namespace

ngx_int_t ngx_mail_api_handle_send(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_SEND, auth, rc)) return rc;
    if (!ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send the message as Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, auth.key, mcf->max_message_size, enqueue);
}

// POST /v1/messages: validate, seal, and enqueue in the loop turn's Redis
// transaction: through one Lua script (contract::ENQUEUE_LUA) that also
// answers idempotency keys, rate limits and daily quotas, atomically and in
// the one round trip a send makes anyway; or, for a key with none of those
// and a send without an Idempotency-Key, as the HSET and XADD it would make.
#include "ngx_mail_api.h"

#include <cmath>
#include <cstdio>

#include "base64.h"
#include "contract.h"
#include "ngx_mail_api_parse.h"
#include "ossl.h"
#include "token.h"

const char *ngx_mail_api_enqueue_sha() noexcept {
    static const std::string sha = mailapi::contract::script_sha(mailapi::contract::ENQUEUE_LUA);
    return sha.c_str();
}

namespace {

// Lives until Redis answers, which may be after the request timed out and
// ended; `r` is then NULL and the reply only frees this.
struct EnqueueCall {
    ngx_http_request_t *r;
    const mailapi::ApiKey *key;
    ngx_event_t timer;
    ngx_msec_t timeout;
    int64_t now_ms;
    bool plain;  // HSET and XADD (contract::enqueue_plain), not ENQUEUE_LUA
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

// The body with what deliveryd needs to make each recipient's links: this
// service's URL and when they expire. Added before the object's closing
// brace (the body was just validated as one object; the URL holds no
// character JSON would escape).
std::string with_links(const std::string &body, const ngx_mail_api_main_conf_t *mcf, int64_t expires) {
    size_t end = body.find_last_of('}');
    std::string out = body.substr(0, end);
    out += ",\"links\":{\"base\":\"";
    out.append(reinterpret_cast<const char *>(mcf->link_url.data), mcf->link_url.len);
    out += "\",\"expires\":" + std::to_string(expires) + "}}";
    return out;
}

// The message's recipient keys, for the hash (contract::ENQUEUE_LUA).
std::string recipient_keys(const ngx_mail_api_main_conf_t *mcf, const std::string &tenant, const mailapi::Message &m) {
    std::string out;
    for (const std::string &a : mailapi::message_recipients(m)) {
        if (!out.empty()) out.push_back(' ');
        out += mailapi::contract::recipient_key(*mcf->keyring, tenant, a);
    }
    return out;
}

ngx_int_t accepted(ngx_http_request_t *r, const std::string &id) {
    return ngx_mail_api_send_json(r, NGX_HTTP_ACCEPTED, "{\"id\":\"" + id + "\",\"status\":\"queued\"}");
}

ngx_int_t answer(EnqueueCall *call, redisReply *reply) {
    ngx_http_request_t *r = call->r;
    const mailapi::ApiKey *key = call->key;
    if (call->plain && reply && reply->type == REDIS_REPLY_STRING) return accepted(r, call->id);  // XADD's entry id
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
            if (!mailapi::request::idempotency_key_valid(
                    std::string_view(reinterpret_cast<char *>(h[i].value.data), h[i].value.len))) {
                return false;
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
    if (!mailapi::apikey_sender_allowed(*key, msg.from.email)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_FORBIDDEN, "sender_not_allowed",
                                       "this key may not send from that domain (senders= in the keys file)",
                                       "from");
    }
    int64_t now_ms = ngx_mail_api_now_ms();
    // The envelope holds the body as received: it has just been validated, and
    // deliveryd and the recover path read it with the same parser.
    std::string stamped;
    if (msg.unsubscribe || !msg.responses.empty()) {
        if (mcf->link_url.len == 0) {
            return ngx_mail_api_send_error(r, 422, "links_unavailable",
                                           "this service has no public URL for links (mail_api_link_url)",
                                           msg.unsubscribe ? "unsubscribe" : "responses");
        }
        stamped = with_links(body, mcf, (msg.send_at ? msg.send_at : now_ms / 1000) + mcf->link_ttl);
    }
    std::string id, envelope;
    if (!mailapi::message_id_new(now_ms, id) ||
        !mailapi::envelope_seal(*mcf->keyring, mailapi::envelope_aad(key->tenant, id),
                                stamped.empty() ? body : stamped, envelope)) {
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
        std::string_view ikey(reinterpret_cast<const char *>(mcf->keyring->index_key.data()), 32);
        if (!mailapi::hmac_sha256(ikey, {key->tenant, std::string_view("\0", 1), body}, md)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        fingerprint = mailapi::base64url_encode(std::string_view(reinterpret_cast<char *>(md), sizeof md));
        idem_key = mailapi::contract::idempotency_key(key->tenant, idem);
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

    std::string stream(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    std::string hash = mailapi::contract::message_key(stream, id), rkeys = recipient_keys(mcf, key->tenant, msg);
    std::string created = std::to_string(now_ms), send_at = std::to_string(msg.send_at);
    ngx_int_t rc;
    if (idem.empty() && key->rate == 0 && key->daily_quota == 0) {
        call->plain = true;
        std::string size = std::to_string(envelope.size());
        std::string keep = key->retention_days ? std::to_string(key->retention_days) : "";
        mailapi::contract::Argv hset, xadd;
        mailapi::contract::enqueue_plain({stream, hash, id, key->tenant, created, send_at, envelope, size, rkeys, keep},
                                         hset, xadd);
        const ngx_mail_api_redis_cmd_t cmds[] = {{hset.argc, hset.argv, hset.lens}, {xadd.argc, xadd.argv, xadd.lens}};
        rc = ngx_mail_api_redis_transact(cmds, 2, enqueue_done, call);
    } else {
        char interval[32];
        snprintf(interval, sizeof interval, "%.3f", key->rate > 0 ? 1e6 / key->rate : 0.0);
        const std::string args[] = {
            "EVALSHA", ngx_mail_api_enqueue_sha(), "5",
            // KEYS
            stream, hash, idem_key, mailapi::contract::rate_key(key->id), mailapi::contract::quota_key(key->id, now_ms),
            // ARGV
            std::to_string(now_ms * 1000), id, key->tenant, created, send_at, envelope, fingerprint,
            std::to_string(mcf->idempotency_ttl), interval, std::to_string(key->burst), std::to_string(key->daily_quota),
            std::to_string(mailapi::contract::QUOTA_KEY_TTL_S), std::to_string(key->retention_days), rkeys};
        constexpr int argc = sizeof args / sizeof args[0];
        const char *argv[argc];
        size_t lens[argc];
        for (int i = 0; i < argc; i++) {
            argv[i] = args[i].data();
            lens[i] = args[i].size();  // the envelope is binary
        }
        const ngx_mail_api_redis_cmd_t cmd = {argc, argv, lens};
        rc = ngx_mail_api_redis_transact(&cmd, 1, enqueue_done, call);
    }
    if (rc != NGX_OK) {
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

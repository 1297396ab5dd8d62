// POST /v1/events/{source}: a hosted provider's event webhook. Verified as
// the provider documents it (common/provider_events.h); anything unverified
// is 401 and nothing is recorded. The events of one of our messages are
// sealed and put on the events stream for deliveryd, which adds them to the
// message's timeline (contract::events_stream).
//
// SES comes through SNS, whose signing certificate is fetched from its
// SigningCertURL (only from the source's allowed host) in the thread pool,
// as is the SubscribeURL of a subscription confirmation; certificates are
// kept per worker.
#include "ngx_mail_api.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include <map>

#include "contract.h"
#include "event_sources.h"
#include "ngx_mail_api_parse.h"
#include "provider_events.h"

namespace pevents = mailapi::pevents;

namespace {

constexpr size_t BODY_MAX = 8 * 1024 * 1024;  // a SendGrid batch of 10,000 events fits
// Mailgun's and SNS's proofs are inside the JSON, parsed before anything is
// verified: jansson takes ~50 bytes for each byte of "[[],[],...]", and a
// worker keeps what it grew to. 1 MiB is far above a Mailgun event or an
// SNS message (at most 256 KiB, escaped in the envelope).
constexpr size_t UNVERIFIED_BODY_MAX = 1024 * 1024;
constexpr int64_t SIGNED_TOLERANCE_S = 600;   // SendGrid's and Mailgun's signed timestamps
constexpr int64_t SNS_TOLERANCE_S = 3600;     // SNS retries within minutes
constexpr size_t FETCH_MAX = 64 * 1024;       // a certificate, or SNS's answer to a subscription

// The signing certificates seen, by URL (this worker's; the loop's thread only).
std::map<std::string, std::string> g_certs;
// Fetches under way in this worker. A certificate is fetched before anything
// is verified, in the pool the store's reads use: unsigned notifications
// naming slow URLs on the allowed host held all its threads, and every GET
// waited behind them. A few at a time; SNS retries the others.
constexpr ngx_uint_t FETCHES_MAX = 4;
ngx_uint_t g_fetches;

ngx_int_t refuse(ngx_http_request_t *r, const char *code, const std::string &message) {
    // a challenge is due with every 401; these senders sign, they have no scheme to answer it with
    ngx_mail_api_add_header(r, "WWW-Authenticate", "Signature realm=\"mail_api events\"");
    return ngx_mail_api_send_json(r, NGX_HTTP_UNAUTHORIZED, ngx_mail_api_error_json(code, message, ""));
}

ngx_int_t invalid(ngx_http_request_t *r, const std::string &why) {
    return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_payload", why.substr(0, 200));
}

// Equal in constant time whatever the lengths: compared as SHA-256 digests.
bool same_secret(const std::string &a, const std::string &b) {
    unsigned char da[SHA256_DIGEST_LENGTH], db[SHA256_DIGEST_LENGTH];
    SHA256(reinterpret_cast<const unsigned char *>(a.data()), a.size(), da);
    SHA256(reinterpret_cast<const unsigned char *>(b.data()), b.size(), db);
    return CRYPTO_memcmp(da, db, sizeof da) == 0;
}

// ---------------------------------------------------------------- onto the stream

struct Enqueue {
    size_t events;
};

ngx_int_t enqueued(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *e = static_cast<Enqueue *>(data);
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements != 1 ||
        reply->element[0]->type != REDIS_REPLY_INTEGER) {
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "mail_api: events not queued: %s", reply->str);
        }
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                       "the queue is unavailable, retry later");
    }
    if (reply->element[0]->integer < 0) return refuse(r, "signature_replayed", "this signed request was seen before");
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"received\":" + std::to_string(e->events) + "}");
}

ngx_int_t enqueue(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                  const std::vector<pevents::Event> &events, const std::string &mailgun_token) {
    std::string stream(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
    std::vector<std::string> args = {"EVAL", mailapi::contract::EVENTS_IN_LUA, "2", mailapi::contract::events_stream(stream),
                                     mailgun_token.empty() ? ""
                                                           : mailapi::contract::mailgun_token_key(stream, src.name,
                                                                                                  mailgun_token),
                                     std::to_string(2 * SIGNED_TOLERANCE_S), src.name};
    for (const pevents::Event &e : events) {
        std::string sealed;
        if (!mailapi::envelope_seal(*mcf->keyring, mailapi::contract::event_aad(src.name, e.message_id),
                                    pevents::event_to_json(e), sealed)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        args.push_back(e.message_id);
        args.push_back(std::move(sealed));
    }
    if (events.empty() && mailgun_token.empty()) return ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"received\":0}");
    auto *e = static_cast<Enqueue *>(ngx_palloc(r->pool, sizeof(Enqueue)));
    if (e == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    e->events = events.size();
    return ngx_mail_api_redis_request(r, mcf, args, enqueued, e);
}

// ---------------------------------------------------------------- HTTPS fetches (SNS)

struct Fetch {
    std::string url, cacert;  // in
    std::string body, error;  // out
    long status = 0;
    // what to do with it, back on the loop
    const mailapi::EventSource *src;
    pevents::SnsMessage sns;
    bool confirm;  // the SubscribeURL: a subscription confirmed
};

size_t fetched(char *data, size_t size, size_t n, void *user) noexcept {
    auto *f = static_cast<Fetch *>(user);
    if (f->body.size() + size * n > FETCH_MAX) return 0;  // larger than any certificate: refused
    try {
        f->body.append(data, size * n);
    } catch (...) {
        return 0;
    }
    return size * n;
}

struct FetchTask {
    Fetch *f;
};

void fetch_in_thread(void *data, ngx_log_t *) noexcept {
    Fetch *f = static_cast<FetchTask *>(data)->f;
    CURL *c = curl_easy_init();
    if (c == nullptr) {
        f->error = "no curl handle";
        return;
    }
    curl_easy_setopt(c, CURLOPT_URL, f->url.c_str());
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 3000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!f->cacert.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, f->cacert.c_str());
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, fetched);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, f);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &f->status);
    if (rc != CURLE_OK) f->error = curl_easy_strerror(rc);
    curl_easy_cleanup(c);
}

ngx_int_t verified_sns(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                       const pevents::SnsMessage &m, const std::string &cert);

void fetch_done(ngx_event_t *ev) noexcept {
    auto *r = static_cast<ngx_http_request_t *>(ev->data);
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (ctx->keepalive.timer_set) {
        ngx_del_timer(&ctx->keepalive);
    }
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_mail_api_module));
    Fetch *f = static_cast<Fetch *>(ctx->fetch);
    if (g_fetches) g_fetches--;
    ngx_int_t rc;
    try {
        bool ok = f->error.empty() && f->status == 200;
        if (f->confirm) {
            rc = ok ? ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"subscribed\":true}")
                    : ngx_mail_api_send_error(r, NGX_HTTP_BAD_GATEWAY, "subscription_failed",
                                              "SNS did not confirm the subscription: " +
                                                  (f->error.empty() ? "http " + std::to_string(f->status) : f->error));
        } else if (!ok) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0, "mail_api: SNS certificate not fetched: %s",
                          f->error.empty() ? "not 200" : f->error.c_str());
            rc = refuse(r, "signature_invalid", "the SNS signing certificate could not be fetched");
        } else {
            if (g_certs.size() >= 64) g_certs.clear();
            g_certs[f->url] = f->body;
            rc = verified_sns(r, mcf, *f->src, f->sns, f->body);
        }
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (rc == NGX_DONE) return;
    ngx_mail_api_finish(r, rc);
}

void fetch_keepalive(ngx_event_t *ev) noexcept { ngx_add_timer(ev, 1000); }

ngx_int_t fetch(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, Fetch *f) {
    if (g_fetches >= FETCHES_MAX) {
        ngx_mail_api_add_header(r, "Retry-After", "1");
        return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "fetch_busy",
                                       "too many SNS certificate fetches are under way, retry later");
    }
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    ngx_thread_task_t *task = ngx_thread_task_alloc(r->pool, sizeof(FetchTask));
    if (ctx == nullptr || task == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    static_cast<FetchTask *>(task->ctx)->f = f;
    ctx->fetch = f;
    task->handler = fetch_in_thread;
    task->event.data = r;
    task->event.handler = fetch_done;
    if (ngx_thread_task_post(mcf->thread_pool, task) != NGX_OK) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    g_fetches++;
    // an exiting worker waits for timers, not thread tasks
    ctx->keepalive.handler = fetch_keepalive;
    ctx->keepalive.data = r;
    ctx->keepalive.log = r->connection->log;
    ngx_add_timer(&ctx->keepalive, 6000);
    return NGX_DONE;
}

// ---------------------------------------------------------------- each provider

ngx_int_t sendgrid(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                   const std::string &body) {
    std::string sig(ngx_mail_api_header(r, "X-Twilio-Email-Event-Webhook-Signature"));
    std::string ts(ngx_mail_api_header(r, "X-Twilio-Email-Event-Webhook-Timestamp"));
    if (sig.empty() || ts.empty()) return refuse(r, "signature_missing", "the request is not signed");
    if (!pevents::fresh(ts, ngx_time(), SIGNED_TOLERANCE_S)) return refuse(r, "signature_stale", "the signature is too old");
    if (!pevents::sendgrid_verify(src.public_key, ts, body, sig)) {
        return refuse(r, "signature_invalid", "the signature does not match the body");
    }
    std::vector<pevents::Event> events;
    std::string err;
    if (!pevents::parse_sendgrid(body, events, err)) return invalid(r, err);
    return enqueue(r, mcf, src, events, "");
}

ngx_int_t mailgun(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                  const std::string &body) {
    std::vector<pevents::Event> events;
    pevents::MailgunSignature sig;
    std::string err;
    if (!pevents::parse_mailgun(body, events, sig, err)) {
        return sig.signature.empty() ? refuse(r, "signature_missing", "the request is not signed") : invalid(r, err);
    }
    if (sig.signature.empty()) return refuse(r, "signature_missing", "the request is not signed");
    if (!pevents::fresh(sig.timestamp, ngx_time(), SIGNED_TOLERANCE_S)) {
        return refuse(r, "signature_stale", "the signature is too old");
    }
    if (!pevents::mailgun_verify(src.signing_key, sig) || sig.token.size() > 256) {
        return refuse(r, "signature_invalid", "the signature does not match");
    }
    return enqueue(r, mcf, src, events, sig.token);
}

ngx_int_t postmark(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                   const std::string &body) {
    std::vector<pevents::Event> events;
    std::string err;
    if (!pevents::parse_postmark(body, events, err)) return invalid(r, err);
    return enqueue(r, mcf, src, events, "");
}

ngx_int_t verified_sns(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
                       const pevents::SnsMessage &m, const std::string &cert) {
    if (!pevents::sns_verify(cert, m)) return refuse(r, "signature_invalid", "the SNS signature does not match");
    if (m.type == "SubscriptionConfirmation") {
        if (!pevents::sns_url_allowed(m.subscribe_url.substr(0, m.subscribe_url.find('?')) + ".pem", src.cert_host)) {
            // (the check wants a path ending in .pem: the query is SNS's own)
            return refuse(r, "subscribe_url_refused", "the SubscribeURL is not on the allowed host");
        }
        auto *f = ngx_mail_api_pool_new<Fetch>(r->pool);
        if (f == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        f->url = m.subscribe_url;
        f->cacert = src.cacert;
        f->src = &src;
        f->confirm = true;
        return fetch(r, mcf, f);
    }
    if (m.type != "Notification") return ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"received\":0}");
    std::vector<pevents::Event> events;
    std::string err;
    if (!pevents::parse_ses(m.message, m.message_id, events, err)) return invalid(r, err);
    return enqueue(r, mcf, src, events, "");
}

ngx_int_t ses(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::EventSource &src,
              const std::string &body) {
    pevents::SnsMessage m;
    std::string err;
    if (!pevents::parse_sns(body, m, err)) return invalid(r, err);
    if (!same_secret(m.topic_arn, src.topic_arn)) return refuse(r, "topic_unknown", "not the configured SNS topic");
    if (!pevents::fresh(m.timestamp, ngx_time(), SNS_TOLERANCE_S)) {
        return refuse(r, "signature_stale", "the SNS message is too old");
    }
    if (!pevents::sns_url_allowed(m.signing_cert_url, src.cert_host)) {
        return refuse(r, "certificate_url_refused", "the SigningCertURL is not on the allowed host");
    }
    auto cached = g_certs.find(m.signing_cert_url);
    if (cached != g_certs.end()) return verified_sns(r, mcf, src, m, cached->second);
    auto *f = ngx_mail_api_pool_new<Fetch>(r->pool);
    if (f == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    f->url = m.signing_cert_url;
    f->cacert = src.cacert;
    f->src = &src;
    f->sns = m;
    f->confirm = false;
    return fetch(r, mcf, f);
}

ngx_int_t events_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *,
                      const std::string &body) {
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    const mailapi::EventSource &src = *static_cast<const mailapi::EventSource *>(ctx->source);
    if (src.type == "sendgrid") return sendgrid(r, mcf, src, body);
    if (src.type == "mailgun") return mailgun(r, mcf, src, body);
    if (src.type == "postmark") return postmark(r, mcf, src, body);
    return ses(r, mcf, src, body);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_events(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, ngx_str_t name) {
    std::string_view n(reinterpret_cast<char *>(name.data), name.len);
    const mailapi::EventSource *src = mcf->event_sources ? mailapi::event_source_find(*mcf->event_sources, n) : nullptr;
    if (src == nullptr) return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such event source");
    if (src->type == "postmark") {
        // Postmark's only proof: the Basic credentials set in the webhook's URL
        ngx_table_elt_t *h = r->headers_in.authorization;
        std::string user, pass;
        bool ok = h && mailapi::request::basic_credentials(
                           std::string_view(reinterpret_cast<char *>(h->value.data), h->value.len), user, pass, false);
        ok = ok && same_secret(user, src->username) & same_secret(pass, src->password);
        OPENSSL_cleanse(pass.data(), pass.size());
        if (!ok) {
            ngx_mail_api_add_header(r, "WWW-Authenticate", "Basic realm=\"mail_api events\"");
            return ngx_mail_api_send_json(r, NGX_HTTP_UNAUTHORIZED,
                                          ngx_mail_api_error_json("credentials_invalid",
                                                                  "send the Basic credentials set for this source", ""));
        }
    }
    ngx_mail_api_ctx_t *ctx = ngx_mail_api_ctx(r);
    if (ctx == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    ctx->source = src;
    bool parsed_unverified = src->type == "mailgun" || src->type == "ses";
    return ngx_mail_api_read_body(r, nullptr, parsed_unverified ? UNVERIFIED_BODY_MAX : BODY_MAX, events_body);
}

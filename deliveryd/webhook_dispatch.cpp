#include "webhook_dispatch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstring>
#include <memory>
#include <sstream>

#include "clock.h"
#include "contract.h"
#include "json.h"
#include "log.h"
#include "message.h"
#include "redis_reply.h"
#include "webhooks.h"

namespace contract = mailapi::contract;
namespace records = mailapi::records;

using mailapi::wall_ms;
using mailapi::reply_field;

namespace {

constexpr int BATCH = 32;
constexpr size_t MAX_WORKING = 256;
constexpr int TENANT_IN_FLIGHT = 32;  // a tenant's transfers at once (webhook_dispatch.h)
constexpr int64_t LATER_MS = 1000;

std::string dump(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "{}";
    free(s);
    return out;
}

// What an endpoint receives for one event of a message's timeline.
std::string payload(const std::string &tenant, const std::string &message_id, const records::Event &e,
                    const std::vector<std::string> &recipients) {
    mailapi::Json data(json_object());
    json_object_set_new(data.get(), "message_id", json_string(message_id.c_str()));
    json_object_set_new(data.get(), "tenant", json_string(tenant.c_str()));
    json_object_set_new(data.get(), "type", json_string(e.type.c_str()));
    json_object_set_new(data.get(), "at", json_string(mailapi::rfc3339_format_ms(e.at_ms).c_str()));
    if (e.rcpt >= 0 && static_cast<size_t>(e.rcpt) < recipients.size()) {
        json_object_set_new(data.get(), "recipient", json_string(recipients[static_cast<size_t>(e.rcpt)].c_str()));
    }
    if (!e.provider.empty()) json_object_set_new(data.get(), "provider", json_string(e.provider.c_str()));
    if (e.code) json_object_set_new(data.get(), "code", json_integer(e.code));
    if (!e.reason.empty()) json_object_set_new(data.get(), "reason", json_string(e.reason.c_str()));
    if (!e.bounce.empty()) json_object_set_new(data.get(), "bounce", json_string(e.bounce.c_str()));
    if (!e.response.empty()) json_object_set_new(data.get(), "response", json_string(e.response.c_str()));
    mailapi::Json o(json_object());
    json_object_set_new(o.get(), "type", json_string(("message." + e.type).c_str()));
    json_object_set_new(o.get(), "timestamp", json_string(mailapi::rfc3339_format_ms(e.at_ms).c_str()));
    json_object_set(o.get(), "data", data.get());
    return dump(o.get());
}

// A retry set member: the delivery, to be tried for the `attempt`th time.
std::string retry_member(const std::string &endpoint, const std::string &event_id, const std::string &type,
                         int attempt, const std::string &sealed) {
    return endpoint + "\n" + event_id + "\n" + type + "\n" + std::to_string(attempt) + "\n" + sealed;
}

struct Post {
    CURL *easy = curl_easy_init();
    curl_slist *headers = nullptr;
    std::string body, answer;
    bool refused_address = false;
    bool allow_private = false;
    ~Post() {
        if (easy) curl_easy_cleanup(easy);
        curl_slist_free_all(headers);
    }
};

size_t discard(char *, size_t size, size_t n, void *) noexcept { return size * n; }

// Every socket a transfer opens: to a public address only, unless allowed.
curl_socket_t open_socket(void *clientp, curlsocktype, struct curl_sockaddr *address) noexcept {
    auto *p = static_cast<Post *>(clientp);
    if (!p->allow_private && !webhook_address_public(&address->addr)) {
        p->refused_address = true;
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype, address->protocol);
}

// An IPv4 address (4 bytes, network order) that is public unicast.
bool v4_public(const unsigned char *p) {
    uint32_t a = static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 |
                 static_cast<uint32_t>(p[2]) << 8 | p[3];
    struct Range {
        uint32_t net, mask;
    };
    static const Range blocked[] = {
        {0x00000000, 0xff000000}, {0x0a000000, 0xff000000}, {0x64400000, 0xffc00000}, {0x7f000000, 0xff000000},
        {0xa9fe0000, 0xffff0000}, {0xac100000, 0xfff00000}, {0xc0000000, 0xffffff00}, {0xc0000200, 0xffffff00},
        {0xc0a80000, 0xffff0000}, {0xc6120000, 0xfffe0000}, {0xc6336400, 0xffffff00}, {0xcb007100, 0xffffff00},
        {0xe0000000, 0xf0000000}, {0xf0000000, 0xf0000000}};
    for (const Range &r : blocked) {
        if ((a & r.mask) == r.net) return false;
    }
    return true;
}

// Whether the first `bits` of an IPv6 address are those of `net`.
bool v6_in(const unsigned char *b, const std::array<unsigned char, 16> &net, int bits) {
    for (int i = 0; i < bits; i += 8) {
        int n = std::min(8, bits - i);
        unsigned char mask = static_cast<unsigned char>(0xff << (8 - n));
        if ((b[i / 8] & mask) != (net[static_cast<size_t>(i / 8)] & mask)) return false;
    }
    return true;
}

}  // namespace

bool webhook_address_public(const struct sockaddr *addr) {
    if (addr->sa_family == AF_INET) {
        return v4_public(reinterpret_cast<const unsigned char *>(
            &reinterpret_cast<const sockaddr_in *>(addr)->sin_addr.s_addr));
    }
    if (addr->sa_family == AF_INET6) {
        const unsigned char *b = reinterpret_cast<const sockaddr_in6 *>(addr)->sin6_addr.s6_addr;
        // an IPv4 address inside (mapped, NAT64, 6to4) is judged as IPv4
        if (v6_in(b, {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}}, 96) ||
            v6_in(b, {{0, 0x64, 0xff, 0x9b}}, 96)) {
            return v4_public(b + 12);
        }
        if (v6_in(b, {{0x20, 0x02}}, 16)) return v4_public(b + 2);
        struct Range {
            std::array<unsigned char, 16> net;
            int bits;
        };
        static const Range blocked[] = {
            {{}, 96},                                                // ::, ::1, IPv4-compatible
            {{0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff}, 96},              // IPv4-translated
            {{0, 0x64, 0xff, 0x9b, 0, 1}, 48},                       // local-use NAT64
            {{0x01, 0x00}, 64},                                      // discard-only
            {{0x20, 0x01}, 23},                                      // IETF protocols: Teredo, benchmarking...
            {{0x20, 0x01, 0x0d, 0xb8}, 32},                          // documentation
            {{0x3f, 0xff}, 20},                                      // documentation
            {{0xfc}, 7},                                             // unique local
            {{0xfe, 0x80}, 9},                                       // link-local, site-local
            {{0xff}, 8}};                                            // multicast
        for (const Range &r : blocked) {
            if (v6_in(b, r.net, r.bits)) return false;
        }
        return true;
    }
    return false;
}

Webhooks::Webhooks(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring)
    : loop_(loop), cfg_(cfg), keyring_(keyring), multi_(loop, cfg.connections_per_host), stream_(contract::webhooks_stream(cfg.stream)),
      redis_(loop, "webhooks", cfg.redis, 10.0) {
    ev_timer_init(&poll_, poll_cb, 0.2, 0.2);
    poll_.data = this;
    ev_timer_init(&claim_, claim_cb, 1, std::max(1, cfg.claim_idle / 2));
    claim_.data = this;
    ev_timer_init(&move_, move_cb, 1, 1);
    move_.data = this;
}

Webhooks::~Webhooks() {
    for (ev_timer *t : {&poll_, &claim_, &move_}) ev_timer_stop(loop_, t);
}

void Webhooks::start() {
    redis_.on_connect = [this] {
        reading_ = false;
        redis_.command({"XGROUP", "CREATE", stream_, cfg_.group, "0", "MKSTREAM"}, [this](redisReply *r) {
            group_ready_ = r && (r->type != REDIS_REPLY_ERROR || std::strncmp(r->str, "BUSYGROUP", 9) == 0);
        });
    };
    redis_.start();
    for (ev_timer *t : {&poll_, &claim_, &move_}) ev_timer_start(loop_, t);
}

void Webhooks::stop() {
    stopping_ = true;
    for (ev_timer *t : {&poll_, &claim_, &move_}) ev_timer_stop(loop_, t);
}

void Webhooks::fanout(const std::string &tenant, const std::string &message_id,
                      const std::vector<records::Event> &events, const std::vector<std::string> &recipients,
                      std::function<void(bool)> done) {
    if (events.empty()) {
        done(true);
        return;
    }
    std::vector<std::string> args = {"EVAL", contract::WH_FANOUT_LUA, "2", contract::webhook_set_key(cfg_.stream, tenant),
                                     stream_, cfg_.stream + ":whe:"};
    for (const records::Event &e : events) {
        std::string id = message_id + "_" + e.id, sealed;
        if (!mailapi::envelope_seal(keyring_, contract::webhook_aad(tenant, id), payload(tenant, message_id, e, recipients),
                                    sealed)) {
            done(false);
            return;
        }
        args.push_back(id);
        args.push_back(e.type);
        args.push_back(std::move(sealed));
    }
    if (!redis_.command(args, [done](redisReply *r) { done(r && r->type == REDIS_REPLY_INTEGER); })) done(false);
}

void Webhooks::poll_cb(struct ev_loop *, ev_timer *w, int) noexcept { static_cast<Webhooks *>(w->data)->read(); }

void Webhooks::move_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Webhooks *>(w->data);
    self->redis_.command({"EVAL", contract::WH_MOVE_LUA, "2", self->stream_, contract::webhook_retry_key(self->cfg_.stream),
                          std::to_string(wall_ms()), "100", self->cfg_.stream + ":whe:"},
                         [](redisReply *) {});
}

void Webhooks::claim_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Webhooks *>(w->data);
    if (!self->group_ready_ || self->stopping_ || self->working_.size() >= MAX_WORKING) return;
    self->redis_.command({"XAUTOCLAIM", self->stream_, self->cfg_.group, self->cfg_.consumer,
                          std::to_string(static_cast<int64_t>(self->cfg_.claim_idle) * 1000), self->claim_cursor_,
                          "COUNT", std::to_string(BATCH)},
                         [self](redisReply *r) {
                             if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
                             if (r->element[0]->type == REDIS_REPLY_STRING) self->claim_cursor_ = r->element[0]->str;
                             self->take(r->element[1]);
                         });
}

void Webhooks::read() {
    if (!group_ready_ || reading_ || stopping_ || working_.size() >= MAX_WORKING) return;
    reading_ = true;
    bool sent = redis_.command(
        {"XREADGROUP", "GROUP", cfg_.group, cfg_.consumer, "COUNT", std::to_string(BATCH), "STREAMS", stream_, ">"},
        [this](redisReply *r) {
            reading_ = false;
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->element[0]->elements != 2) {
                if (r && r->type == REDIS_REPLY_ERROR && std::strncmp(r->str, "NOGROUP", 7) == 0) group_ready_ = false;
                return;
            }
            const redisReply *list = r->element[0]->element[1];
            take(list);
            // a full batch: more are waiting, read on without the poll's pause
            if (list->type == REDIS_REPLY_ARRAY && list->elements == BATCH) read();
        });
    if (!sent) reading_ = false;
}

void Webhooks::take(const redisReply *list) {
    if (list == nullptr || list->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;
        }
        Delivery d;
        d.stream_id = e->element[0]->str;
        d.endpoint = reply_field(e->element[1], contract::field::EP);
        d.event_id = reply_field(e->element[1], contract::field::EID);
        d.type = reply_field(e->element[1], contract::field::TYPE);
        d.attempt = std::max(0, std::min(100, std::atoi(reply_field(e->element[1], contract::field::ATTEMPT).c_str())));
        d.sealed = reply_field(e->element[1], contract::field::ENVELOPE);
        if (!working_.count(d.stream_id)) handle(std::move(d));
    }
}

void Webhooks::handle(Delivery d) {
    working_[d.stream_id] = d;
    namespace f = contract::field;
    bool sent = redis_.command({"HMGET", contract::webhook_key(cfg_.stream, d.endpoint), f::TENANT, f::URL, f::TYPES,
                                f::DISABLED, f::SECRETS, f::FAILING_SINCE},
                               [this, d](redisReply *r) {
                                   if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 6) {
                                       working_.erase(d.stream_id);  // Redis away: read again (pending) later
                                       return;
                                   }
                                   auto s = [r](size_t i) {
                                       return r->element[i]->type == REDIS_REPLY_STRING
                                                  ? std::string(r->element[i]->str, r->element[i]->len)
                                                  : std::string();
                                   };
                                   Endpoint ep{s(0), s(1), s(2), s(3), s(4), std::atoll(s(5).c_str())};
                                   // gone, or disabled: its deliveries are dropped
                                   if (ep.tenant.empty() || !ep.disabled.empty()) return drop(d);
                                   if (posting_[ep.tenant] >= TENANT_IN_FLIGHT) return later(d);
                                   post(d, ep);
                               });
    if (!sent) working_.erase(d.stream_id);
}

void Webhooks::post(const Delivery &d, const Endpoint &ep) {
    std::string body, secrets_text;
    if (!mailapi::envelope_open(keyring_, contract::webhook_aad(ep.tenant, d.event_id), d.sealed, body) ||
        !mailapi::envelope_open(keyring_, contract::webhook_aad(ep.tenant, d.endpoint), ep.secrets_sealed,
                                secrets_text)) {
        log_error("webhook cannot be opened: dropped", {{"endpoint", d.endpoint}, {"event", d.event_id}});
        return drop(d);
    }
    std::vector<std::string> secrets;
    std::istringstream in(secrets_text);
    std::string secret;
    long long expires;
    int64_t now = wall_ms();
    while (in >> secret >> expires) {
        if (expires == 0 || expires > now) secrets.push_back(secret);
    }
    auto p = std::make_shared<Post>();
    if (p->easy == nullptr) return outcome(d, ep, 0, "no curl handle", 0, 0);
    p->body = std::move(body);
    p->allow_private = cfg_.webhook_allow_private != 0;
    int64_t ts = now / 1000;
    p->headers = curl_slist_append(p->headers, "Content-Type: application/json");
    p->headers = curl_slist_append(p->headers, "User-Agent: ngx_mail_api-webhooks/1");
    p->headers = curl_slist_append(p->headers, ("webhook-id: " + d.event_id).c_str());
    p->headers = curl_slist_append(p->headers, ("webhook-timestamp: " + std::to_string(ts)).c_str());
    p->headers = curl_slist_append(
        p->headers, ("webhook-signature: " + mailapi::webhook_signature(secrets, d.event_id, ts, p->body)).c_str());
    CURL *c = p->easy;
    curl_easy_setopt(c, CURLOPT_URL, ep.url.c_str());
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, p->body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(p->body.size()));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, p->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_NOPROXY, "*");  // the environment's proxies would be another way out
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(cfg_.webhook_timeout) * 1000);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(cfg_.webhook_timeout) * 1000);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(c, CURLOPT_OPENSOCKETDATA, p.get());
    double started = ev_time();
    bool added = multi_.add(c, [this, p, d, ep, started](CURLcode rc) {
        if (--posting_[ep.tenant] <= 0) posting_.erase(ep.tenant);
        long status = 0;
        curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
        curl_off_t wait = 0;
        int retry_after = 0;
        if (curl_easy_getinfo(p->easy, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0) {
            retry_after = static_cast<int>(std::min<curl_off_t>(wait, 86400));
        }
        std::string error = rc == CURLE_OK ? "" : curl_easy_strerror(rc);
        if (p->refused_address) error = "the endpoint's address is not public (webhook_allow_private 0)";
        outcome(d, ep, rc == CURLE_OK ? status : 0, error, retry_after, (ev_time() - started) * 1000);
    });
    if (!added) return outcome(d, ep, 0, "cannot start transfer", 0, 0);
    posting_[ep.tenant]++;
}

void Webhooks::outcome(const Delivery &d, const Endpoint &ep, long status, const std::string &error, int retry_after,
                       double ms) {
    int64_t now = wall_ms();
    bool ok = status >= 200 && status < 300;
    mailapi::Json line(json_object());
    json_object_set_new(line.get(), "at", json_string(mailapi::rfc3339_format_ms(now).c_str()));
    json_object_set_new(line.get(), "webhook_id", json_string(d.event_id.c_str()));
    json_object_set_new(line.get(), "type", json_string(d.type.c_str()));
    json_object_set_new(line.get(), "attempt", json_integer(d.attempt + 1));
    json_object_set_new(line.get(), "result", json_string(ok ? "delivered" : "failed"));
    if (status) json_object_set_new(line.get(), "status", json_integer(status));
    if (!error.empty()) json_object_set_new(line.get(), "error", json_string(error.c_str()));
    json_object_set_new(line.get(), "ms", json_integer(static_cast<json_int_t>(ms)));
    std::string log = dump(line.get());
    log_info(ok ? "webhook delivered" : "webhook failed",
             {{"endpoint", d.endpoint}, {"event", d.event_id}, {"status", std::to_string(status)}, {"error", error}});
    if (ok) return end(d, log, "ok", "");
    std::string what = status ? "http " + std::to_string(status) : error;
    if (status == 410) return end(d, log, "disable", "the endpoint answered 410 Gone");
    if (ep.failing_since && now - ep.failing_since > static_cast<int64_t>(cfg_.webhook_disable_after) * 1000) {
        return end(d, log, "disable",
                   "every delivery failed since " + mailapi::rfc3339_format_ms(ep.failing_since) + ": " + what);
    }
    const std::vector<int> &retries = cfg_.webhook_retries;
    if (static_cast<size_t>(d.attempt) >= retries.size()) {
        return end(d, log, "disable", "a delivery failed " + std::to_string(d.attempt + 1) + " times: " + what);
    }
    int delay = std::max(retries[static_cast<size_t>(d.attempt)], retry_after);
    retry(d, now + static_cast<int64_t>(delay) * 1000, log);
}

void Webhooks::end(const Delivery &d, const std::string &log, const std::string &how, const std::string &reason) {
    if (how == "disable") log_warn("webhook endpoint disabled", {{"endpoint", d.endpoint}, {"reason", reason}});
    bool sent = redis_.command({"EVAL", contract::WH_DONE_LUA, "3", stream_, contract::webhook_key(cfg_.stream, d.endpoint),
                                contract::webhook_log_key(cfg_.stream, d.endpoint), cfg_.group, d.stream_id, log,
                                std::to_string(contract::WEBHOOK_LOG_MAX), how, reason, std::to_string(wall_ms())},
                               [this, d](redisReply *) { working_.erase(d.stream_id); });
    if (!sent) working_.erase(d.stream_id);  // pending: taken over, tried again
}

void Webhooks::retry(const Delivery &d, int64_t due_ms, const std::string &log) {
    std::string member = retry_member(d.endpoint, d.event_id, d.type, d.attempt + 1, d.sealed);
    bool sent = redis_.command({"EVAL", contract::WH_DEFER_LUA, "4", stream_, contract::webhook_retry_key(cfg_.stream),
                                contract::webhook_key(cfg_.stream, d.endpoint),
                                contract::webhook_log_key(cfg_.stream, d.endpoint), cfg_.group, d.stream_id,
                                std::to_string(due_ms), member, log, std::to_string(contract::WEBHOOK_LOG_MAX),
                                std::to_string(wall_ms()), std::to_string(cfg_.webhook_queue_max)},
                               [this, d](redisReply *) { working_.erase(d.stream_id); });
    if (!sent) working_.erase(d.stream_id);
}

void Webhooks::drop(const Delivery &d) {
    bool sent = redis_.command({"EVAL", contract::EVENT_DONE_LUA, "1", stream_, cfg_.group, d.stream_id},
                               [this, d](redisReply *) { working_.erase(d.stream_id); });
    if (!sent) working_.erase(d.stream_id);
}

void Webhooks::later(const Delivery &d) {
    bool sent = redis_.command({"EVAL", contract::WH_LATER_LUA, "3", stream_, contract::webhook_retry_key(cfg_.stream),
                                contract::webhook_key(cfg_.stream, d.endpoint), cfg_.group, d.stream_id, std::to_string(wall_ms() + LATER_MS),
                                retry_member(d.endpoint, d.event_id, d.type, d.attempt, d.sealed)},
                               [this, d](redisReply *) { working_.erase(d.stream_id); });
    if (!sent) working_.erase(d.stream_id);
}

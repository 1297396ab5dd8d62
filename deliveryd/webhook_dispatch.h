// Webhooks out (the sending side): every event of a message's timeline, to each endpoint of its
// tenant that wants that type (Standard Webhooks, common/webhooks.h), at
// least once.
//
// fanout() is called once an outcome is in the store and before its entry
// leaves Redis, so a crash between the two repeats it (a receiver sees the
// same webhook-id again, never misses one). The deliveries wait on
// "<stream>:webhooks" (consumer group, taken over like messages), each
// retried on failure after the delays of webhook_retry_schedule (a 429's or
// 503's Retry-After, if longer), the endpoint's log keeping each attempt.
// A 410 disables the endpoint at once; one that failed every delivery for
// webhook_disable_after, or whose delivery ran out of retries, is disabled
// with the reason, shown by the API. Loopback, private, link-local and
// other non-public addresses are refused (checked on the address connected
// to, so no DNS answer gets around it) unless webhook_allow_private is 1.
// A tenant has at most TENANT_IN_FLIGHT transfers at once, its other
// deliveries waiting a second in the retry set (no attempt counted): one
// tenant's endpoints that never answer would otherwise take every transfer
// and hold up every other tenant's webhooks.
// Its transfers run on a libcurl multi of their own: in the providers' one,
// a webhook to a provider's host and port would ride that provider's
// kept-alive connection, opened without the check.
#pragma once
#include <ev.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "config.h"
#include "crypto.h"
#include "curl_multi.h"
#include "records.h"
#include "redis_async.h"

class Webhooks {
public:
    Webhooks(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring);
    ~Webhooks();
    Webhooks(const Webhooks &) = delete;
    Webhooks &operator=(const Webhooks &) = delete;

    void start();
    void stop();
    int in_flight() const { return static_cast<int>(working_.size()); }

    // The events just recorded for a message, to the tenant's endpoints;
    // `recipients` names the events' recipients by index. done(false): Redis
    // did not take them (call again).
    void fanout(const std::string &tenant, const std::string &message_id,
                const std::vector<mailapi::records::Event> &events, const std::vector<std::string> &recipients,
                std::function<void(bool ok)> done);

private:
    struct Delivery {
        std::string stream_id, endpoint, event_id, type, sealed;
        int attempt = 0;
    };
    struct Endpoint {
        std::string tenant, url, types, disabled, secrets_sealed;
        int64_t failing_since = 0;
    };

    void read();
    void take(const redisReply *entries);
    void handle(Delivery d);
    void post(const Delivery &d, const Endpoint &ep);
    void outcome(const Delivery &d, const Endpoint &ep, long status, const std::string &error, int retry_after,
                 double ms);
    void end(const Delivery &d, const std::string &log, const std::string &how, const std::string &reason);
    void retry(const Delivery &d, int64_t due_ms, const std::string &log);
    void drop(const Delivery &d);
    void later(const Delivery &d);
    static void poll_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void claim_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void move_cb(struct ev_loop *, ev_timer *w, int) noexcept;

    struct ev_loop *loop_;
    const Config &cfg_;
    const mailapi::Keyring &keyring_;
    CurlMulti multi_;  // webhooks' connections only (see above)
    std::string stream_;
    RedisAsync redis_;
    ev_timer poll_, claim_, move_;
    bool group_ready_ = false, reading_ = false, stopping_ = false;
    std::string claim_cursor_ = "0-0";
    std::map<std::string, Delivery> working_;  // by stream id
    std::map<std::string, int> posting_;       // transfers under way, by tenant
};

// Whether deliveryd may connect to this address (webhook_allow_private 0):
// public unicast only; not loopback, private (RFC 1918, fc00::/7),
// link-local, CGNAT, multicast, documentation or other reserved ranges.
bool webhook_address_public(const struct sockaddr *addr);

// What every way of sending has in common. A provider classifies its own
// failures: permanent (this message will never go through it: no failover,
// no retry) or transient (try the next provider, retry later).
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "message.h"

// One configured provider account, from a config line
//   provider NAME TYPE key=value ...
// TYPE is smtp, sendgrid, mailgun, postmark, ses or http. `options` holds the
// type's settings (url, api_key, domain, region, ...); a "<key>_file" setting
// has already been read into "<key>". config.cpp checks the keys each type
// takes and fills in its defaults.
struct ProviderSpec {
    std::string name, type;
    std::map<std::string, std::string> options;

    const std::string &get(const std::string &key) const {
        static const std::string none;
        auto it = options.find(key);
        return it == options.end() ? none : it->second;
    }
    bool operator==(const ProviderSpec &o) const {
        return name == o.name && type == o.type && options == o.options;
    }
};

enum class SendResult { sent, permanent, transient };

struct SendOutcome {
    SendOutcome() = default;
    SendOutcome(SendResult r, int c, std::string why, bool fault = false, bool skip = false)
        : result(r), code(c), reason(std::move(why)), provider_fault(fault), skipped(skip) {}

    SendResult result = SendResult::transient;
    int code = 0;        // SMTP reply or HTTP status, 0 when none
    std::string reason;  // short, never personal data
    // The provider itself is in trouble (unreachable, timing out, 5xx, 429,
    // refusing our credentials), as opposed to this message or recipient:
    // only these count toward its circuit breaker.
    bool provider_fault = false;
    bool skipped = false;  // not tried: the provider's circuit is open
    // The relay's policy refused us (SMTP 5.7.x): fail over, and if no other
    // route takes it the message is given up into the dead letters (to be
    // replayed once the relay is set right), not failed for good.
    bool policy = false;
    int retry_after = 0;   // seconds the provider asked us to wait (429/503 Retry-After)
    // This provider can never carry this message (it needs SMTPUTF8, or is
    // larger than the relay takes): fail over without counting it against the
    // provider; if no route can, the message is given up at once.
    bool unsupported = false;
    // Each recipient's own outcome, when the provider tells them apart (an
    // SMTP relay answers each RCPT): for every recipient of the request, in
    // its order. Empty: `result` is every recipient's.
    struct Recipient {
        size_t index = 0;  // into mailapi::message_envelope_recipients
        SendResult result = SendResult::transient;
        int code = 0;
        std::string reason;
    };
    std::vector<Recipient> recipients;
};

// One send: a message, and those of its envelope recipients
// (mailapi::message_envelope_recipients) still to reach. Lives, unchanged,
// until the send's `done` has run.
struct SendRequest {
    std::string id, tenant;
    const mailapi::Message *msg = nullptr;
    std::vector<size_t> rcpts;  // indices, ascending; empty = all of them
    bool all() const { return rcpts.empty(); }
};

class Provider {
public:
    virtual ~Provider() = default;
    virtual const std::string &name() const = 0;
    // Our message id travels with the message (Message-ID, custom args) so
    // the provider's events can be matched to it.
    virtual void send(const SendRequest &req, std::function<void(SendOutcome)> done) = 0;
};

// A circuit breaker around a provider. Over the last `window` outcomes, if at
// least `min_requests` were seen and the transient failures reach
// `threshold`, the circuit opens: the provider is skipped (a transient
// failure without a request) for `cooldown` seconds. Then one real message is
// let through as a probe: success closes the circuit, failure opens it again.
// Permanent failures are the message's fault and do not count.
#pragma once
#include <ev.h>

#include <deque>
#include <memory>

#include "provider.h"

struct BreakerSettings {
    int window = 20;
    int min_requests = 10;
    double threshold = 0.5;
    double cooldown = 30;
    bool operator==(const BreakerSettings &o) const {
        return window == o.window && min_requests == o.min_requests && threshold == o.threshold &&
               cooldown == o.cooldown;
    }
};

class Breaker : public Provider {
public:
    enum class State { closed, open, half_open };

    Breaker(struct ev_loop *loop, std::unique_ptr<Provider> inner, BreakerSettings settings);

    const std::string &name() const override { return inner_->name(); }
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;
    State state() const { return state_; }

private:
    void record(bool failed);
    void set_state(State s);

    struct ev_loop *loop_;
    std::unique_ptr<Provider> inner_;
    BreakerSettings settings_;
    State state_ = State::closed;
    std::deque<bool> outcomes_;  // true = failed
    ev_tstamp opened_at_ = 0;
    bool probing_ = false;
};

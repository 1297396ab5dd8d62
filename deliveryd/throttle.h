// Limits in front of a provider, so that its quota is respected and only as
// many transfers exist as it has connections: a token bucket (messages per
// second, 0 = none) and a cap on sends at once. Sends beyond them wait, in
// order, holding nothing but a reference to their message; one that waited
// `send_timeout` is a transient provider fault (the provider is not keeping
// up: fail over) without having been tried.
#pragma once
#include <ev.h>

#include <deque>
#include <functional>
#include <memory>

#include "config.h"
#include "provider.h"

class Throttle : public Provider {
public:
    Throttle(struct ev_loop *loop, std::unique_ptr<Provider> inner, double rate, double burst, int concurrency,
             const Config &cfg);
    ~Throttle() override;

    const std::string &name() const override { return inner_->name(); }
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    struct Waiting {
        ev_tstamp since;
        std::function<void()> go;
        std::function<void(SendOutcome)> done;
    };
    void refill();
    void drain();
    void expire();
    static void timer_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void expire_cb(struct ev_loop *, ev_timer *w, int) noexcept;

    struct ev_loop *loop_;
    std::unique_ptr<Provider> inner_;
    double rate_, burst_, tokens_;
    int concurrency_, active_ = 0;
    const Config &cfg_;  // send_timeout, read in place
    ev_tstamp last_;
    std::deque<Waiting> waiting_;
    ev_timer timer_, expiry_;
};

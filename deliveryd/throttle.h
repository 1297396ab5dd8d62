// Limits in front of a provider, so that its quota is respected: a token
// bucket (messages per second, 0 = none) and a cap on sends in flight
// (0 = none). Sends beyond them wait, in order.
#pragma once
#include <ev.h>

#include <deque>
#include <functional>
#include <memory>

#include "provider.h"

class Throttle : public Provider {
public:
    Throttle(struct ev_loop *loop, std::unique_ptr<Provider> inner, double rate, double burst, int concurrency);
    ~Throttle() override;

    const std::string &name() const override { return inner_->name(); }
    void send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
              std::function<void(SendOutcome)> done) override;
    Provider *inner() const { return inner_.get(); }

private:
    void refill();
    void drain();
    static void timer_cb(struct ev_loop *, ev_timer *w, int);

    struct ev_loop *loop_;
    std::unique_ptr<Provider> inner_;
    double rate_, burst_, tokens_;
    int concurrency_, active_ = 0;
    ev_tstamp last_;
    std::deque<std::function<void()>> waiting_;
    ev_timer timer_;
};

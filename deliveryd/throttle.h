// A token bucket in front of a provider, so that its quota (messages per
// second) is respected: sends beyond the bucket wait, in order, on a timer.
#pragma once
#include <ev.h>

#include <deque>
#include <functional>
#include <memory>

#include "provider.h"

class Throttle : public Provider {
public:
    Throttle(struct ev_loop *loop, std::unique_ptr<Provider> inner, double rate, double burst);
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
    ev_tstamp last_;
    std::deque<std::function<void()>> waiting_;
    ev_timer timer_;
};

#include "throttle.h"

#include <algorithm>

Throttle::Throttle(struct ev_loop *loop, std::unique_ptr<Provider> inner, double rate, double burst,
                   int concurrency, const Config &cfg)
    : loop_(loop), inner_(std::move(inner)), rate_(rate), burst_(std::max(1.0, burst)), tokens_(burst_),
      concurrency_(concurrency), cfg_(cfg), last_(ev_now(loop)) {
    ev_timer_init(&timer_, timer_cb, 0, 0);
    timer_.data = this;
    ev_timer_init(&expiry_, expire_cb, 0, 0);
    expiry_.data = this;
}

Throttle::~Throttle() {
    ev_timer_stop(loop_, &timer_);
    ev_timer_stop(loop_, &expiry_);
}

void Throttle::refill() {
    ev_tstamp now = ev_now(loop_);
    if (rate_ <= 0) {
        tokens_ = burst_;
        return;
    }
    tokens_ = std::min(burst_, tokens_ + (now - last_) * rate_);
    last_ = now;
}

void Throttle::drain() {
    refill();
    while (!waiting_.empty() && tokens_ >= 1 && (concurrency_ <= 0 || active_ < concurrency_)) {
        if (rate_ > 0) tokens_ -= 1;
        active_++;
        std::function<void()> go = std::move(waiting_.front().go);
        waiting_.pop_front();
        go();
    }
    // waiting on tokens: a timer; waiting on a free slot: the next send's end
    if (!waiting_.empty() && tokens_ < 1 && !ev_is_active(&timer_)) {
        ev_timer_set(&timer_, (1 - tokens_) / rate_, 0);
        ev_timer_start(loop_, &timer_);
    }
    if (!waiting_.empty() && !ev_is_active(&expiry_)) {
        ev_timer_set(&expiry_, std::max(0.0, waiting_.front().since + cfg_.send_timeout - ev_now(loop_)), 0);
        ev_timer_start(loop_, &expiry_);
    }
}

void Throttle::expire() {
    ev_tstamp now = ev_now(loop_);
    while (!waiting_.empty() && now - waiting_.front().since >= cfg_.send_timeout) {
        std::function<void(SendOutcome)> done = std::move(waiting_.front().done);
        waiting_.pop_front();
        // never tried: not the provider's fault (a slow but healthy relay
        // must not open its circuit), and not an attempt of the message
        SendOutcome out;
        out.reason = "no free connection within send_timeout";
        out.skipped = true;
        done(out);
    }
    drain();
}

void Throttle::timer_cb(struct ev_loop *, ev_timer *w, int) noexcept { static_cast<Throttle *>(w->data)->drain(); }
void Throttle::expire_cb(struct ev_loop *, ev_timer *w, int) noexcept { static_cast<Throttle *>(w->data)->expire(); }

void Throttle::send(const SendRequest &req, std::function<void(SendOutcome)> done) {
    // req lives in the delivery job until done runs, so it may be referenced here
    auto go = [this, &req, done] {
        inner_->send(req, [this, done](SendOutcome out) {
            active_--;
            done(out);
            drain();
        });
    };
    waiting_.push_back({ev_now(loop_), std::move(go), std::move(done)});
    drain();
}

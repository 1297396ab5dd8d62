#include "breaker.h"

#include <algorithm>

#include "log.h"

Breaker::Breaker(struct ev_loop *loop, std::unique_ptr<Provider> inner, BreakerSettings settings)
    : loop_(loop), inner_(std::move(inner)), settings_(settings) {}

void Breaker::set_state(State s) {
    if (s == state_) return;
    static const char *const names[] = {"closed", "open", "half_open"};
    state_ = s;
    if (s == State::open) opened_at_ = ev_now(loop_);
    if (s == State::closed) outcomes_.clear();
    log_warn("circuit breaker", {{"provider", name()}, {"state", names[static_cast<int>(s)]}});
}

void Breaker::record(bool failed) {
    outcomes_.push_back(failed);
    while (static_cast<int>(outcomes_.size()) > settings_.window) outcomes_.pop_front();
    int failures = static_cast<int>(std::count(outcomes_.begin(), outcomes_.end(), true));
    if (static_cast<int>(outcomes_.size()) >= settings_.min_requests &&
        failures >= settings_.threshold * static_cast<double>(outcomes_.size())) {
        set_state(State::open);
    }
}

void Breaker::send(const SendRequest &req, std::function<void(SendOutcome)> done) {
    if (state_ == State::open && ev_now(loop_) - opened_at_ >= settings_.cooldown) set_state(State::half_open);
    bool probe = false;
    if (state_ == State::open || (state_ == State::half_open && probing_)) {
        SendOutcome skipped;
        skipped.reason = "circuit open";
        skipped.skipped = true;
        done(skipped);
        return;
    }
    if (state_ == State::half_open) probing_ = probe = true;
    inner_->send(req, [this, probe, done](SendOutcome out) {
        bool failed = out.provider_fault;  // a refused recipient says nothing about the provider
        if (probe) {
            probing_ = false;
            set_state(failed ? State::open : State::closed);
        } else {
            record(failed);
        }
        done(out);
    });
}

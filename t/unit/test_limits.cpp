// Breaker and Throttle around a fake provider, on a real libev loop.
#include <ev.h>
#include <gtest/gtest.h>

#include <deque>
#include <memory>

#include "breaker.h"
#include "config.h"
#include "throttle.h"

namespace {

// Answers each send with the next scripted outcome, at once or when told.
class FakeProvider : public Provider {
public:
    explicit FakeProvider(std::string name) : name_(std::move(name)) {}
    const std::string &name() const override { return name_; }
    void send(const SendRequest &, std::function<void(SendOutcome)> done) override {
        sends++;
        if (hold) {
            held.push_back(std::move(done));
            return;
        }
        SendOutcome out = script.empty() ? sent() : script.front();
        if (!script.empty()) script.pop_front();
        done(out);
    }
    void release_one(SendOutcome out = sent()) {
        auto done = std::move(held.front());
        held.pop_front();
        done(out);
    }

    std::deque<SendOutcome> script;
    std::deque<std::function<void(SendOutcome)>> held;
    bool hold = false;
    int sends = 0;

    static SendOutcome sent() {
        SendOutcome o;
        o.result = SendResult::sent;
        o.code = 250;
        return o;
    }

private:
    std::string name_;
};

SendOutcome transient(int code, bool provider_fault) {
    SendOutcome o;
    o.result = SendResult::transient;
    o.code = code;
    o.provider_fault = provider_fault;
    return o;
}

SendOutcome fault() { return transient(503, true); }
SendOutcome recipient_4xx() { return transient(451, false); }

struct Loop {
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ~Loop() { ev_loop_destroy(loop); }
    void run_for(double seconds) {
        ev_timer t;
        ev_timer_init(&t, [](struct ev_loop *l, ev_timer *, int) { ev_break(l, EVBREAK_ONE); }, seconds, 0);
        ev_timer_start(loop, &t);
        ev_run(loop, 0);
        ev_timer_stop(loop, &t);
    }
};

mailapi::Message msg;
const SendRequest req{"m", "t", &msg, {}};
}  // namespace

TEST(Breaker, OpensOnProviderFaultsOnlyThenProbes) {
    Loop l;
    auto fake = std::make_unique<FakeProvider>("p");
    FakeProvider *p = fake.get();
    Breaker b(l.loop, std::move(fake), BreakerSettings{4, 4, 0.5, 0.2});
    std::vector<SendOutcome> got;
    auto collect = [&](SendOutcome o) { got.push_back(o); };
    // a recipient's 4xx says nothing about the provider
    for (int i = 0; i < 4; i++) p->script.push_back(recipient_4xx());
    for (int i = 0; i < 4; i++) b.send(req, collect);
    EXPECT_EQ(b.state(), Breaker::State::closed);
    // two faults in the last four: half of them, the threshold
    p->script = {fault(), fault()};
    b.send(req, collect);
    b.send(req, collect);
    EXPECT_EQ(b.state(), Breaker::State::open);
    int before = p->sends;
    b.send(req, collect);  // skipped, not sent
    EXPECT_EQ(p->sends, before);
    EXPECT_TRUE(got.back().skipped);
    EXPECT_FALSE(got.back().provider_fault);
    // after the cooldown one probe goes through; the others meanwhile are skipped
    l.run_for(0.25);
    p->hold = true;
    b.send(req, collect);
    b.send(req, collect);
    EXPECT_EQ(p->sends, before + 1);
    EXPECT_EQ(b.state(), Breaker::State::half_open);
    EXPECT_TRUE(got.back().skipped);
    p->release_one();  // the probe is sent: closed again
    EXPECT_EQ(b.state(), Breaker::State::closed);
}

TEST(Breaker, AFailedProbeOpensAgain) {
    Loop l;
    auto fake = std::make_unique<FakeProvider>("p");
    FakeProvider *p = fake.get();
    Breaker b(l.loop, std::move(fake), BreakerSettings{2, 2, 0.5, 0.1});
    p->script = {fault(), fault(), fault()};
    for (int i = 0; i < 2; i++) b.send(req, [](SendOutcome) {});
    ASSERT_EQ(b.state(), Breaker::State::open);
    l.run_for(0.15);
    b.send(req, [](SendOutcome) {});
    EXPECT_EQ(b.state(), Breaker::State::open);
}

TEST(Throttle, CapsSendsAtOnceInOrder) {
    Loop l;
    Config cfg;
    cfg.send_timeout = 10;
    auto fake = std::make_unique<FakeProvider>("p");
    FakeProvider *p = fake.get();
    p->hold = true;
    Throttle t(l.loop, std::move(fake), 0, 1, 2, cfg);
    std::vector<int> done;
    for (int i = 0; i < 5; i++) t.send(req, [&done, i](SendOutcome) { done.push_back(i); });
    EXPECT_EQ(p->sends, 2);  // two at once, three waiting
    p->release_one();
    EXPECT_EQ(p->sends, 3);
    p->release_one();
    p->release_one();
    p->release_one();
    p->release_one();
    EXPECT_EQ(done, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(Throttle, KeepsToItsRate) {
    Loop l;
    Config cfg;
    cfg.send_timeout = 10;
    auto fake = std::make_unique<FakeProvider>("p");
    Throttle t(l.loop, std::move(fake), 20, 2, 0, cfg);  // 20/s, burst 2
    int done = 0;
    for (int i = 0; i < 6; i++) t.send(req, [&done](SendOutcome) { done++; });
    EXPECT_EQ(done, 2);  // the burst at once
    l.run_for(0.12);     // two more tokens
    EXPECT_GE(done, 3);
    EXPECT_LE(done, 5);
    l.run_for(0.3);
    EXPECT_EQ(done, 6);
}

TEST(Throttle, AWaitPastSendTimeoutIsNotTheProvidersFault) {
    Loop l;
    Config cfg;
    cfg.send_timeout = 1;
    auto fake = std::make_unique<FakeProvider>("p");
    FakeProvider *p = fake.get();
    p->hold = true;
    Throttle t(l.loop, std::move(fake), 0, 1, 1, cfg);
    t.send(req, [](SendOutcome) {});
    SendOutcome waited;
    bool answered = false;
    t.send(req, [&](SendOutcome o) {
        waited = o;
        answered = true;
    });
    l.run_for(1.2);
    ASSERT_TRUE(answered);
    EXPECT_EQ(waited.result, SendResult::transient);
    EXPECT_TRUE(waited.skipped);            // never tried: no attempt spent
    EXPECT_FALSE(waited.provider_fault);    // a slow, healthy provider keeps its circuit closed
    EXPECT_EQ(p->sends, 1);
}

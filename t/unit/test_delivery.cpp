// Delivery's steps with a fake queue, a fake store and fake providers (each
// behind a real Breaker) on a real libev loop: what each outcome records,
// and then what it does to the entry.
#include <ev.h>
#include <gtest/gtest.h>

#include <hiredis/hiredis.h>

#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>

#include "base64.h"
#include "breaker.h"
#include "contract.h"
#include "delivery.h"
#include "metrics.h"
#include "queue.h"

namespace {

using Take = DeliveryQueue::Take;

class FakeProvider : public Provider {
public:
    explicit FakeProvider(std::string name) : name_(std::move(name)) {}
    const std::string &name() const override { return name_; }
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override {
        sends++;
        asked.push_back(req.rcpts);
        order.push_back(req.id);
        std::string unsubscribe;
        for (const auto &h : req.msg->headers) {
            if (h.first == "List-Unsubscribe") unsubscribe = h.second;
        }
        unsubscribes.push_back(unsubscribe);
        texts.push_back(req.msg->text);
        SendOutcome out;
        out.result = SendResult::sent;
        out.code = 250;
        if (!script.empty()) {
            out = script.front();
            script.pop_front();
        }
        if (loop != nullptr && delay > 0) {  // answers that much later, as a slow provider does
            auto *t = new Later{{}, std::move(done), out};
            ev_timer_init(&t->w, Later::cb, delay, 0);
            t->w.data = t;
            ev_timer_start(loop, &t->w);
            return;
        }
        done(out);
    }
    std::deque<SendOutcome> script;
    int sends = 0;
    std::vector<std::vector<size_t>> asked;  // each send's recipients (empty: all)
    std::vector<std::string> order;  // message ids, as sent
    std::vector<std::string> unsubscribes, texts;  // each send's List-Unsubscribe ("" for none) and text
    struct ev_loop *loop = nullptr;
    double delay = 0;

    struct Later {
        ev_timer w;
        std::function<void(SendOutcome)> done;
        SendOutcome out;
        static void cb(struct ev_loop *l, ev_timer *w, int) noexcept {
            auto *t = static_cast<Later *>(w->data);
            ev_timer_stop(l, w);
            auto done = std::move(t->done);
            SendOutcome out = t->out;
            delete t;
            done(out);
        }
    };

private:
    std::string name_;
};

SendOutcome outcome(SendResult r, int code, bool policy = false) {
    SendOutcome o;
    o.result = r;
    o.code = code;
    o.reason = "scripted";
    o.policy = policy;
    return o;
}

struct FakeQueue : DeliveryQueue {
    std::map<std::string, std::string> envelopes;  // message id -> envelope
    Take take_as = Take::taken;
    std::string marker;
    std::vector<std::string> steps;  // what happened, in order
    int64_t deferred_to = 0;
    int deferred_attempt = -1;

    void take(const QueueEntry &e, TakeDone done) override {
        steps.push_back("take");
        done(take_as, envelopes[e.id], marker);
    }
    void envelope(const QueueEntry &e, EnvelopeDone done) override {
        steps.push_back("envelope");
        done(true, false, envelopes[e.id]);
    }
    bool holds = true;  // what a lease check finds: still this consumer's
    void renew(const QueueEntry &, RenewDone done) override {
        steps.push_back(holds ? "renew" : "renew: lost");
        done(true, holds);
    }
    int marker_fails = 0;  // SENT refused this many times (Redis down)
    // "<gen> <provider> <code> <ms> <recipients>": the time left out
    void mark_sent(const QueueEntry &, const std::string &m, Done done) override {
        if (marker_fails > 0) {
            marker_fails--;
            steps.push_back("sent-marker failed");
            done(false);
            return;
        }
        char provider[64];
        int gen = 0, code = 0;
        long long at = 0;
        char rcpts[256] = "";
        std::sscanf(m.c_str(), "%d %63s %d %lld %255s", &gen, provider, &code, &at, rcpts);
        steps.push_back("sent-marker " + std::to_string(gen) + " " + provider + " " + std::to_string(code) + " " + rcpts);
        done(true);
    }
    void ack(const QueueEntry &, Done done) override {
        steps.push_back("ack");
        done(true);
    }
    void drop(const QueueEntry &, Done done) override {
        steps.push_back("drop");
        done(true);
    }
    void defer(const QueueEntry &e, int64_t due, int attempt, Done done) override {
        steps.push_back("defer");
        deferred_to = due;
        deferred_attempt = attempt;
        deferred_done = e.done;
        done(true);
    }
    void dead_letter(const QueueEntry &e, const std::string &error, Done done) override {
        steps.push_back("dead " + error);
        deferred_done = e.done;
        done(true);
    }
    std::string deferred_done;  // what defer or dead_letter kept of the recipients finished
    // the suppression list: recipient key -> entry; not a step (asked before every attempt)
    std::map<std::string, std::string> suppression;
    std::vector<std::vector<std::string>> suppress_commands;
    void suppressed(const std::string &, const std::vector<std::string> &keys, SuppressedDone done) override {
        std::vector<std::string> out;
        for (const std::string &k : keys) out.push_back(suppression.count(k) ? suppression[k] : "");
        done(true, out);
    }
    void suppress(std::vector<std::string> command, Done done) override {
        suppress_commands.push_back(std::move(command));
        done(true);
    }
};

struct FakeStore : RecordStore {
    std::vector<RecordWrite> writes;
    int fail_next = 0;
    mailapi::records::Stored found;
    std::vector<std::string> *steps = nullptr;

    void write(std::shared_ptr<const RecordWrite> w, WriteDone done) override {
        if (fail_next > 0) {
            fail_next--;
            steps->push_back("record failed");
            done(false, "store down");
            return;
        }
        writes.push_back(*w);
        steps->push_back("record");
        done(true, "");
    }
    void lookup(const std::string &, const std::string &, LookupDone done) override {
        steps->push_back("lookup");
        done(true, found);
    }
};

int64_t now_ms() { return static_cast<int64_t>(ev_time() * 1000); }

class DeliveryTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string err;
        // 43 base64 digits and '=': the last digit's low bits must be 0
        std::string text = "index " + std::string(43, 'A') + "=\nk1 " + std::string(43, 'Q') + "=\n";
        ASSERT_TRUE(mailapi::keyring_parse(text, ring, err)) << err;
        cfg.max_attempts = 3;
        cfg.retry_base = 1;
        store.steps = &queue.steps;
    }

    // Providers tried in this order, each behind a breaker that never opens here.
    void providers(std::initializer_list<FakeProvider *> list) {
        std::vector<std::pair<std::string, std::shared_ptr<Breaker>>> set;
        for (FakeProvider *p : list) {
            set.emplace_back(p->name(), std::make_shared<Breaker>(loop, std::unique_ptr<Provider>(p),
                                                                  BreakerSettings{1000, 1000, 1, 1}));
        }
        delivery = std::make_unique<Delivery>(loop, cfg, ring, store, std::make_shared<const ProviderSet>(set), metrics);
        delivery->set_queue(&queue);
    }

    QueueEntry entry(int attempt = 0, int gen = 0, const std::string &kid_ring = "",
                     const std::string &to = R"(["b@example.org"])", const std::string &extra = "") {
        QueueEntry e;
        e.stream_id = "1-" + std::to_string(++n);
        int64_t now = now_ms();
        mailapi::message_id_new(now, e.id);
        e.tenant = "acme";
        e.created_ms = e.since_ms = now;
        e.attempt = attempt;
        e.gen = gen;
        std::string env;
        mailapi::Keyring other;
        std::string err;
        const mailapi::Keyring *seal = &ring;
        if (!kid_ring.empty()) {
            mailapi::keyring_parse(kid_ring, other, err);
            seal = &other;
        }
        mailapi::envelope_seal(*seal, mailapi::envelope_aad(e.tenant, e.id),
                               R"({"from":"a@example.com","to":)" + to + R"(,"subject":"s","text":"t")" + extra + "}",
                               env);
        queue.envelopes[e.id] = env;
        e.size = env.size();
        return e;
    }

    std::vector<std::string> types(const RecordWrite &w) {
        std::vector<std::string> out;
        for (const auto &e : w.events) {
            out.push_back(e.type + (e.rcpt >= 0 ? " " + std::to_string(e.rcpt) : "") + (e.dead ? "(dead)" : ""));
        }
        return out;
    }

    // As the module stamps a message asking for links (links.h).
    QueueEntry linked(const std::string &to) {
        return entry(0, 0, "", to,
                     R"(,"unsubscribe":true,"responses":["yes"],"links":{"base":"https://m.example","expires":)" +
                         std::to_string(now_ms() / 1000 + 3600) + "}");
    }

    // The suppression list of acme holds these addresses.
    void suppress(std::initializer_list<const char *> addresses) {
        for (const char *a : addresses) {
            queue.suppression[mailapi::contract::recipient_key(ring, "acme", a)] = "1 bounced -";
        }
    }

    QueueEntry three(int attempt = 0, const std::string &done = "") {
        QueueEntry e = entry(attempt, 0, "", R"(["r0@example.org","r1@example.org","R0@example.org","r2@example.org"])");
        e.done = done;
        return e;
    }

    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    Config cfg;
    mailapi::Keyring ring;
    FakeQueue queue;
    FakeStore store;
    Metrics metrics;
    std::unique_ptr<Delivery> delivery;
    int n = 0;

    void TearDown() override {
        delivery.reset();
        ev_loop_destroy(loop);
    }
    void run_for(double s) {
        ev_timer t;
        ev_timer_init(&t, [](struct ev_loop *l, ev_timer *, int) { ev_break(l, EVBREAK_ONE); }, s, 0);
        ev_timer_start(loop, &t);
        ev_run(loop, 0);
        ev_timer_stop(loop, &t);
    }
};

}  // namespace

TEST_F(DeliveryTest, SentIsMarkedRecordedThenAcked) {
    auto *p = new FakeProvider("mx");
    providers({p});
    delivery->handle(entry(), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0", "record", "ack"}));
    ASSERT_EQ(store.writes.size(), 1u);
    EXPECT_TRUE(store.writes[0].with_message);
    EXPECT_EQ(types(store.writes[0]), (std::vector<std::string>{"queued", "sent"}));
    EXPECT_EQ(store.writes[0].events.back().id, "t0");
    EXPECT_FALSE(store.writes[0].message.summary.empty());
    EXPECT_EQ(store.writes[0].message.rk.size(), 1u + mailapi::contract::LEVELS);
    EXPECT_EQ(delivery->in_flight(), 0);
    EXPECT_EQ(delivery->bytes_in_flight(), 0u);
}

TEST_F(DeliveryTest, FailsOverThenSends) {
    auto *a = new FakeProvider("sg");
    auto *b = new FakeProvider("mx");
    a->script.push_back(outcome(SendResult::transient, 503));
    providers({a, b});
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "provider_failed", "sent"}));
    EXPECT_EQ(store.writes[0].events[1].provider, "sg");
    EXPECT_EQ(store.writes[0].events[2].provider, "mx");
    EXPECT_EQ(queue.steps.back(), "ack");
}

TEST_F(DeliveryTest, PermanentIsRecordedFailedAndAcked) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::permanent, 550));
    providers({p});
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "failed"}));
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "record", "ack"}));
}

TEST_F(DeliveryTest, TransientIsRecordedThenDeferredWithTheNextAttempt) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::transient, 451));
    providers({p});
    int64_t before = now_ms();
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "deferred"}));
    EXPECT_EQ(queue.steps.back(), "defer");
    EXPECT_EQ(queue.deferred_attempt, 1);
    EXPECT_GE(queue.deferred_to, before + 500);  // retry_base 1 s, half of it fixed
}

TEST_F(DeliveryTest, TheLastAttemptGivesUpIntoTheDeadLetters) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::transient, 451));
    providers({p});
    delivery->handle(entry(2), false);  // max_attempts 3
    ASSERT_EQ(store.writes.size(), 1u);
    EXPECT_FALSE(store.writes[0].with_message);  // its document was written with the first outcome
    EXPECT_EQ(types(store.writes[0]), (std::vector<std::string>{"failed(dead)"}));
    EXPECT_EQ(queue.steps.back().rfind("dead gave up after 3 attempts", 0), 0u) << queue.steps.back();
}

TEST_F(DeliveryTest, APolicyRefusalEverywhereIsDeadLetteredAtOnce) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::transient, 554, true));
    providers({p});
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "failed(dead)"}));
    EXPECT_EQ(queue.steps.back().rfind("dead refused by the relay's policy", 0), 0u);
}

TEST_F(DeliveryTest, AMessageHeldElsewhereIsLeftAlone) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.take_as = Take::held;
    delivery->handle(entry(), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take"}));
    EXPECT_EQ(p->sends, 0);
    EXPECT_EQ(delivery->in_flight(), 0);
}

TEST_F(DeliveryTest, AMessageGoneIsOnlyDropped) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.take_as = Take::gone;
    delivery->handle(entry(), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "drop"}));
    EXPECT_EQ(p->sends, 0);
}

TEST_F(DeliveryTest, ASentMarkerIsRecordedNotSentAgain) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.marker = "0 sg 202 1795000000000";
    delivery->handle(entry(), true);
    EXPECT_EQ(p->sends, 0);
    ASSERT_EQ(store.writes.size(), 1u);
    EXPECT_EQ(types(store.writes[0]), (std::vector<std::string>{"queued", "sent"}));
    EXPECT_EQ(store.writes[0].events[1].provider, "sg");
    EXPECT_EQ(store.writes[0].events[1].at_ms, 1795000000000);
    EXPECT_EQ(queue.steps.back(), "ack");
}

TEST_F(DeliveryTest, AMarkerOfAnotherGenerationIsNotThisOnesSend) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.marker = "0 sg 202 1795000000000";
    delivery->handle(entry(0, 1), true);  // a replayed dead letter
    EXPECT_EQ(p->sends, 1);
    EXPECT_EQ(store.writes.at(0).events.back().id, "t1");
}

TEST_F(DeliveryTest, ATakeoverOfARecordedGiveUpDeadLettersIt) {
    auto *p = new FakeProvider("mx");
    providers({p});
    store.found.has_message = true;
    store.found.events.push_back({"t0", "failed", 1, "", 0, "gave up", true});
    delivery->handle(entry(), true);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"lookup", "dead gave up"}));
    store.found.events.back() = {"t0", "sent", 1, "mx", 250, "", false};
    queue.steps.clear();
    delivery->handle(entry(), true);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"lookup", "ack"}));
    EXPECT_EQ(p->sends, 0);
}

TEST_F(DeliveryTest, ARecordTheStoreRefusedIsWrittenAgainBeforeTheAck) {
    auto *p = new FakeProvider("mx");
    providers({p});
    store.fail_next = 1;
    delivery->handle(entry(), false);
    EXPECT_EQ(queue.steps.back(), "record failed");
    run_for(1.2);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0", "record failed", "record", "ack"}));
    EXPECT_EQ(p->sends, 1);
}

TEST_F(DeliveryTest, AnUnknownKeyWaitsWithoutARecordOrAnAttempt) {
    auto *p = new FakeProvider("mx");
    providers({p});
    delivery->handle(entry(0, 0, "index " + std::string(43, 'g') + "=\nk9 " + std::string(43, 'w') + "=\n"), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "defer"}));
    EXPECT_EQ(queue.deferred_attempt, 0);
    EXPECT_TRUE(store.writes.empty());
    EXPECT_EQ(p->sends, 0);
}

TEST_F(DeliveryTest, AFutureSendAtWaitsWithoutTakingIt) {
    auto *p = new FakeProvider("mx");
    providers({p});
    QueueEntry e = entry();
    e.send_at = now_ms() / 1000 + 3600;
    delivery->handle(e, false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"defer"}));
    EXPECT_EQ(queue.deferred_to, e.send_at * 1000);
}

// ---------------------------------------------------------------- one outcome per recipient

SendOutcome per_recipient(std::vector<std::pair<SendResult, int>> each) {
    SendOutcome o;
    for (size_t i = 0; i < each.size(); i++) {
        o.recipients.push_back({i, each[i].first, each[i].second, each[i].second == 250 ? "" : "scripted"});
    }
    o.result = SendResult::sent;
    return o;
}

TEST_F(DeliveryTest, ARecipientRefusedForGoodFailsAloneAndTheOthersAreSent) {
    auto *p = new FakeProvider("mx");
    // three envelope recipients: r0 and R0 are one mailbox
    p->script.push_back(per_recipient({{SendResult::sent, 250}, {SendResult::permanent, 550}, {SendResult::sent, 250}}));
    providers({p});
    delivery->handle(three(), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0,2", "record", "ack"}));
    EXPECT_EQ(types(store.writes.at(0)),
              (std::vector<std::string>{"queued", "recipient_failed 1", "recipient_sent 0", "recipient_sent 2", "sent"}));
    EXPECT_EQ(store.writes[0].events[1].code, 550);
}

TEST_F(DeliveryTest, ARecipientRefusedForNowIsRetriedAloneLater) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(per_recipient({{SendResult::sent, 250}, {SendResult::transient, 451}, {SendResult::sent, 250}}));
    providers({p});
    delivery->handle(three(), false);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0,2", "record", "defer"}));
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "recipient_sent 0", "recipient_sent 2",
                                                                   "recipient_deferred 1", "deferred"}));
    EXPECT_EQ(queue.deferred_done, "0,2");
    EXPECT_EQ(queue.deferred_attempt, 1);
    // the retry asks for recipient 1 only, and its acceptance ends the message
    queue.steps.clear();
    delivery->handle(three(1, "0,2"), false);
    ASSERT_EQ(p->asked.size(), 2u);
    EXPECT_EQ(p->asked[1], (std::vector<size_t>{1}));
    EXPECT_EQ(types(store.writes.at(1)), (std::vector<std::string>{"recipient_sent 1", "sent"}));
    EXPECT_EQ(queue.steps.back(), "ack");
}

TEST_F(DeliveryTest, RecipientsAllRefusedForNowFailOverToTheNextProvider) {
    auto *a = new FakeProvider("a");
    auto *b = new FakeProvider("b");
    a->script.push_back(per_recipient({{SendResult::transient, 451}, {SendResult::permanent, 550}, {SendResult::transient, 452}}));
    providers({a, b});
    delivery->handle(three(), false);
    ASSERT_EQ(b->asked.size(), 1u);
    EXPECT_EQ(b->asked[0], (std::vector<size_t>{0, 2}));  // not the one refused for good
    EXPECT_EQ(types(store.writes.at(0)),
              (std::vector<std::string>{"queued", "recipient_failed 1", "provider_failed", "recipient_sent 0",
                                        "recipient_sent 2", "sent"}));
}

TEST_F(DeliveryTest, ATakeoverRecordsWhomTheMarkerNamesAndSendsToTheRest) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.marker = "0 sg 202 1795000000000 0,2";
    delivery->handle(three(), true);
    ASSERT_EQ(p->asked.size(), 1u);
    EXPECT_EQ(p->asked[0], (std::vector<size_t>{1}));
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "sent"}));  // all of them, in the end
    EXPECT_EQ(queue.steps.back(), "ack");
}

// A recipient's sent event is stamped when the provider took it, as the
// message's sent event is: stamped when it was written, it could sort after
// the sent that ends the timeline.
TEST_F(DeliveryTest, ARecipientSentEventCarriesWhenTheProviderTookIt) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::transient, 451));
    providers({p});
    queue.marker = "0 sg 202 1795000000000 0,2";
    delivery->handle(three(), true);
    const RecordWrite &w = store.writes.at(0);
    EXPECT_EQ(types(w), (std::vector<std::string>{"queued", "recipient_sent 0", "recipient_sent 2",
                                                  "recipient_deferred 1", "deferred"}));
    EXPECT_EQ(w.events.at(1).at_ms, 1795000000000);
    EXPECT_EQ(w.events.at(2).at_ms, 1795000000000);
}

TEST_F(DeliveryTest, GivingUpAfterSomeWereSentDeadLettersTheRest) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::transient, 451));
    providers({p});
    delivery->handle(three(2, "0,1x"), false);  // the last attempt, for recipient 2
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"recipient_failed 2(dead)", "sent(dead)"}));
    EXPECT_EQ(queue.steps.back().rfind("dead gave up after 3 attempts", 0), 0u);
    EXPECT_EQ(queue.deferred_done, "0,1x");  // a replay sends to 2 only
}

TEST_F(DeliveryTest, AMessageNoRouteCanCarryIsGivenUpAtOnce) {
    auto *a = new FakeProvider("a");
    auto *b = new FakeProvider("b");
    SendOutcome cannot = outcome(SendResult::transient, 0);
    cannot.unsupported = true;
    a->script.push_back(cannot);
    b->script.push_back(cannot);
    providers({a, b});
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "provider_failed", "failed(dead)"}));
    EXPECT_EQ(queue.steps.back().rfind("dead no route can carry this message", 0), 0u) << queue.steps.back();
}

TEST_F(DeliveryTest, AProviderThatCannotCarryItFailsOverToOneThatCan) {
    auto *a = new FakeProvider("a");
    auto *b = new FakeProvider("b");
    SendOutcome cannot = outcome(SendResult::transient, 0);
    cannot.unsupported = true;
    a->script.push_back(cannot);
    providers({a, b});
    delivery->handle(entry(), false);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "provider_failed", "sent"}));
}

// The lease may have run out while a provider took its time (or while this
// process was stopped): another instance may have taken the message over
// and sent it. Before the next provider is asked the lease is checked, and
// a lease lost leaves the message to its new holder.
TEST_F(DeliveryTest, AFailoverAfterTheLeaseMayHaveRunOutChecksItFirst) {
    cfg.claim_idle = 1;
    auto *a = new FakeProvider("hole");
    auto *b = new FakeProvider("mx");
    a->loop = loop;
    a->delay = 0.9;  // past 3/4 of claim_idle
    a->script.push_back(outcome(SendResult::transient, 0));
    providers({a, b});
    queue.holds = false;
    delivery->handle(entry(), false);
    run_for(1.2);
    EXPECT_EQ(b->sends, 0);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "renew: lost"}));
    EXPECT_TRUE(store.writes.empty());
    EXPECT_EQ(delivery->in_flight(), 0);
}

TEST_F(DeliveryTest, AFailoverWithTheLeaseStillHeldGoesOn) {
    cfg.claim_idle = 1;
    auto *a = new FakeProvider("hole");
    auto *b = new FakeProvider("mx");
    a->loop = loop;
    a->delay = 0.9;
    a->script.push_back(outcome(SendResult::transient, 0));
    providers({a, b});
    delivery->handle(entry(), false);
    run_for(1.2);
    EXPECT_EQ(b->sends, 1);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "renew", "sent-marker 0 mx 250 0", "record", "ack"}));
}

TEST_F(DeliveryTest, AQuickFailoverNeedsNoLeaseCheck) {
    auto *a = new FakeProvider("sg");
    auto *b = new FakeProvider("mx");
    a->script.push_back(outcome(SendResult::transient, 503));
    providers({a, b});
    queue.holds = false;  // would be found lost, but is not asked
    delivery->handle(entry(), false);
    EXPECT_EQ(b->sends, 1);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0", "record", "ack"}));
}

TEST_F(DeliveryTest, AGiveUpAfterTheLeaseMayHaveRunOutChecksItFirst) {
    cfg.claim_idle = 1;
    cfg.max_attempts = 1;
    auto *a = new FakeProvider("hole");
    a->loop = loop;
    a->delay = 0.9;
    a->script.push_back(outcome(SendResult::transient, 0));
    providers({a});
    queue.holds = false;  // taken over meanwhile: the other instance's send decides
    delivery->handle(entry(), false);
    run_for(1.2);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "renew: lost"}));
    EXPECT_TRUE(store.writes.empty());
    EXPECT_EQ(delivery->in_flight(), 0);
}

// An entry written by hand into the stream (or a corrupted one) with numbers
// past any range: held to sane bounds, so that no arithmetic on them
// overflows (UBSan saw 'attempt + 1' overflow with attempt 2147483647, and
// atoi and e.send_at * 1000 are undefined past their range).
TEST(ParseEntries, NumbersOutOfRangeAreHeldToBounds) {
    auto bulk = [](const std::string &s) { return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n"; };
    std::vector<std::pair<std::string, std::string>> f = {
        {"id", "msg_x"}, {"tenant", "acme"}, {"created", "-5"}, {"send_at", "9223372036854775807"},
        {"since", "99999999999999999999999"}, {"attempt", "2147483647"}, {"gen", "-2147483649"},
        {"size", "18446744073709551615"}};
    std::string resp = "*1\r\n*2\r\n" + bulk("1-1") + "*" + std::to_string(2 * f.size()) + "\r\n";
    for (const auto &kv : f) resp += bulk(kv.first) + bulk(kv.second);
    redisReader *rd = redisReaderCreate();
    ASSERT_EQ(redisReaderFeed(rd, resp.data(), resp.size()), REDIS_OK);
    void *reply = nullptr;
    ASSERT_EQ(redisReaderGetReply(rd, &reply), REDIS_OK);
    ASSERT_NE(reply, nullptr);
    std::vector<QueueEntry> out = parse_entries(static_cast<redisReply *>(reply));
    freeReplyObject(reply);
    redisReaderFree(rd);
    ASSERT_EQ(out.size(), 1u);
    const QueueEntry &e = out[0];
    EXPECT_EQ(e.created_ms, 0);
    EXPECT_EQ(e.send_at, 253402300799);  // 9999-12-31T23:59:59Z
    EXPECT_EQ(e.since_ms, 253402300799000);
    EXPECT_EQ(e.attempt, 1000000);
    EXPECT_EQ(e.gen, 0);
    EXPECT_EQ(e.size, size_t{1} << 40);
}

TEST_F(DeliveryTest, ASentMarkerRedisDidNotTakeIsWrittenAgainWhileTheRecordWaits) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.marker_fails = 1;
    store.fail_next = 1;  // the record waits a second
    delivery->handle(entry(), false);
    run_for(1.3);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker failed", "record failed",
                                                     "sent-marker 0 mx 250 0", "record", "ack"}));
    EXPECT_EQ(p->sends, 1);
}

TEST_F(DeliveryTest, ASentMarkerIsNotWrittenAgainOnceTheMessageIsDone) {
    auto *p = new FakeProvider("mx");
    providers({p});
    queue.marker_fails = 1;
    delivery->handle(entry(), false);
    run_for(0.7);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker failed", "record", "ack"}));
}

// A message that waits for room in max_in_flight_bytes is not overtaken by
// smaller ones that would fit: a steady flow of those kept a large one
// waiting as long as the flow lasted (and past max_age it failed unsent).
TEST_F(DeliveryTest, ALargeMessageWaitingForRoomIsNotOvertaken) {
    cfg.max_in_flight_bytes = 64 * 1024;
    auto *p = new FakeProvider("mx");
    p->loop = loop;
    p->delay = 0.1;
    providers({p});
    QueueEntry small1 = entry(), big = entry(), small2 = entry();
    big.size = 100 * 1024;  // counted as about twice that: only alone
    delivery->handle(small1, false);
    delivery->handle(big, false);
    delivery->handle(small2, false);  // would fit next to small1
    EXPECT_EQ(p->order, (std::vector<std::string>{small1.id}));
    run_for(0.15);
    EXPECT_EQ(p->order, (std::vector<std::string>{small1.id, big.id}));
    run_for(0.15);
    EXPECT_EQ(p->order, (std::vector<std::string>{small1.id, big.id, small2.id}));
    run_for(0.15);
    EXPECT_EQ(delivery->in_flight(), 0);
    EXPECT_EQ(delivery->bytes_in_flight(), 0u);
}

// Two entries of one message in one process (a copy the scheduler made while
// the first job's lease had run out, and another instance deferred it): TAKE
// lets a consumer take what it holds itself, so the second job sent it too.
TEST_F(DeliveryTest, ASecondEntryOfAMessageUnderWayHereIsLeftPending) {
    auto *p = new FakeProvider("mx");
    p->loop = loop;
    p->delay = 0.1;
    providers({p});
    QueueEntry first = entry(), copy = first;
    copy.stream_id = "2-1";
    delivery->handle(first, false);
    delivery->handle(copy, true);
    EXPECT_EQ(delivery->in_flight(), 1);
    run_for(0.2);
    EXPECT_EQ(p->sends, 1);
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0", "record", "ack"}));
    EXPECT_EQ(delivery->in_flight(), 0);
    delivery->handle(copy, true);  // taken over later, once the first is done: on its own again
    EXPECT_EQ(queue.steps.at(4), "lookup");
    run_for(0.2);
    EXPECT_EQ(delivery->in_flight(), 0);
}

// ---------------------------------------------------------------- queue entries

namespace {

redisReply *str_reply(const std::string &s) {
    auto *r = static_cast<redisReply *>(calloc(1, sizeof(redisReply)));
    r->type = REDIS_REPLY_STRING;
    r->str = strdup(s.c_str());
    r->len = s.size();
    return r;
}

redisReply *array_reply(std::vector<redisReply *> items) {
    auto *r = static_cast<redisReply *>(calloc(1, sizeof(redisReply)));
    r->type = REDIS_REPLY_ARRAY;
    r->elements = items.size();
    r->element = static_cast<redisReply **>(calloc(items.size(), sizeof(redisReply *)));
    for (size_t i = 0; i < items.size(); i++) r->element[i] = items[i];
    return r;
}

}  // namespace

// The recipients a message finished with, as long as mail_api_max_recipients
// (at most 1000) can make them, come back whole from the stream entry: 1000
// recipients, 302 of them refused for good (indices 698..999) and one
// deferred (9), make 4189 characters; cut at 4096, the refused at the end
// were sent to again and "9" of "981x" made recipient 9 look taken.
TEST(QueueEntries, TheRecipientsDoneComeBackWhole) {
    namespace contract = mailapi::contract;
    contract::RecipientsDone d;
    for (size_t i = 0; i < 698; i++) {
        if (i != 9) d.sent.push_back(i);
    }
    for (size_t i = 698; i < 1000; i++) d.refused.push_back(i);
    std::string done = contract::done_format(d);
    ASSERT_GT(done.size(), 4096u);
    redisReply *list = array_reply({array_reply(
        {str_reply("1-0"), array_reply({str_reply("id"), str_reply("msg_x"), str_reply("done"), str_reply(done)})})});
    std::vector<QueueEntry> entries = parse_entries(list);
    freeReplyObject(list);
    ASSERT_EQ(entries.size(), 1u);
    contract::RecipientsDone back = contract::done_parse(entries[0].done);
    EXPECT_EQ(back.sent, d.sent);
    EXPECT_EQ(back.refused, d.refused);

    // the worst case: 1000 recipients, all refused ("999x,"): 4889 characters
    contract::RecipientsDone all;
    for (size_t i = 0; i < 1000; i++) all.refused.push_back(i);
    done = contract::done_format(all);
    list = array_reply({array_reply({str_reply("1-0"), array_reply({str_reply("done"), str_reply(done)})})});
    entries = parse_entries(list);
    freeReplyObject(list);
    ASSERT_EQ(entries.size(), 1u);
    EXPECT_EQ(contract::done_parse(entries[0].done).refused, all.refused);
}

// ---------------------------------------------------------------- suppression

TEST_F(DeliveryTest, ASuppressedRecipientIsLeftOutAndTheOthersAreSent) {
    auto *p = new FakeProvider("mx");
    providers({p});
    suppress({"r1@example.org"});
    delivery->handle(three(), false);
    ASSERT_EQ(p->asked.size(), 1u);
    EXPECT_EQ(p->asked[0], (std::vector<size_t>{0, 2}));  // r1 is not asked for
    EXPECT_EQ(types(store.writes.at(0)),
              (std::vector<std::string>{"queued", "recipient_suppressed 1", "recipient_sent 0", "recipient_sent 2",
                                        "sent"}));
    EXPECT_EQ(store.writes[0].events[1].reason, "on the suppression list (bounced)");
    EXPECT_EQ(queue.steps.back(), "ack");
}

TEST_F(DeliveryTest, EveryRecipientSuppressedEndsSuppressedWithoutAProvider) {
    auto *p = new FakeProvider("mx");
    providers({p});
    suppress({"r0@example.org", "r1@example.org", "r2@example.org"});
    delivery->handle(three(), false);
    EXPECT_EQ(p->sends, 0);
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "suppressed"}));
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "record", "ack"}));
}

TEST_F(DeliveryTest, ARecipientSuppressedBetweenAttemptsIsNotRetried) {
    auto *p = new FakeProvider("mx");
    providers({p});
    suppress({"r2@example.org"});
    delivery->handle(three(1, "0"), false);  // r0 got it in the first attempt
    EXPECT_EQ(p->asked.at(0), (std::vector<size_t>{1}));
    EXPECT_EQ(queue.steps.back(), "ack");
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"recipient_suppressed 2", "recipient_sent 1",
                                                                   "sent"}));
}

TEST_F(DeliveryTest, AMailboxThatDoesNotExistIsSuppressedOtherRefusalsAreNot) {
    auto *p = new FakeProvider("mx");
    SendOutcome o = per_recipient({{SendResult::permanent, 550}, {SendResult::permanent, 550}, {SendResult::sent, 250}});
    o.recipients[0].reason = "550 5.1.1 <r0@example.org>: no such user";
    o.recipients[1].reason = "550 5.7.1 refused by policy";
    p->script.push_back(o);
    providers({p});
    delivery->handle(three(), false);
    ASSERT_EQ(queue.suppress_commands.size(), 1u);
    const std::vector<std::string> &cmd = queue.suppress_commands[0];
    EXPECT_EQ(cmd.at(3), mailapi::contract::suppression_key("mailapi:messages", "acme"));
    EXPECT_EQ(cmd.at(6), "bounced");
    EXPECT_EQ(cmd.at(8), "0");  // never replaces an earlier reason
    EXPECT_EQ(cmd.at(9), mailapi::contract::recipient_key(ring, "acme", "r0@example.org"));
    EXPECT_EQ(cmd.at(10).find("r0@example.org"), std::string::npos);  // sealed
}

// ---------------------------------------------------------------- links

TEST_F(DeliveryTest, LinksForEachRecipientMakeOneCopyEach) {
    auto *p = new FakeProvider("mx");
    providers({p});
    delivery->handle(linked(R"(["x@example.org","y@example.org"])"), false);
    ASSERT_EQ(p->sends, 2);
    EXPECT_EQ(p->asked, (std::vector<std::vector<size_t>>{{0}, {1}}));
    EXPECT_NE(p->unsubscribes[0], p->unsubscribes[1]);
    EXPECT_EQ(p->unsubscribes[0].rfind("<https://m.example/u/", 0), 0u) << p->unsubscribes[0];
    EXPECT_NE(p->texts[0].find("yes: https://m.example/r/"), std::string::npos) << p->texts[0];
    // each taken is remembered at once: a crash between the copies sends neither again
    EXPECT_EQ(queue.steps, (std::vector<std::string>{"take", "sent-marker 0 mx 250 0", "sent-marker 0 mx 250 0,1",
                                                     "record", "ack"}));
}

TEST_F(DeliveryTest, ACopyRefusedForNowIsRetriedAloneAndTheOtherIsNotSentAgain) {
    auto *p = new FakeProvider("mx");
    p->script.push_back(outcome(SendResult::sent, 250));
    p->script.push_back(outcome(SendResult::transient, 451));
    providers({p});
    delivery->handle(linked(R"(["x@example.org","y@example.org"])"), false);
    EXPECT_EQ(queue.steps.back(), "defer");
    EXPECT_EQ(queue.deferred_done, "0");
    EXPECT_EQ(types(store.writes.at(0)),
              (std::vector<std::string>{"queued", "recipient_sent 0", "recipient_deferred 1", "deferred"}));
}

TEST_F(DeliveryTest, AProviderDownForEveryCopyFailsOverAsForOneMessage) {
    auto *a = new FakeProvider("sg");
    auto *b = new FakeProvider("mx");
    a->script = {outcome(SendResult::transient, 503), outcome(SendResult::transient, 503)};
    providers({a, b});
    delivery->handle(linked(R"(["x@example.org","y@example.org"])"), false);
    EXPECT_EQ(b->asked, (std::vector<std::vector<size_t>>{{0}, {1}}));
    EXPECT_EQ(types(store.writes.at(0)), (std::vector<std::string>{"queued", "provider_failed", "sent"}));
}

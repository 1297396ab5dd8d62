// The contract between the module and deliveryd: buckets, ids, statuses.
#include <gtest/gtest.h>

#include <thread>

#include "bson_doc.h"
#include "contract.h"
#include "records.h"

using namespace mailapi;
using contract::Bucket;

TEST(Buckets, EveryLevelIsSixteenTimesFinerAndKeysAreStable) {
    for (int l = 1; l < contract::LEVELS; l++) {
        EXPECT_EQ(contract::LEVEL[l - 1].span_ms, 16 * contract::LEVEL[l].span_ms) << l;
    }
    std::vector<std::string> keys;
    contract::bucket_keys("rk", 86400000LL * 20000 + 12345, keys);
    ASSERT_EQ(keys.size(), 1u + contract::LEVELS);
    EXPECT_EQ(keys[0], "rk");
    EXPECT_EQ(keys[1], "rk.a78");      // day 20000 / 256
    EXPECT_EQ(keys[2], "rk.b1250");    // / 16
    EXPECT_EQ(keys[3], "rk.c20000");
    EXPECT_EQ(keys[4], "rk.d320000");  // 16 a day
    EXPECT_EQ(keys[5], "rk.e5120000");
}

TEST(Buckets, ParentsChildrenAndSpans) {
    int64_t t = 1795000000000;
    Bucket root{"rk", -1, 0};
    Bucket a = root.child_at(t), e = a.child_at(t).child_at(t).child_at(t).child_at(t);
    EXPECT_EQ(e.level, contract::LEVELS - 1);
    EXPECT_LE(e.start_ms(), t);
    EXPECT_GT(e.end_ms(), t);
    Bucket up = e;
    for (int i = 0; i < contract::LEVELS; i++) up = up.parent();
    EXPECT_EQ(up.key(), "rk");
    EXPECT_EQ(a.parent().key(), "rk");
    EXPECT_EQ(root.parent().key(), "rk");
    EXPECT_EQ(contract::hint_id("acme", a), "acme." + a.key());
    EXPECT_EQ(contract::hint_parent("acme", a), "acme.rk");
    EXPECT_EQ(contract::hint_parent("acme", root), "acme.rk");  // the root's own hint is found with its children
    // the 16 children of a bucket tile it exactly
    Bucket b = a.child_at(t);
    Bucket first = b.child_at(b.start_ms()), last = b.child_at(b.end_ms() - 1);
    EXPECT_EQ(last.n - first.n, 15);
    EXPECT_EQ(first.start_ms(), b.start_ms());
    EXPECT_EQ(last.end_ms(), b.end_ms());
}

// message_id_new is monotonic per thread: an id made earlier in this thread
// (by another test) with a later time would be carried on. A new thread
// starts afresh.
std::string fresh_id(int64_t ms) {
    std::string id;
    std::thread([&] { message_id_new(ms, id); }).join();
    return id;
}

TEST(MessageIds, CarryTheirTime) {
    for (int64_t ms : {int64_t(0), int64_t(1795000000123), int64_t((1LL << 48) - 1)}) {
        std::string id = fresh_id(ms);
        EXPECT_EQ(contract::message_id_time_ms(id), ms) << id;
    }
    EXPECT_EQ(contract::message_id_time_ms("nope"), -1);
    // ids sort by time
    std::string a, b;
    ASSERT_TRUE(message_id_new(1000, a));
    ASSERT_TRUE(message_id_new(1001, b));
    EXPECT_LT(a, b);
}

TEST(EventIds, OneTerminalPerGeneration) {
    EXPECT_EQ(contract::event_id_terminal(0), "t0");
    EXPECT_EQ(contract::terminal_generation("t0"), 0);
    EXPECT_EQ(contract::terminal_generation("t12"), 12);
    EXPECT_EQ(contract::terminal_generation("q"), -1);
    EXPECT_EQ(contract::terminal_generation("t"), -1);
    EXPECT_EQ(contract::terminal_generation("tx"), -1);
    EXPECT_EQ(contract::terminal_generation("g0a1d"), -1);
    EXPECT_NE(contract::event_id_deferred(0, 1), contract::event_id_deferred(1, 1));
    EXPECT_NE(contract::event_id_provider_failed(0, 1, 0), contract::event_id_provider_failed(0, 1, 1));
}

namespace {

records::Event ev(const char *id, const char *type, int64_t at) { return {id, type, at, "", 0, ""}; }

}  // namespace

TEST(Status, DerivedFromEventsAndOnlyMovingForward) {
    records::Stored s;
    s.created_ms = 1000;
    s.events = {ev("q", "queued", 1000)};
    EXPECT_EQ(records::status_of(s, 2000), "queued");
    s.send_at = 10;  // 10 s: in the future at 2 s, nothing tried
    EXPECT_EQ(records::status_of(s, 2000), "scheduled");
    EXPECT_EQ(records::status_of(s, 20000), "queued");
    s.events.push_back(ev("g0a0d", "deferred", 11000));
    EXPECT_EQ(records::status_of(s, 2000), "queued");
    s.events.push_back(ev("t0", "failed", 12000));
    EXPECT_EQ(records::status_of(s, 2000), "failed");
    EXPECT_TRUE(records::finished(s, 0));
    EXPECT_FALSE(records::finished(s, 1));  // a replay is a new generation
    s.events.push_back(ev("t1", "sent", 13000));
    EXPECT_EQ(records::status_of(s, 2000), "sent");
    // order of arrival does not matter
    std::swap(s.events.front(), s.events.back());
    EXPECT_EQ(records::status_of(s, 2000), "sent");
    EXPECT_EQ(records::updated_ms(s), 13000);
}

TEST(Status, EventsAreUniqueAndInOrderWithinAMillisecond) {
    records::Stored s;
    s.events = {ev("t0", "sent", 5), ev("g0a0p0", "provider_failed", 5), ev("q", "queued", 5),
                ev("t0", "sent", 5)};
    records::finish(s);
    ASSERT_EQ(s.events.size(), 3u);
    EXPECT_EQ(s.events[0].type, "queued");
    EXPECT_EQ(s.events[1].type, "provider_failed");
    EXPECT_EQ(s.events[2].type, "sent");
}

TEST(Records, MessageAndEventDocumentsReadBack) {
    records::Message m;
    m.id = "msg_01M8MV5XPCC81MB0ZRTPXKPCXR";
    m.tenant = "acme";
    m.created_ms = 1795000000000;
    m.send_at = 1795000100;
    m.envelope = std::string("\x01\x02k1\0\xff", 6);
    m.rk = {"r1", "r1.a1"};
    Bson msg, event;
    records::append_message(msg.get(), m, {ev("q", "queued", m.created_ms)});
    records::append_event(event.get(), m, ev("t0", "sent", m.created_ms + 5));
    std::map<std::string, records::Stored> found;
    ASSERT_TRUE(records::read_document(event.get(), found));
    ASSERT_TRUE(records::read_document(msg.get(), found));
    ASSERT_EQ(found.size(), 1u);
    records::Stored &s = found[m.id];
    EXPECT_TRUE(s.has_message);
    EXPECT_EQ(s.envelope, m.envelope);  // binary, NULs and all
    EXPECT_EQ(s.created_ms, m.created_ms);
    EXPECT_EQ(s.send_at, m.send_at);
    records::finish(s);
    ASSERT_EQ(s.events.size(), 2u);
    EXPECT_EQ(records::status_of(s, 0), "sent");
    Bson other;
    BSON_APPEND_UTF8(other.get(), "_id", "epoch");
    EXPECT_FALSE(records::read_document(other.get(), found));
}

TEST(RedisKeys, AreTheContractsAsStorageMdNamesThem) {
    EXPECT_EQ(contract::message_key(contract::DEFAULT_STREAM, "msg_X"), "mailapi:messages:msg_X");
    EXPECT_EQ(contract::idempotency_key("acme", "order-17"), "mailapi:idem:acme:order-17");
    EXPECT_EQ(contract::rate_key("k1"), "mailapi:rate:k1");
    EXPECT_EQ(contract::quota_key("k1", 86400000LL * 20000 + 5), "mailapi:quota:k1:20000");
    EXPECT_STREQ(contract::DEFAULT_SCHEDULED, "mailapi:scheduled");
    EXPECT_STREQ(contract::DEFAULT_DEAD_LETTERS, "mailapi:dead");
    EXPECT_STREQ(contract::DEFAULT_GROUP, "deliveryd");
}

#include <gtest/gtest.h>

#include "base64.h"
#include "crypto.h"

using namespace mailapi;

namespace {
std::string key_line(const char *id, char fill) {
    return std::string(id) + " " + base64_encode(std::string(32, fill)) + "\n";
}

Keyring ring(const std::string &text) {
    Keyring r;
    std::string err;
    EXPECT_TRUE(keyring_parse(text, r, err)) << err;
    return r;
}
}  // namespace

TEST(Keyring, ParsesAndPicksLastDataKey) {
    Keyring r = ring("# comment\n" + key_line("index", 'i') + key_line("k1", 'a') + key_line("k2", 'b'));
    ASSERT_EQ(r.data_keys.size(), 2u);
    EXPECT_EQ(r.active().id, "k2");
    EXPECT_TRUE(r.has_index_key);
}

TEST(Keyring, RejectsBadFiles) {
    Keyring r;
    std::string err;
    EXPECT_FALSE(keyring_parse(key_line("k1", 'a'), r, err));
    EXPECT_NE(err.find("index"), std::string::npos);
    EXPECT_FALSE(keyring_parse(key_line("index", 'i'), r, err));
    EXPECT_FALSE(keyring_parse(key_line("index", 'i') + "k1 c2hvcnQ=\n", r, err));
    EXPECT_NE(err.find("line 2"), std::string::npos);
    EXPECT_FALSE(keyring_parse(key_line("index", 'i') + key_line("k1", 'a') + key_line("k1", 'b'), r, err));
    EXPECT_FALSE(keyring_parse(key_line("index", 'i') + key_line("k/1", 'a'), r, err));
}

TEST(Envelope, SealOpenAndRotation) {
    Keyring old_ring = ring(key_line("index", 'i') + key_line("k1", 'a'));
    Keyring new_ring = ring(key_line("index", 'i') + key_line("k1", 'a') + key_line("k2", 'b'));
    std::string aad = envelope_aad("tenant1", "msg_1"), env, out;
    ASSERT_TRUE(envelope_seal(old_ring, aad, "secret body", env));
    EXPECT_EQ(env.rfind("k1.", 0), 0u);
    EXPECT_EQ(env.find("secret"), std::string::npos);
    ASSERT_TRUE(envelope_open(new_ring, aad, env, out));  // old records stay readable
    EXPECT_EQ(out, "secret body");
    ASSERT_TRUE(envelope_seal(new_ring, aad, "x", env));
    EXPECT_EQ(env.rfind("k2.", 0), 0u);
    EXPECT_FALSE(envelope_open(old_ring, aad, env, out));  // unknown key id
}

TEST(Envelope, BindsTenantAndIdAndDetectsTampering) {
    Keyring r = ring(key_line("index", 'i') + key_line("k1", 'a'));
    std::string env, out;
    ASSERT_TRUE(envelope_seal(r, envelope_aad("t1", "msg_1"), "payload", env));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t2", "msg_1"), env, out));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_2"), env, out));
    std::string tampered = env;
    tampered[10] = tampered[10] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), tampered, out));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), "k1.AAAA", out));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), "garbage", out));
}

TEST(Envelope, NoncesDiffer) {
    Keyring r = ring(key_line("index", 'i') + key_line("k1", 'a'));
    std::string a, b;
    ASSERT_TRUE(envelope_seal(r, "", "same", a));
    ASSERT_TRUE(envelope_seal(r, "", "same", b));
    EXPECT_NE(a, b);
}

TEST(BlindIndex, StableKeyedAndOpaque) {
    Keyring r1 = ring(key_line("index", 'i') + key_line("k1", 'a'));
    Keyring r2 = ring(key_line("index", 'j') + key_line("k1", 'a'));
    EXPECT_EQ(blind_index(r1, "a@example.com"), blind_index(r1, "a@example.com"));
    EXPECT_NE(blind_index(r1, "a@example.com"), blind_index(r1, "b@example.com"));
    EXPECT_NE(blind_index(r1, "a@example.com"), blind_index(r2, "a@example.com"));
    EXPECT_EQ(blind_index(r1, "a@example.com").size(), 43u);
}

TEST(MessageId, FormatAndOrder) {
    std::string a, b;
    ASSERT_TRUE(message_id_new(1700000000000, a));
    ASSERT_TRUE(message_id_new(1700000000001, b));
    EXPECT_TRUE(message_id_valid(a));
    EXPECT_LT(a, b);
    EXPECT_EQ(a.size(), 30u);
    EXPECT_FALSE(message_id_valid("msg_0000000000000000000000000I"));
    EXPECT_FALSE(message_id_valid("msg_"));
    EXPECT_FALSE(message_id_valid("../../etc/passwd"));
}

TEST(MessageId, MonotonicWithinOneMillisecond) {
    std::string prev, id;
    ASSERT_TRUE(message_id_new(1700000000500, prev));
    for (int i = 0; i < 1000; i++) {
        ASSERT_TRUE(message_id_new(1700000000500, id));
        ASSERT_LT(prev, id);
        prev = id;
    }
    ASSERT_TRUE(message_id_new(1700000000400, id));  // clock stepped back
    EXPECT_LT(prev, id);
}

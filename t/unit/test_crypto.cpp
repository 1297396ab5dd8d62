#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "base64.h"
#include "crypto.h"
#include "ossl.h"

#include <openssl/hmac.h>

#include <vector>

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
    EXPECT_EQ(envelope_key_id(env), "k1");
    EXPECT_EQ(env.size(), 2 + 2 + 12 + std::string("secret body").size() + 16);  // version, key id, nonce, tag
    EXPECT_EQ(env.find("secret"), std::string::npos);
    ASSERT_TRUE(envelope_open(new_ring, aad, env, out));  // old records stay readable
    EXPECT_EQ(out, "secret body");
    ASSERT_TRUE(envelope_seal(new_ring, aad, "x", env));
    EXPECT_EQ(envelope_key_id(env), "k2");
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
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), env.substr(0, env.size() - 1), out));  // cut
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), std::string("\x01\x02k1", 4), out));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), "garbage", out));
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), "", out));
    std::string other_version = env;
    other_version[0] = 2;
    EXPECT_FALSE(envelope_open(r, envelope_aad("t1", "msg_1"), other_version, out));
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

// The pooled CSPRNG output: a forked child (an nginx worker) never hands out
// the bytes its parent will.
TEST(Random, AForkedChildDrawsOtherBytes) {
    unsigned char warm[8];
    ASSERT_TRUE(mailapi::random_bytes(warm, sizeof warm));  // the parent's pool is full
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        unsigned char child[16];
        bool ok = mailapi::random_bytes(child, sizeof child);
        _exit(ok && write(fds[1], child, sizeof child) == sizeof child ? 0 : 1);
    }
    unsigned char parent[16], child[16];
    ASSERT_TRUE(mailapi::random_bytes(parent, sizeof parent));
    ASSERT_EQ(read(fds[0], child, sizeof child), static_cast<ssize_t>(sizeof child));
    int status = 0;
    waitpid(pid, &status, 0);
    close(fds[0]);
    close(fds[1]);
    EXPECT_EQ(status, 0);
    EXPECT_NE(std::memcmp(parent, child, sizeof parent), 0);
}

namespace {
std::string hmac_reference(const std::string &key, const std::string &data) {
    unsigned char md[32];
    unsigned int len = 0;
    HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char *>(data.data()),
         data.size(), md, &len);
    return std::string(reinterpret_cast<char *>(md), len);
}

std::string hmac_ours(const std::string &key, const std::string &data) {
    unsigned char md[32];
    EXPECT_TRUE(hmac_sha256(key, data, md));
    return std::string(reinterpret_cast<char *>(md), sizeof md);
}
}  // namespace

// hmac_sha256 keeps keyed contexts per thread: each key must still give its
// own MAC, however keys come and go (more keys than slots, keys that differ
// in one byte or in length only, the empty key, one longer than a slot).
TEST(Hmac, EveryKeyGivesItsOwnMacAcrossTheContextCache) {
    std::vector<std::string> keys = {"", std::string(131, '\xaa'), std::string(64, 'k'), std::string(63, 'k')};
    for (int i = 0; i < 20; i++) keys.push_back(std::string(32, 'a') + static_cast<char>('A' + i));
    keys.push_back(std::string(32, 'a'));
    // RFC 4231 test case 2
    EXPECT_EQ(base64_encode(hmac_ours("Jefe", "what do ya want for nothing?")),
              base64_encode(std::string("\x5b\xdc\xc1\x46\xbf\x60\x75\x4e\x6a\x04\x24\x26\x08\x95\x75\xc7"
                                        "\x5a\x00\x3f\x08\x9d\x27\x39\x83\x9d\xec\x58\xb9\x64\xec\x38\x43", 32)));
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < keys.size(); i++) {
            // a few keys again and again between the others, as sends do
            for (const std::string &k : {keys[i], keys[0], keys[2], keys[i]}) {
                std::string data = "data " + std::to_string(i) + " " + std::to_string(round);
                ASSERT_EQ(hmac_ours(k, data), hmac_reference(k, data)) << "key " << i << " round " << round;
            }
        }
    }
}

TEST(Hmac, PartsAreTheirConcatenation) {
    std::string key(32, 'i'), tenant = "acme", addr = "a@example.org";
    unsigned char parts[32], whole[32];
    ASSERT_TRUE(hmac_sha256(key, {tenant, std::string_view("\0", 1), addr}, parts));
    ASSERT_TRUE(hmac_sha256(key, tenant + '\0' + addr, whole));
    EXPECT_EQ(0, std::memcmp(parts, whole, 32));
    ASSERT_TRUE(hmac_sha256(key, {std::string_view(), tenant + '\0', std::string_view(), addr}, parts));
    EXPECT_EQ(0, std::memcmp(parts, whole, 32));
}

TEST(Hmac, OnceGivesTheSameMacAndKeepsTheCachedKeysWorking) {
    std::string cached(32, 'c'), once(32, 'o');
    unsigned char a[32], b[32];
    ASSERT_TRUE(hmac_sha256(cached, "x", a));
    ASSERT_TRUE(hmac_sha256_once(once, "y", b));
    EXPECT_EQ(std::string(reinterpret_cast<char *>(b), 32), hmac_reference(once, "y"));
    ASSERT_TRUE(hmac_sha256(cached, "x", b));
    EXPECT_EQ(0, std::memcmp(a, b, 32));
}

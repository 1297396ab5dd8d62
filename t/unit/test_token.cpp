#include <gtest/gtest.h>

#include "token.h"

using namespace mailapi;

namespace {
const std::string SECRET = "0123456789abcdef0123456789abcdef";
const int64_t NOW = 1800000000;

TokenStatus check(const std::string &tok, int64_t now = NOW, const std::string &secret = SECRET) {
    TokenParts p;
    TokenStatus s = token_parse(tok, p);
    if (s != TokenStatus::ok) return s;
    return token_verify(p, secret, now, 30, 86400);
}
}  // namespace

TEST(Token, MintedTokenVerifies) {
    std::string t = token_mint("k1", SECRET, NOW + 600, SCOPE_SEND | SCOPE_READ);
    EXPECT_EQ(t.rfind("v1.k1.1800000600.send+read.", 0), 0u);
    TokenParts p;
    ASSERT_EQ(token_parse(t, p), TokenStatus::ok);
    EXPECT_EQ(p.key_id, "k1");
    EXPECT_EQ(p.scopes, unsigned(SCOPE_SEND | SCOPE_READ));
    EXPECT_EQ(check(t), TokenStatus::ok);
}

TEST(Token, KnownAnswer) {
    // HMAC-SHA256 computed independently (Python hmac) for this input.
    EXPECT_EQ(token_mint("k1", SECRET, 1800000600, SCOPE_SEND),
              "v1.k1.1800000600.send.Q5vnLc1RIXjkOqwSAsipI-1tDbCEp4P9c04XOJ_BKic");
}

TEST(Token, ForgedAndTampered) {
    std::string t = token_mint("k1", SECRET, NOW + 600, SCOPE_SEND);
    EXPECT_EQ(check(t, NOW, "another secret, another signature"), TokenStatus::bad_signature);
    std::string scope_swapped = t;
    scope_swapped.replace(scope_swapped.find("send"), 4, "read");
    EXPECT_EQ(check(scope_swapped), TokenStatus::bad_signature);
    std::string flipped = t;
    flipped.back() = flipped.back() == 'A' ? 'B' : 'A';
    EXPECT_EQ(check(flipped), TokenStatus::bad_signature);
}

TEST(Token, Clock) {
    EXPECT_EQ(check(token_mint("k1", SECRET, NOW - 31, SCOPE_SEND)), TokenStatus::expired);
    EXPECT_EQ(check(token_mint("k1", SECRET, NOW - 10, SCOPE_SEND)), TokenStatus::ok);  // skew
    EXPECT_EQ(check(token_mint("k1", SECRET, NOW + 86400 + 31, SCOPE_SEND)),
              TokenStatus::lifetime_exceeded);
}

TEST(Token, Malformed) {
    std::string t = token_mint("k1", SECRET, NOW + 600, SCOPE_SEND);
    EXPECT_EQ(check(t.substr(0, t.size() - 1)), TokenStatus::malformed);  // truncated
    EXPECT_EQ(check(""), TokenStatus::malformed);
    EXPECT_EQ(check("v1.k1.1800000600.send"), TokenStatus::malformed);
    EXPECT_EQ(check("v2" + t.substr(2)), TokenStatus::bad_version);
    EXPECT_EQ(check("v1.k1.0180000060.send." + std::string(43, 'A')), TokenStatus::malformed);
    EXPECT_EQ(check("v1.k1.1800000600.admin." + std::string(43, 'A')), TokenStatus::malformed);
    EXPECT_EQ(check("v1.k 1.1800000600.send." + std::string(43, 'A')), TokenStatus::malformed);
    EXPECT_EQ(check("v1.k1.1800000600.send." + std::string(43, 'A') + ".x"), TokenStatus::malformed);
    EXPECT_EQ(check(std::string(600, 'v')), TokenStatus::malformed);
}

TEST(Token, Scopes) {
    EXPECT_EQ(scopes_parse("send"), unsigned(SCOPE_SEND));
    EXPECT_EQ(scopes_parse("read+send"), unsigned(SCOPE_SEND | SCOPE_READ));
    EXPECT_EQ(scopes_parse("Send"), 0u);
    EXPECT_EQ(scopes_parse(""), 0u);
    EXPECT_STREQ(scopes_name(SCOPE_READ), "read");
}

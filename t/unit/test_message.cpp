#include <gtest/gtest.h>

#include "message.h"

using namespace mailapi;

namespace {
const int64_t NOW = 1800000000;

FieldError reject(const std::string &json) {
    Message m;
    FieldError e;
    EXPECT_FALSE(message_parse(json, MessageLimits(), NOW, m, e)) << json;
    return e;
}

Message accept(const std::string &json) {
    Message m;
    FieldError e;
    EXPECT_TRUE(message_parse(json, MessageLimits(), NOW, m, e)) << json << " -> " << e.field << ": " << e.message;
    return m;
}

std::string with(const std::string &extra) {
    return R"({"from":"a@example.com","to":["b@example.org"],"subject":"Hi","text":"Hello")" + extra + "}";
}
}  // namespace

TEST(Message, MinimalAndFull) {
    Message m = accept(with(""));
    EXPECT_EQ(m.from.email, "a@example.com");
    ASSERT_EQ(m.to.size(), 1u);
    m = accept(R"({"from":{"email":"a@example.com","name":"Ann Ä"},"to":["b@example.org"],
        "cc":[{"email":"c@example.org"}],"bcc":["d@example.org"],"reply_to":"r@example.com",
        "subject":"Grüße","html":"<p>x</p>","headers":{"X-Campaign":"42"},
        "attachments":[{"filename":"a.txt","content_type":"text/plain","content":"aGVsbG8="}],
        "tags":["welcome"],"metadata":{"user_id":"7"},"send_at":"2027-01-15T10:00:00+01:00"})");
    EXPECT_EQ(m.from.name, "Ann Ä");
    EXPECT_EQ(m.cc[0].email, "c@example.org");
    EXPECT_EQ(m.headers[0].first, "X-Campaign");
    EXPECT_EQ(m.send_at, NOW + 3600);
}

TEST(Message, CanonicalJsonRoundTrips) {
    Message m = accept(with(R"(,"cc":["c@example.org"],"tags":["t"],"metadata":{"k":"v"})"));
    std::string json = message_to_json(m);
    Message again;
    FieldError e;
    ASSERT_TRUE(message_parse(json, MessageLimits(), 0, again, e)) << e.message;
    EXPECT_EQ(message_to_json(again), json);
}

TEST(Message, ErrorsNameTheField) {
    EXPECT_EQ(reject("{").status, 400);
    EXPECT_EQ(reject("{").code, "invalid_json");
    EXPECT_EQ(reject("[]").code, "invalid_type");
    EXPECT_EQ(reject(R"({"to":["b@example.org"],"subject":"s","text":"t"})").field, "from");
    EXPECT_EQ(reject(R"({"from":"a@example.com","subject":"s","text":"t"})").field, "to");
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":[],"subject":"s","text":"t"})").field, "to");
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":["b@example.org","nope"],"subject":"s","text":"t"})").field, "to[1]");
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":["b@example.org"],"text":"t"})").field, "subject");
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":["b@example.org"],"subject":"s"})").field, "text");
    EXPECT_EQ(reject(with(R"(,"cc":[{"email":"x"}])")).field, "cc[0].email");
    EXPECT_EQ(reject(with(R"(,"bogus":1)")).code, "unknown_field");
    EXPECT_EQ(reject(with(R"(,"text":"again")")).code, "invalid_json");  // duplicate key
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":["b@example.org"],"subject":"a\r\nBcc: x@y.z","text":"t"})").field, "subject");
}

TEST(Message, HeadersAreGuarded) {
    EXPECT_EQ(reject(with(R"(,"headers":{"Bcc":"x@example.com"})")).code, "forbidden_header");
    EXPECT_EQ(reject(with(R"(,"headers":{"content-type":"text/html"})")).code, "forbidden_header");
    EXPECT_EQ(reject(with(R"(,"headers":{"X-A":"1\r\nBcc: x@example.com"})")).code, "invalid_header");
    EXPECT_EQ(reject(with(R"(,"headers":{"X A":"1"})")).field, "headers.X A");
    EXPECT_EQ(reject(with(R"(,"headers":{"X-A":1})")).code, "invalid_type");
}

TEST(Message, LimitsAndAttachments) {
    std::string many;
    for (int i = 0; i < 51; i++) many += std::string(i ? "," : "") + "\"u" + std::to_string(i) + "@example.org\"";
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":[)" + many + R"(],"subject":"s","text":"t"})").code,
              "too_many_recipients");
    EXPECT_EQ(reject(with(R"(,"attachments":[{"filename":"a","content":"not base64!"}])")).code, "invalid_base64");
    EXPECT_EQ(reject(with(R"(,"attachments":[{"filename":"../a","content":"aGk="}])")).field, "attachments[0].filename");
    EXPECT_EQ(reject(with(R"(,"attachments":[{"content":"aGk="}])")).field, "attachments[0].filename");
    EXPECT_EQ(reject(with(R"(,"attachments":[{"filename":"a","content":"aGk=","content_type":"nope"}])")).field,
              "attachments[0].content_type");
    EXPECT_EQ(reject(with(R"(,"tags":["has space"])")).field, "tags[0]");
    EXPECT_EQ(reject(with(R"(,"metadata":{"k":{"nested":1}})")).field, "metadata.k");
    EXPECT_EQ(reject(R"({"from":"a@example.com","to":["b@example.org"],"text":"t","subject":")" +
                     std::string(999, 's') + "\"}").code, "too_long");
}

TEST(Message, SendAt) {
    EXPECT_EQ(accept(with(R"(,"send_at":"2027-01-15T08:01:00Z")")).send_at, NOW + 60);
    EXPECT_EQ(accept(with(R"(,"send_at":"2020-01-01T00:00:00Z")")).send_at, 0);  // past: now
    EXPECT_EQ(reject(with(R"(,"send_at":"2030-01-01T00:00:00Z")")).field, "send_at");  // beyond horizon
    EXPECT_EQ(reject(with(R"(,"send_at":"tomorrow")")).field, "send_at");
    EXPECT_EQ(reject(with(R"(,"send_at":"2027-02-30T00:00:00Z")")).field, "send_at");
}

TEST(Address, AcceptsRealWorld) {
    for (const char *a : {"user@example.com", "first.last+tag@sub.example.co.uk", "\"john doe\"@example.com",
                          "\"a\\\"b\"@example.com", "x@[192.0.2.1]", "用户@例子.广告", "user@xn--bcher-kva.example",
                          "o'brien@example.ie", "a_b-c@ex-ample.com", "x@[IPv6:2001:db8::1]",
                          "x@[ipv6:2001:db8::1]", "x@[IPv6:::ffff:192.0.2.1]"}) {
        EXPECT_TRUE(address_valid(a)) << a;
    }
}

TEST(Address, RejectsJunk) {
    for (const char *a : {"", "plain", "@example.com", "user@", "user@localhost", "a..b@example.com",
                          ".a@example.com", "a.@example.com", "a b@example.com", "a@exa mple.com",
                          "a@-example.com", "a@example-.com", "a@example..com", "a@1.2.3.4",
                          "a\r\n@example.com", "a@example.com\nBcc: b@example.com", "\"unterminated@example.com",
                          "x@[300.1.1.1]", "x@[1.2.3]", "x@[IPv6:1:2]", "x@[IPv6:1::2::3]", "x@[Iv6:1::2]",
                          "x@[6IPv:1::]", "x@[]"}) {
        EXPECT_FALSE(address_valid(a)) << a;
    }
    EXPECT_FALSE(address_valid(std::string(65, 'a') + "@example.com"));
    EXPECT_FALSE(address_valid("a@" + std::string(250, 'b') + ".com"));
}

TEST(Address, NormalisedForLookup) {
    EXPECT_EQ(address_normalise("John.Doe@Example.COM"), "john.doe@example.com");
    Message m = accept(R"({"from":"a@example.com","to":["B@example.org"],"cc":["b@EXAMPLE.org","c@example.org"],
        "subject":"s","text":"t"})");
    EXPECT_EQ(message_recipients(m), (std::vector<std::string>{"b@example.org", "c@example.org"}));
}

TEST(Rfc3339, ParsesAndFormats) {
    int64_t t;
    ASSERT_TRUE(rfc3339_parse("1970-01-01T00:00:00Z", t));
    EXPECT_EQ(t, 0);
    ASSERT_TRUE(rfc3339_parse("2027-01-15T09:00:00.123+01:00", t));
    EXPECT_EQ(t, NOW);
    EXPECT_FALSE(rfc3339_parse("2027-01-15 09:00:00Z", t));
    EXPECT_FALSE(rfc3339_parse("2027-01-15T09:00:00", t));
    EXPECT_EQ(rfc3339_format_ms(NOW * 1000LL + 5), "2027-01-15T08:00:00.005Z");
}

TEST(Message, StoredLimitsReadWhatTheEdgeAccepted) {
    MessageLimits wide;
    wide.max_recipients = 200;
    std::string to;
    for (int i = 0; i < 120; i++) to += std::string(i ? "," : "") + "\"u" + std::to_string(i) + "@example.org\"";
    std::string json = R"({"from":"a@example.com","to":[)" + to + R"(],"subject":"s","text":"t"})";
    Message m;
    FieldError e;
    ASSERT_TRUE(message_parse(json, wide, NOW, m, e));
    EXPECT_FALSE(message_parse(json, MessageLimits(), 0, m, e));
    EXPECT_TRUE(message_parse(json, MessageLimits::stored(), 0, m, e));
}

// Duplicate keys are found in small objects (sorted on the stack) and in
// large ones (past 16 keys, in a vector), wherever the duplicate is.
TEST(Message, DuplicateKeysAreFoundInObjectsOfAnySize) {
    auto metadata = [](int n, int dup_of, int dup_at) {
        std::string m;
        for (int i = 0; i < n; i++) {
            int k = i == dup_at ? dup_of : i;
            m += (i ? "," : "") + std::string("\"k") + std::to_string(k) + "\":\"v\"";
        }
        return with(",\"metadata\":{" + m + "}");
    };
    for (auto [n, of, at] : {std::tuple{5, 1, 4}, {16, 0, 15}, {17, 0, 16}, {20, 17, 19}, {20, 3, 18}}) {
        FieldError e = reject(metadata(n, of, at));
        EXPECT_EQ(e.code, "invalid_json") << n << " keys, k" << of << " again at " << at;
        EXPECT_NE(e.message.find("\"k" + std::to_string(of) + "\""), std::string::npos) << e.message;
    }
}

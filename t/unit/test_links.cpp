// Recipients' links (links.h): tokens that verify only as signed, for as
// long as they are meant to, and the copy each recipient gets.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "base64.h"
#include "contract.h"
#include "links.h"
#include "message.h"

namespace links = mailapi::links;

namespace {

class Links : public ::testing::Test {
protected:
    void SetUp() override {
        std::string err;
        std::string text = "index " + std::string(43, 'A') + "=\nk1 " + std::string(43, 'Q') + "=\nk2 " +
                           std::string(43, 'g') + "=\n";
        ASSERT_TRUE(mailapi::keyring_parse(text, ring, err)) << err;
        link.kind = links::RESPONSE;
        link.key_id = "k2";
        link.tenant = "acme";
        link.message_id = "msg_01M8YGK1C5C3PMJCWWJPX255SE";
        link.rcpt = 3;
        link.response = "Yes, please";
        link.expires = NOW + 3600;
    }
    static constexpr int64_t NOW = 1800000000;
    mailapi::Keyring ring;
    links::Link link;
};

TEST_F(Links, ATokenVerifiesAsSigned) {
    std::string t = links::token_make(ring, link);
    links::Link got;
    ASSERT_EQ(links::token_verify(ring, t, NOW, got), links::Verdict::ok);
    EXPECT_EQ(got.kind, links::RESPONSE);
    EXPECT_EQ(got.key_id, "k2");
    EXPECT_EQ(got.tenant, "acme");
    EXPECT_EQ(got.message_id, link.message_id);
    EXPECT_EQ(got.rcpt, 3);
    EXPECT_EQ(got.response, "Yes, please");
    EXPECT_EQ(got.expires, NOW + 3600);
    EXPECT_EQ(t.find("acme"), std::string::npos);  // base64url: not in clear
}

TEST_F(Links, EveryChangedCharacterIsRefused) {
    std::string t = links::token_make(ring, link);
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=|+/";
    for (size_t i = 0; i < t.size(); i++) {
        for (const char *c = alphabet; *c; c++) {
            if (*c == t[i]) continue;
            std::string changed = t;
            changed[i] = *c;
            links::Link got;
            EXPECT_NE(links::token_verify(ring, changed, NOW, got), links::Verdict::ok) << changed;
        }
    }
    links::Link got;
    EXPECT_NE(links::token_verify(ring, t.substr(0, t.size() - 1), NOW, got), links::Verdict::ok);
    EXPECT_NE(links::token_verify(ring, t + "A", NOW, got), links::Verdict::ok);
    EXPECT_NE(links::token_verify(ring, "", NOW, got), links::Verdict::ok);
    EXPECT_NE(links::token_verify(ring, std::string(500, 'A'), NOW, got), links::Verdict::ok);
}

TEST_F(Links, ExpiredAndUnknownKeysAreToldApart) {
    std::string t = links::token_make(ring, link);
    links::Link got;
    EXPECT_EQ(links::token_verify(ring, t, NOW + 3600, got), links::Verdict::expired);
    EXPECT_EQ(links::token_verify(ring, t, NOW + 3599, got), links::Verdict::ok);
    mailapi::Keyring rotated;
    std::string err;
    ASSERT_TRUE(mailapi::keyring_parse("index " + std::string(43, 'A') + "=\nk3 " + std::string(43, 'w') + "=\n",
                                       rotated, err));
    EXPECT_EQ(links::token_verify(rotated, t, NOW, got), links::Verdict::unknown_key);
}

TEST_F(Links, ASignatureOverOtherFieldsIsRefused) {
    // the same MAC under another payload: a forged recipient or kind
    std::string t = links::token_make(ring, link);
    std::string mac = t.substr(t.find('.'));
    link.rcpt = 4;
    std::string other = links::token_make(ring, link);
    links::Link got;
    EXPECT_EQ(links::token_verify(ring, other.substr(0, other.find('.')) + mac, NOW, got),
              links::Verdict::bad_signature);
}

TEST_F(Links, ResponseLabels) {
    EXPECT_TRUE(links::response_valid("Yes, please!"));
    EXPECT_TRUE(links::response_valid("don't"));
    EXPECT_FALSE(links::response_valid(""));
    EXPECT_FALSE(links::response_valid(" yes"));
    EXPECT_FALSE(links::response_valid("yes "));
    EXPECT_FALSE(links::response_valid("a|b"));
    EXPECT_FALSE(links::response_valid("<b>"));
    EXPECT_FALSE(links::response_valid(std::string("a\0b", 3)));
    EXPECT_FALSE(links::response_valid(std::string(33, 'a')));
    EXPECT_FALSE(links::response_valid("caf\xc3\xa9"));
}

TEST_F(Links, EachRecipientsCopyHasItsHeadersAndLinks) {
    mailapi::Message m;
    m.text = "Decide: {{response_url:yes}}\r\nBye: {{unsubscribe_url}}";
    m.html = "<HTML><body><p>Decide</p></BODY></HTML>";
    m.unsubscribe = true;
    m.responses = {"yes", "no"};
    m.link_base = "https://m.example";
    m.link_expires = NOW + 3600;
    mailapi::Message a = links::personalize(ring, m, "acme", link.message_id, 0, NOW);
    mailapi::Message b = links::personalize(ring, m, "acme", link.message_id, 1, NOW);
    ASSERT_EQ(a.headers.size(), 2u);
    EXPECT_EQ(a.headers[0].first, "List-Unsubscribe");
    EXPECT_EQ(a.headers[1], (std::pair<std::string, std::string>{"List-Unsubscribe-Post", "List-Unsubscribe=One-Click"}));
    EXPECT_NE(a.headers[0].second, b.headers[0].second);
    std::string u = a.headers[0].second.substr(1, a.headers[0].second.size() - 2);
    EXPECT_NE(a.text.find("Bye: " + u), std::string::npos) << a.text;
    EXPECT_EQ(a.text.find("{{"), std::string::npos);
    EXPECT_NE(a.text.find("\r\n\r\nno: https://m.example/r/"), std::string::npos) << a.text;  // no placeholder: at the end
    EXPECT_EQ(a.text.find("yes: https"), std::string::npos);  // it had one
    size_t end = a.html.find("</BODY>");
    ASSERT_NE(end, std::string::npos);
    EXPECT_LT(a.html.find(">yes</a>"), end);
    EXPECT_LT(a.html.find(">no</a>"), end);
    // the links verify, each for its recipient and label
    size_t at = a.text.find("https://m.example/r/") + 20;
    std::string token = a.text.substr(at, a.text.find_first_of("\r\n", at) - at);
    links::Link got;
    ASSERT_EQ(links::token_verify(ring, token, NOW, got), links::Verdict::ok) << token;
    EXPECT_EQ(got.rcpt, 0);
    EXPECT_EQ(got.key_id, "k2");  // the active key
    EXPECT_EQ(got.response, "yes");
    EXPECT_FALSE(links::personal(mailapi::Message()));
    EXPECT_TRUE(links::personal(m));
}

TEST_F(Links, LabelsAreEscapedInHtml) {
    mailapi::Message m;
    m.html = "<p>x</p>";
    m.responses = {"don't"};
    m.link_base = "https://m.example";
    m.link_expires = NOW + 3600;
    mailapi::Message a = links::personalize(ring, m, "acme", link.message_id, 0, NOW);
    EXPECT_NE(a.html.find(">don&#39;t</a>"), std::string::npos) << a.html;
    EXPECT_EQ(a.html.find("<script"), std::string::npos);
}

}  // namespace

// Each recipient's copy: placeholders, size, and when its links start to count.
using namespace mailapi;

namespace {

Keyring ring_of(const char *id, unsigned char fill) {
    Keyring r;
    Keyring::Entry e;
    e.id = id;
    e.key.fill(fill);
    r.data_keys.push_back(e);
    r.index_key.fill(9);
    r.has_index_key = true;
    return r;
}

Message linked() {
    Message m;
    m.from.email = "news@example.com";
    m.to.push_back({"a@example.org", ""});
    m.unsubscribe = true;
    m.responses = {"Approve", "Reject"};
    m.link_base = "https://mail.example.com";
    m.link_expires = 4000000000;
    return m;
}

size_t count(const std::string &s, std::string_view what) {
    size_t n = 0;
    for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + what.size())) n++;
    return n;
}

}  // namespace

TEST(LinkCopies, TokenRoundTripsAndRefusesTampering) {
    Keyring ring = ring_of("k1", 1);
    links::Link l;
    l.kind = links::UNSUBSCRIBE;
    l.key_id = "k1";
    l.tenant = "acme";
    l.message_id = "msg_0123456789ABCDEFGHJKMNPQRS";
    l.rcpt = 3;
    l.expires = 2000;
    std::string t = links::token_make(ring, l);
    links::Link out;
    EXPECT_EQ(links::token_verify(ring, t, 1999, out), links::Verdict::ok);
    EXPECT_EQ(out.rcpt, 3);
    EXPECT_EQ(links::token_verify(ring, t, 2000, out), links::Verdict::expired);
    EXPECT_EQ(links::token_verify(ring, t + "=", 1, out), links::Verdict::malformed);
    EXPECT_EQ(links::token_verify(ring_of("k1", 2), t, 1, out), links::Verdict::bad_signature);
    EXPECT_EQ(links::token_verify(ring_of("k2", 1), t, 1, out), links::Verdict::unknown_key);
}

// A body full of placeholders must not make each copy many times the size
// the API allows, nor take deliveryd's one thread long to make (a copy is
// made for every recipient, in the event loop).
TEST(LinkCopies, PlaceholdersCannotBlowACopyUp) {
    Keyring ring = ring_of("k1", 1);
    Message m = linked();
    std::string many;
    while (many.size() < (1u << 20) - 32) many += "{{unsubscribe_url}}";
    m.text = many;
    m.html = many;
    auto started = std::chrono::steady_clock::now();
    Message p = links::personalize(ring, m, "acme", "msg_0123456789ABCDEFGHJKMNPQRS", 0, 0);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    EXPECT_LT(s, 0.25);
    MessageLimits limits;
    EXPECT_LE(p.text.size(), limits.max_body_bytes + 4096);
    EXPECT_LE(p.html.size(), limits.max_body_bytes + 4096);
}

TEST(LinkCopies, PlaceholdersAreReplacedAndBlocksAppended) {
    Keyring ring = ring_of("k1", 1);
    Message m = linked();
    m.text = "Yes: {{response_url:Approve}} / stop: {{unsubscribe_url}} {{unsubscribe_url}}";
    m.html = "<html><body><a href='{{unsubscribe_url}}'>stop</a></body></html>";
    Message p = links::personalize(ring, m, "acme", "msg_0123456789ABCDEFGHJKMNPQRS", 1, 0);
    EXPECT_EQ(count(p.text, "{{"), 0u);
    EXPECT_EQ(count(p.text, "https://mail.example.com/u/"), 2u);
    EXPECT_EQ(count(p.text, "https://mail.example.com/r/"), 2u);  // Approve in place, Reject appended
    EXPECT_NE(p.text.find("Reject: https://mail.example.com/r/"), std::string::npos);
    EXPECT_EQ(count(p.html, "https://mail.example.com/r/"), 2u);
    EXPECT_LT(p.html.find(">Reject</a>"), p.html.find("</body>"));
}

TEST(LinkCopies, TheApiRefusesMorePlaceholdersThanACopyFills) {
    auto body = [](size_t n, const char *links) {
        std::string text;
        for (size_t i = 0; i < n; i++) text += i % 2 ? "{{unsubscribe_url}} " : "{{response_url:Yes}} ";
        return std::string("{\"from\":\"a@example.com\",\"to\":[\"b@example.org\"],\"subject\":\"s\",\"text\":\"") +
               text + "\"" + links + "}";
    };
    Message m;
    FieldError e;
    const char *with = ",\"unsubscribe\":true,\"responses\":[\"Yes\"]";
    EXPECT_TRUE(message_parse(body(links::PLACEHOLDERS_MAX, with), MessageLimits(), 0, m, e)) << e.message;
    EXPECT_FALSE(message_parse(body(links::PLACEHOLDERS_MAX + 1, with), MessageLimits(), 0, m, e));
    EXPECT_EQ(e.field, "text");
    // without links they are only text
    EXPECT_TRUE(message_parse(body(links::PLACEHOLDERS_MAX + 1, ""), MessageLimits(), 0, m, e)) << e.message;
    // an envelope taken under other limits is read back
    EXPECT_TRUE(message_parse(body(links::PLACEHOLDERS_MAX + 1, with), MessageLimits::stored(), 0, m, e));
}

// The module stamps when the links expire, counting from acceptance (or
// send_at); a copy may go out much later (retries up to max_age, a dead
// letter replayed): its links must not be dead on arrival.
TEST(LinkCopies, LinksLiveTheirTimeFromWhenTheCopyGoesOut) {
    Keyring ring = ring_of("k1", 1);
    int64_t t0 = 1800000000;
    std::string id;
    std::thread([&] { message_id_new(t0 * 1000, id); }).join();  // a new thread: no earlier id carried on
    ASSERT_EQ(contract::message_id_time_ms(id), t0 * 1000);
    Message m = linked();
    m.link_expires = t0 + 3600;  // mail_api_link_ttl 1h
    int64_t now = t0 + 7200;     // sent two hours after it was taken
    Message p = links::personalize(ring, m, "acme", id, 0, now);
    std::string header;
    for (const auto &h : p.headers) {
        if (h.first == "List-Unsubscribe") header = h.second;
    }
    size_t at = header.find("/u/");
    ASSERT_NE(at, std::string::npos) << header;
    std::string token = header.substr(at + 3, header.size() - at - 4);
    links::Link out;
    EXPECT_EQ(links::token_verify(ring, token, now + 3599, out), links::Verdict::ok);
    EXPECT_EQ(links::token_verify(ring, token, now + 3600, out), links::Verdict::expired);
    p = links::personalize(ring, m, "acme", id, 0, t0);  // sent at once: as stamped
    for (const auto &h : p.headers) {
        if (h.first == "List-Unsubscribe") header = h.second;
    }
    token = header.substr(header.find("/u/") + 3, header.size() - header.find("/u/") - 4);
    EXPECT_EQ(links::token_verify(ring, token, t0 + 3599, out), links::Verdict::ok);
    EXPECT_EQ(links::token_verify(ring, token, t0 + 3600, out), links::Verdict::expired);
}

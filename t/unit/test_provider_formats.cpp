#include <curl/curl.h>
#include <gtest/gtest.h>
#include <jansson.h>

#include <memory>

#include "base64.h"
#include "provider_formats.h"

using mailapi::Message;

namespace {

struct JsonFree {
    void operator()(json_t *j) const { json_decref(j); }
};
using Json = std::unique_ptr<json_t, JsonFree>;

Json parse(const std::string &s) {
    json_error_t err;
    Json j(json_loads(s.c_str(), 0, &err));
    EXPECT_TRUE(j) << err.text << " in " << s;
    return j;
}

std::string get(json_t *o, const char *path) {  // "a.b.c", numbers index arrays
    std::string p = path;
    size_t pos = 0;
    while (o && pos <= p.size()) {
        size_t dot = p.find('.', pos);
        std::string key = p.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
        o = json_is_array(o) ? json_array_get(o, std::stoul(key)) : json_object_get(o, key.c_str());
        if (dot == std::string::npos) break;
        pos = dot + 1;
    }
    const char *s = json_string_value(o);
    return s ? s : "<absent>";
}

size_t count(json_t *o, const char *key) { return json_array_size(json_object_get(o, key)); }

// Each path of `o` holds the string given.
void expect_fields(json_t *o, std::initializer_list<std::pair<const char *, std::string>> fields) {
    for (const auto &f : fields) EXPECT_EQ(get(o, f.first), f.second) << f.first;
}

const std::string ID = "msg_01HZX3K4Q6R8T0V2W4Y6Z8A0B2";

// One of everything: names ASCII and not, cc, bcc, reply-to, headers,
// an attachment, tags, metadata.
Message full_message() {
    Message m;
    m.from = {"sender@example.com", "Shop, Inc."};
    m.to = {{"ann@example.org", "Ann"}, {"bob@example.net", "Björn Ölund"}};
    m.cc = {{"cc@example.org", ""}};
    m.bcc = {{"bcc@example.org", ""}};
    m.has_reply_to = true;
    m.reply_to = {"help@example.com", "Help"};
    m.subject = "Grüße — your order";
    m.text = "Hello\nthere";
    m.html = "<p>Hello</p>";
    m.headers = {{"X-Campaign", "spring"}, {"X-Note", "naïve"}};
    m.attachments = {{"invoice.pdf", "application/pdf", mailapi::base64_encode(std::string("%PDF-1.4\0\x01\xff", 11))}};
    m.tags = {"welcome", "onboarding"};
    m.metadata = {{"order", "A-1001"}, {"note", "two words"}};
    return m;
}

Message minimal_message() {
    Message m;
    m.from = {"sender@example.com", ""};
    m.to = {{"ann@example.org", ""}};
    m.subject = "Hi";
    m.text = "Hello";
    return m;
}

void expect_outcome(const SendOutcome &o, SendResult result, bool provider_fault, int code) {
    EXPECT_EQ(o.result, result) << o.reason;
    EXPECT_EQ(o.provider_fault, provider_fault) << o.reason;
    EXPECT_EQ(o.code, code) << o.reason;
}

}  // namespace

// --- reasons -----------------------------------------------------------------

TEST(SafeReason, AddressesAreReplaced) {
    EXPECT_EQ(safe_reason("Invalid 'From' address: 'sender@example.com' is not verified"),
              "Invalid 'From' address: '<address>' is not verified");
    EXPECT_EQ(safe_reason("to <a.b+c@mail.example.co.uk>, x@y.z and bj\xc3\xb6rn@b\xc3\xbc.de"),
              "to <<address>>, <address> and <address>");
    EXPECT_EQ(safe_reason("x@@example.com, user@ alone, @handle, a @ b, o'brien@x.ie."),
              "<address>, <address> alone, <address>, a @ b, <address>.");
    EXPECT_EQ(safe_reason("no address here"), "no address here");
    // what the message model accepts, as a relay echoes it back
    EXPECT_EQ(safe_reason("550 5.1.1 <\"john smith\"@example.com>: Recipient address rejected"),
              "550 5.1.1 <<address>>: Recipient address rejected");
    EXPECT_EQ(safe_reason("550 <\"a\\\"b.c\"@example.com> unknown"), "550 <<address>> unknown");
    EXPECT_EQ(safe_reason("550 <jane.doe@[192.0.2.7]> and <x@[IPv6:2001:db8::1]>: no"),
              "550 <<address>> and <<address>>: no");
}

TEST(SafeReason, IsAlwaysValidUtf8) {
    EXPECT_EQ(safe_reason("550 Zugriff f\xfcr Sie verweigert"), "550 Zugriff f?r Sie verweigert");  // Latin-1
    EXPECT_EQ(safe_reason("bad \xc3 end"), "bad ? end");                    // a lead byte alone
    EXPECT_EQ(safe_reason("over \xc0\xaf long"), "over ?? long");           // an overlong '/'
    EXPECT_EQ(safe_reason("half \xed\xa0\x80 surrogate"), "half ??? surrogate");
    EXPECT_EQ(safe_reason("ok gr\xc3\xbc\xc3\x9f \xf0\x9d\x84\x9e"), "ok gr\xc3\xbc\xc3\x9f \xf0\x9d\x84\x9e");
    std::string cut(799, 'a');
    cut += "\xc3\xa9";  // the first 800 bytes end inside a character
    std::string r = safe_reason(cut);
    EXPECT_EQ(r.find('\xc3'), std::string::npos);
}

TEST(SafeReason, ControlCharactersAndLength) {
    EXPECT_EQ(safe_reason("line1\r\nline2\ttab"), "line1  line2 tab");
    std::string long_text(150, 'a');
    for (int i = 0; i < 50; i++) long_text += "\xc3\xa9";  // é, 2 bytes each
    std::string r = safe_reason(long_text);
    EXPECT_LE(r.size(), 203u);
    EXPECT_EQ(r.substr(r.size() - 3), "...");
    std::string kept = r.substr(0, r.size() - 3);
    EXPECT_EQ(kept.size() % 2, 0u);  // 150 ASCII + whole é's: never half a character
    std::string huge(1 << 20, 'x');
    huge.replace(100, 15, "who@example.com");
    r = safe_reason(huge);
    EXPECT_LE(r.size(), 203u);
    EXPECT_EQ(r.find("example"), std::string::npos);
}

// --- generic http ---------------------------------------------------------------

TEST(HttpOutcome, ByStatus) {
    expect_outcome(http_outcome(CURLE_OK, 200), SendResult::sent, false, 200);
    expect_outcome(http_outcome(CURLE_OK, 204), SendResult::sent, false, 204);
    expect_outcome(http_outcome(CURLE_OK, 429), SendResult::transient, true, 429);
    expect_outcome(http_outcome(CURLE_OK, 503), SendResult::transient, true, 503);
    expect_outcome(http_outcome(CURLE_OK, 401), SendResult::transient, true, 401);
    expect_outcome(http_outcome(CURLE_OK, 403), SendResult::transient, true, 403);
    expect_outcome(http_outcome(CURLE_OK, 400), SendResult::permanent, false, 400);
    expect_outcome(http_outcome(CURLE_OK, 404), SendResult::permanent, false, 404);
    SendOutcome o = http_outcome(CURLE_OPERATION_TIMEDOUT, 0);
    expect_outcome(o, SendResult::transient, true, 0);
    EXPECT_FALSE(o.reason.empty());
    EXPECT_EQ(http_outcome(CURLE_OK, 401).reason, "http 401: our credentials were refused");
}

// --- SendGrid ---------------------------------------------------------------------

TEST(SendGrid, Body) {
    Json b = parse(sendgrid_body(ID, full_message()));
    json_t *p = json_array_get(json_object_get(b.get(), "personalizations"), 0);
    EXPECT_EQ(json_array_size(json_object_get(p, "to")), 2u);
    EXPECT_EQ(get(p, "to.1.name"), "Björn Ölund");
    EXPECT_EQ(get(p, "cc.0.email"), "cc@example.org");
    EXPECT_EQ(get(p, "bcc.0.email"), "bcc@example.org");
    EXPECT_EQ(get(p, "custom_args.mailapi_id"), ID);
    EXPECT_EQ(get(p, "custom_args.order"), "A-1001");
    EXPECT_EQ(get(b.get(), "from.email"), "sender@example.com");
    EXPECT_EQ(get(b.get(), "reply_to.name"), "Help");
    EXPECT_EQ(get(b.get(), "subject"), "Grüße — your order");
    EXPECT_EQ(get(b.get(), "content.0.type"), "text/plain");
    EXPECT_EQ(get(b.get(), "content.1.value"), "<p>Hello</p>");
    EXPECT_EQ(get(b.get(), "headers.X-Note"), "naïve");
    EXPECT_EQ(get(b.get(), "attachments.0.filename"), "invoice.pdf");
    EXPECT_EQ(get(b.get(), "attachments.0.content"), full_message().attachments[0].content_base64);
    EXPECT_EQ(get(b.get(), "categories.1"), "onboarding");

    Message m = minimal_message();  // a user's metadata cannot replace our id
    m.metadata = {{"mailapi_id", "spoof"}};
    Json spoof = parse(sendgrid_body(ID, m));
    EXPECT_EQ(get(json_array_get(json_object_get(spoof.get(), "personalizations"), 0), "custom_args.mailapi_id"), ID);

    Json min = parse(sendgrid_body(ID, minimal_message()));
    p = json_array_get(json_object_get(min.get(), "personalizations"), 0);
    EXPECT_EQ(json_object_get(p, "cc"), nullptr);
    EXPECT_EQ(json_object_get(min.get(), "reply_to"), nullptr);
    EXPECT_EQ(json_object_get(min.get(), "attachments"), nullptr);
    EXPECT_EQ(count(min.get(), "content"), 1u);
}

TEST(SendGrid, Outcome) {
    expect_outcome(sendgrid_outcome(CURLE_OK, 202, ""), SendResult::sent, false, 202);
    SendOutcome o = sendgrid_outcome(
        CURLE_OK, 400,
        R"({"errors":[{"message":"The to email a@example.com does not contain a valid address.","field":"personalizations.0.to.0.email","help":"http://sendgrid.com"},{"message":"second"}]})");
    expect_outcome(o, SendResult::permanent, false, 400);
    EXPECT_EQ(o.reason, "http 400: The to email <address> does not contain a valid address.");
    o = sendgrid_outcome(CURLE_OK, 401, R"({"errors":[{"message":"The provided authorization grant is invalid"}]})");
    expect_outcome(o, SendResult::transient, true, 401);
    EXPECT_EQ(o.reason, "http 401: The provided authorization grant is invalid");
    expect_outcome(sendgrid_outcome(CURLE_OK, 429, "{}"), SendResult::transient, true, 429);
    expect_outcome(sendgrid_outcome(CURLE_OK, 500, "<html>oops</html>"), SendResult::transient, true, 500);
    EXPECT_EQ(sendgrid_outcome(CURLE_OK, 500, "<html>oops</html>").reason, "http 500");
    EXPECT_EQ(sendgrid_outcome(CURLE_OK, 400, "").reason, "http 400");
    EXPECT_EQ(sendgrid_outcome(CURLE_OK, 400, R"({"errors":[]})").reason, "http 400");
    EXPECT_EQ(sendgrid_outcome(CURLE_OK, 400, R"({"errors":[{"message":7}]})").reason, "http 400");
    std::string huge = R"({"errors":[{"message":")" + std::string(100000, 'x') + "\"}]}";
    EXPECT_LE(sendgrid_outcome(CURLE_OK, 400, huge).reason.size(), 220u);
    expect_outcome(sendgrid_outcome(CURLE_COULDNT_CONNECT, 0, ""), SendResult::transient, true, 0);
}

// --- Mailgun ----------------------------------------------------------------------

TEST(Mailgun, Form) {
    std::vector<FormField> form = mailgun_form(ID, full_message());
    auto all = [&form](const std::string &name) {
        std::vector<std::string> v;
        for (const auto &f : form) {
            if (f.name == name) v.push_back(f.value);
        }
        return v;
    };
    EXPECT_EQ(all("from"), std::vector<std::string>{"\"Shop, Inc.\" <sender@example.com>"});
    std::vector<std::string> to = all("to");
    ASSERT_EQ(to.size(), 2u);
    EXPECT_EQ(to[0], "Ann <ann@example.org>");
    EXPECT_EQ(to[1], "=?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>");  // "Björn Ölund"
    EXPECT_EQ(all("cc"), std::vector<std::string>{"<cc@example.org>"});
    EXPECT_EQ(all("bcc"), std::vector<std::string>{"<bcc@example.org>"});
    EXPECT_EQ(all("subject"), std::vector<std::string>{"Grüße — your order"});  // Mailgun encodes it
    EXPECT_EQ(all("text"), std::vector<std::string>{"Hello\nthere"});
    EXPECT_EQ(all("html"), std::vector<std::string>{"<p>Hello</p>"});
    EXPECT_EQ(all("h:Reply-To"), std::vector<std::string>{"Help <help@example.com>"});
    EXPECT_EQ(all("h:X-Campaign"), std::vector<std::string>{"spring"});
    EXPECT_EQ(all("h:X-Note"), std::vector<std::string>{"=?UTF-8?B?bmHDr3Zl?="});
    EXPECT_EQ(all("h:X-Mailapi-Id"), std::vector<std::string>{ID});
    EXPECT_EQ(all("v:mailapi_id"), std::vector<std::string>{ID});
    EXPECT_EQ(all("v:order"), std::vector<std::string>{"A-1001"});
    EXPECT_EQ(all("o:tag"), (std::vector<std::string>{"welcome", "onboarding"}));
    std::vector<FormField> files;
    for (const auto &f : form) {
        if (!f.filename.empty()) files.push_back(f);
    }
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0].name, "attachment");
    EXPECT_EQ(files[0].filename, "invoice.pdf");
    EXPECT_EQ(files[0].content_type, "application/pdf");
    EXPECT_EQ(files[0].value, std::string("%PDF-1.4\0\x01\xff", 11));  // decoded bytes
}

TEST(Mailgun, TagsWithinMailgunLimits) {
    Message m = minimal_message();
    m.tags = {"a", "ünicode", std::string(129, 't'), "b", "c", "d"};
    std::vector<std::string> tags;
    for (const auto &f : mailgun_form(ID, m)) {
        if (f.name == "o:tag") tags.push_back(f.value);
    }
    EXPECT_EQ(tags, (std::vector<std::string>{"a", "b", "c"}));
    for (const auto &f : mailgun_form(ID, m)) {
        EXPECT_NE(f.name, "cc");
        EXPECT_NE(f.name, "html");
        EXPECT_NE(f.name, "h:Reply-To");
    }
}

TEST(Mailgun, Outcome) {
    expect_outcome(mailgun_outcome(CURLE_OK, 200, R"({"id":"<20240101.1@mg.example.com>","message":"Queued. Thank you."})"),
                   SendResult::sent, false, 200);
    SendOutcome o = mailgun_outcome(CURLE_OK, 400, R"({"message":"to parameter is not a valid address: 'x@@example.com'"})");
    expect_outcome(o, SendResult::permanent, false, 400);
    EXPECT_EQ(o.reason.find("example.com"), std::string::npos) << o.reason;
    o = mailgun_outcome(CURLE_OK, 401, "Forbidden");
    expect_outcome(o, SendResult::transient, true, 401);
    EXPECT_EQ(o.reason, "http 401: our credentials were refused");
    expect_outcome(mailgun_outcome(CURLE_OK, 403, ""), SendResult::transient, true, 403);
    expect_outcome(mailgun_outcome(CURLE_OK, 402, ""), SendResult::transient, true, 402);
    o = mailgun_outcome(CURLE_OK, 404, R"({"message":"Domain not found: mg.example.com"})");
    expect_outcome(o, SendResult::transient, true, 404);
    EXPECT_EQ(o.reason, "http 404: Domain not found: mg.example.com");
    expect_outcome(mailgun_outcome(CURLE_OK, 413, ""), SendResult::transient, false, 413);
    expect_outcome(mailgun_outcome(CURLE_OK, 429, ""), SendResult::transient, true, 429);
    expect_outcome(mailgun_outcome(CURLE_OK, 502, "<html>"), SendResult::transient, true, 502);
    expect_outcome(mailgun_outcome(CURLE_OK, 409, "not json"), SendResult::permanent, false, 409);
    expect_outcome(mailgun_outcome(CURLE_RECV_ERROR, 0, ""), SendResult::transient, true, 0);
}

// --- Postmark ----------------------------------------------------------------------

TEST(Postmark, Body) {
    Json b = parse(postmark_body(ID, full_message(), "outbound"));
    json_t *o = b.get();
    expect_fields(o, {
        {"From", "\"Shop, Inc.\" <sender@example.com>"},
        {"To", "Ann <ann@example.org>, =?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>"},
        {"Cc", "<cc@example.org>"},
        {"Bcc", "<bcc@example.org>"},
        {"Subject", "Grüße — your order"},
        {"TextBody", "Hello\nthere"},
        {"HtmlBody", "<p>Hello</p>"},
        {"ReplyTo", "Help <help@example.com>"},
    });
    ASSERT_EQ(count(o, "Headers"), 3u);
    expect_fields(o, {
        {"Headers.0.Name", "X-Campaign"},
        {"Headers.1.Value", "=?UTF-8?B?bmHDr3Zl?="},
        {"Headers.2.Name", "X-Mailapi-Id"},
        {"Headers.2.Value", ID},
        {"Attachments.0.Name", "invoice.pdf"},
        {"Attachments.0.Content", full_message().attachments[0].content_base64},
        {"Attachments.0.ContentType", "application/pdf"},
        {"Tag", "welcome"},
        {"Metadata.mailapi_id", ID},
        {"Metadata.order", "A-1001"},
        {"MessageStream", "outbound"},
    });

    Message m = minimal_message();
    m.metadata = {{"MailApi_ID", "spoof"}, {"k", "1"}, {"K", "2"}};
    Json min = parse(postmark_body(ID, m, ""));
    for (const char *absent : {"Cc", "Bcc", "HtmlBody", "ReplyTo", "Attachments", "Tag", "MessageStream"}) {
        EXPECT_EQ(json_object_get(min.get(), absent), nullptr) << absent;
    }
    json_t *meta = json_object_get(min.get(), "Metadata");
    EXPECT_EQ(json_object_size(meta), 2u);  // keys differing only in case are refused by Postmark
    EXPECT_EQ(get(meta, "mailapi_id"), ID);
    EXPECT_EQ(get(meta, "k"), "1");
}

TEST(Postmark, Outcome) {
    expect_outcome(postmark_outcome(CURLE_OK, 200,
                                    R"({"To":"a@example.org","SubmittedAt":"2024-01-01T00:00:00Z","MessageID":"b7bc2f4a","ErrorCode":0,"Message":"OK"})"),
                   SendResult::sent, false, 200);
    auto pm = [](long status, int code, const char *message = "m") {
        return postmark_outcome(CURLE_OK, status,
                                "{\"ErrorCode\":" + std::to_string(code) + ",\"Message\":\"" + message + "\"}");
    };
    SendOutcome o = pm(422, 300, "Invalid 'To' address: 'x@example.org'.");
    expect_outcome(o, SendResult::permanent, false, 422);
    EXPECT_EQ(o.reason, "http 422, ErrorCode 300: Invalid 'To' address: '<address>'.");
    expect_outcome(pm(422, 406), SendResult::permanent, false, 422);
    expect_outcome(pm(422, 411), SendResult::permanent, false, 422);
    for (int code : {10, 100, 405, 412, 413}) expect_outcome(pm(422, code), SendResult::transient, true, 422);
    expect_outcome(pm(401, 10), SendResult::transient, true, 401);
    expect_outcome(pm(429, 429), SendResult::transient, true, 429);
    for (int code : {400, 401, 402, 403, 409}) expect_outcome(pm(422, code), SendResult::transient, false, 422);
    expect_outcome(pm(422, 9999), SendResult::permanent, false, 422);  // unknown code: by status
    expect_outcome(pm(200, 300), SendResult::permanent, false, 200);   // 200 that still says no
    // No ErrorCode at all: by status.
    expect_outcome(postmark_outcome(CURLE_OK, 401, ""), SendResult::transient, true, 401);
    expect_outcome(postmark_outcome(CURLE_OK, 403, "<html><h1>403 Forbidden</h1></html>"), SendResult::transient, true,
                   403);
    expect_outcome(postmark_outcome(CURLE_OK, 413, ""), SendResult::transient, false, 413);
    expect_outcome(postmark_outcome(CURLE_OK, 500, "not json"), SendResult::transient, true, 500);
    expect_outcome(postmark_outcome(CURLE_OK, 404, R"({"ErrorCode":"x"})"), SendResult::permanent, false, 404);
    expect_outcome(postmark_outcome(CURLE_OK, 200, "not json"), SendResult::sent, false, 200);
    expect_outcome(postmark_outcome(CURLE_SSL_CONNECT_ERROR, 0, ""), SendResult::transient, true, 0);
    std::string huge = R"({"ErrorCode":300,"Message":")" + std::string(70000, 'y') + "\"}";
    EXPECT_LE(postmark_outcome(CURLE_OK, 422, huge).reason.size(), 240u);
}

// --- SES --------------------------------------------------------------------------

TEST(Ses, Body) {
    std::string body, error;
    Message m = full_message();
    m.metadata.push_back({"tenant_ref", "t-42"});
    ASSERT_TRUE(ses_body(ID, m, "transactional", body, error)) << error;
    Json b = parse(body);
    json_t *o = b.get();
    expect_fields(o, {
        {"FromEmailAddress", "\"Shop, Inc.\" <sender@example.com>"},
        {"Destination.ToAddresses.1", "=?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>"},
        {"Destination.CcAddresses.0", "<cc@example.org>"},
        {"Destination.BccAddresses.0", "<bcc@example.org>"},
        {"ReplyToAddresses.0", "Help <help@example.com>"},
        {"Content.Simple.Subject.Data", "Grüße — your order"},
        {"Content.Simple.Subject.Charset", "UTF-8"},
        {"Content.Simple.Body.Text.Data", "Hello\nthere"},
        {"Content.Simple.Body.Html.Data", "<p>Hello</p>"},
        {"Content.Simple.Headers.1.Value", "=?UTF-8?B?bmHDr3Zl?="},  // printable ASCII only
        {"Content.Simple.Headers.2.Name", "X-Mailapi-Id"},
        {"Content.Simple.Headers.2.Value", ID},
        {"Content.Simple.Attachments.0.FileName", "invoice.pdf"},
        {"Content.Simple.Attachments.0.ContentType", "application/pdf"},
        {"Content.Simple.Attachments.0.RawContent", m.attachments[0].content_base64},
        {"Content.Simple.Attachments.0.ContentDisposition", "ATTACHMENT"},
    });
    // Tags: our id, and the metadata whose name and value fit [A-Za-z0-9_-]
    // ("note" = "two words" does not).
    ASSERT_EQ(count(o, "EmailTags"), 3u);
    expect_fields(o, {
        {"EmailTags.0.Name", "mailapi_id"},
        {"EmailTags.0.Value", ID},
        {"EmailTags.1.Name", "order"},
        {"EmailTags.2.Name", "tenant_ref"},
        {"ConfigurationSetName", "transactional"},
    });

    ASSERT_TRUE(ses_body(ID, minimal_message(), "", body, error));
    Json min = parse(body);
    EXPECT_EQ(json_object_get(min.get(), "ConfigurationSetName"), nullptr);
    EXPECT_EQ(json_object_get(min.get(), "ReplyToAddresses"), nullptr);
    EXPECT_EQ(json_object_get(json_object_get(min.get(), "Destination"), "CcAddresses"), nullptr);
    EXPECT_EQ(get(min.get(), "Content.Simple.Body.Html.Data"), "<absent>");
    EXPECT_EQ(get(min.get(), "FromEmailAddress"), "<sender@example.com>");
}

TEST(Ses, WhatSimpleContentCannotCarry) {
    std::string body, error;
    Message m = minimal_message();
    for (size_t i = 0; i < SES_MAX_CUSTOM_HEADERS; i++) m.headers.push_back({"X-H" + std::to_string(i), "v"});
    EXPECT_TRUE(ses_body(ID, m, "", body, error));
    m.headers.push_back({"X-One-Too-Many", "v"});
    EXPECT_FALSE(ses_body(ID, m, "", body, error));
    EXPECT_FALSE(error.empty());
    m = minimal_message();
    m.headers = {{"X-Long", std::string(900, 'a')}};
    EXPECT_FALSE(ses_body(ID, m, "", body, error));
}

TEST(Ses, Outcome) {
    expect_outcome(ses_outcome(CURLE_OK, 200, "", R"({"MessageId":"0100018c-abc"})"), SendResult::sent, false, 200);
    SendOutcome o = ses_outcome(CURLE_OK, 400, "MessageRejected:http://internal.amazon.com/coral/com.amazonaws.sesv2/",
                                R"({"message":"Email address is not verified: someone@example.com"})");
    expect_outcome(o, SendResult::permanent, false, 400);
    EXPECT_EQ(o.reason, "http 400, MessageRejected: Email address is not verified: <address>");
    o = ses_outcome(CURLE_OK, 400, "", R"({"__type":"com.amazonaws.sesv2#BadRequestException","Message":"Missing"})");
    expect_outcome(o, SendResult::permanent, false, 400);
    EXPECT_EQ(o.reason, "http 400, BadRequestException: Missing");
    for (const char *type : {"AccountSuspendedException", "SendingPausedException",
                             "MailFromDomainNotVerifiedException", "NotFoundException", "LimitExceededException"}) {
        expect_outcome(ses_outcome(CURLE_OK, 400, type, "{}"), SendResult::transient, true, 400);
    }
    expect_outcome(ses_outcome(CURLE_OK, 429, "TooManyRequestsException", ""), SendResult::transient, true, 429);
    expect_outcome(ses_outcome(CURLE_OK, 403, "InvalidSignatureException", R"({"message":"Signature expired"})"),
                   SendResult::transient, true, 403);
    expect_outcome(ses_outcome(CURLE_OK, 403, "UnrecognizedClientException", ""), SendResult::transient, true, 403);
    expect_outcome(ses_outcome(CURLE_OK, 403, "", "<html>"), SendResult::transient, true, 403);  // no type
    expect_outcome(ses_outcome(CURLE_OK, 500, "", ""), SendResult::transient, true, 500);
    expect_outcome(ses_outcome(CURLE_OK, 503, "ServiceUnavailable", ""), SendResult::transient, true, 503);
    expect_outcome(ses_outcome(CURLE_OK, 400, "", "not json"), SendResult::permanent, false, 400);
    expect_outcome(ses_outcome(CURLE_OK, 400, "SomethingNew", "{}"), SendResult::permanent, false, 400);
    expect_outcome(ses_outcome(CURLE_OK, 413, "", ""), SendResult::transient, false, 413);
    expect_outcome(ses_outcome(CURLE_COULDNT_RESOLVE_HOST, 0, "", ""), SendResult::transient, true, 0);
    std::string huge = R"({"message":")" + std::string(70000, 'z') + "\"}";
    EXPECT_LE(ses_outcome(CURLE_OK, 400, "MessageRejected", huge).reason.size(), 260u);
}

TEST(Ses, SigningRequest) {
    SigV4Request r;
    ASSERT_TRUE(ses_signing_request(ses_default_url("eu-west-1"), "{}", r));
    EXPECT_EQ(r.method, "POST");
    EXPECT_EQ(r.host, "email.eu-west-1.amazonaws.com");
    EXPECT_EQ(r.path, "/v2/email/outbound-emails");
    EXPECT_EQ(r.payload, "{}");
    ASSERT_EQ(r.headers.size(), 1u);
    EXPECT_EQ(r.headers[0].second, "application/json");
    ASSERT_TRUE(ses_signing_request("http://127.0.0.1:8125", "", r));
    EXPECT_EQ(r.host, "127.0.0.1:8125");  // curl's Host carries a port other than the scheme's
    ASSERT_TRUE(ses_signing_request("https://vpce.example.com:443/prefix/", "", r));
    EXPECT_EQ(r.host, "vpce.example.com");
    EXPECT_EQ(r.path, "/prefix/v2/email/outbound-emails");
    EXPECT_FALSE(ses_signing_request("not a url", "", r));
}

TEST(Outcomes, AnyAnswerBodyGivesAShortReason) {
    // Bodies as a broken or hostile endpoint might send them: truncated JSON,
    // wrong types, deep nesting, NULs, invalid UTF-8.
    std::vector<std::string> bodies = {"", "{", "[]", "null", "\"x\"", R"({"errors":{}})", R"({"errors":[null]})",
                                       R"({"message":null})", R"({"ErrorCode":1e400})", R"({"__type":""})",
                                       std::string("{\"message\":\"a\0b\"}", 16), "{\"message\":\"\xff\xfe\"}",
                                       std::string(10000, '[') + std::string(10000, ']')};
    unsigned seed = 7;
    for (int i = 0; i < 200; i++) {
        std::string junk;
        for (int n = 0; n < 64; n++) junk.push_back(static_cast<char>((seed = seed * 1103515245 + 12345) >> 16));
        bodies.push_back(junk);
    }
    for (const auto &b : bodies) {
        for (long status : {200L, 400L, 401L, 422L, 500L}) {
            for (const SendOutcome &o : {sendgrid_outcome(CURLE_OK, status, b), mailgun_outcome(CURLE_OK, status, b),
                                         postmark_outcome(CURLE_OK, status, b),
                                         ses_outcome(CURLE_OK, status, b.substr(0, 40), b)}) {
                EXPECT_LE(o.reason.size(), 420u);
                EXPECT_EQ(o.reason.find('\n'), std::string::npos);
            }
        }
    }
}

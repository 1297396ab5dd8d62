#include <gtest/gtest.h>

#include <random>

#include "base64.h"
#include "mime.h"

using namespace mailapi;

namespace {

// An unfolded value decoded as RFC 2047 readers do: encoded words decoded,
// whitespace between two adjacent encoded words dropped.
std::string decode_2047(const std::string &v) {
    std::string out, pending_ws;
    bool last_encoded = false;
    size_t i = 0;
    while (i < v.size()) {
        size_t ws = i;
        while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) i++;
        std::string space = v.substr(ws, i - ws);
        size_t start = i;
        while (i < v.size() && v[i] != ' ' && v[i] != '\t') i++;
        std::string word = v.substr(start, i - start);
        bool encoded = word.size() > 12 && word.compare(0, 8, "=?UTF-8?") == 0 && word.compare(word.size() - 2, 2, "?=") == 0;
        if (!(encoded && last_encoded)) out += space;
        if (!encoded) {
            out += word;
        } else if (word[8] == 'B') {
            std::string bytes;
            EXPECT_TRUE(base64_decode(word.substr(10, word.size() - 12), bytes)) << word;
            out += bytes;
        } else {
            for (size_t k = 10; k < word.size() - 2; k++) {
                if (word[k] == '_') out += ' ';
                else if (word[k] == '=') {
                    out += static_cast<char>(std::stoi(word.substr(k + 1, 2), nullptr, 16));
                    k += 2;
                } else out += word[k];
            }
        }
        last_encoded = encoded;
    }
    return out;
}

// A field's lines, each checked against 78 (soft) or 998 (hard).
std::vector<std::string> lines_of(const std::string &field) {
    std::vector<std::string> lines;
    EXPECT_EQ(field.substr(field.size() - 2), "\r\n");
    size_t start = 0;
    for (size_t nl; (nl = field.find("\r\n", start)) != std::string::npos; start = nl + 2) {
        lines.push_back(field.substr(start, nl - start));
        EXPECT_EQ(lines.back().find_first_of("\r\n"), std::string::npos);
    }
    EXPECT_EQ(start, field.size());
    return lines;
}

std::string unfold(const std::string &field) {
    std::string v;
    for (const std::string &l : lines_of(field)) v += l;
    return v.substr(v.find(':') + 2);
}

}  // namespace

TEST(Mime, AsciiStaysPlain) {
    EXPECT_EQ(mime_header_text("Hello, world"), "Hello, world");
    EXPECT_EQ(mime_header_text("a\tb"), "a\tb");  // a tab is whitespace, kept
    EXPECT_EQ(mime_address({"a@example.com", ""}), "<a@example.com>");
    EXPECT_EQ(mime_address({"a@example.com", "Ann \"A\" B"}), "\"Ann \\\"A\\\" B\" <a@example.com>");
    EXPECT_EQ(mime_address({"a@example.com", "Ann Bee"}), "Ann Bee <a@example.com>");
    EXPECT_EQ(mime_field_unstructured("Subject", "Hello"), "Subject: Hello\r\n");
}

// A display name that looks like an encoded word is not quoted (readers
// decode encoded words inside quotes: "=?UTF-8?B?UGF5UGFs?=" would show as
// "PayPal"): it is encoded itself.
TEST(Mime, ADisplayNameThatLooksEncodedIsEncoded) {
    for (std::string name : {"=?UTF-8?B?UGF5UGFs?=", "Ann =?utf-8?q?B?= C", "a, =?x?="}) {
        std::string a = mime_address({"a@example.com", name});
        ASSERT_EQ(a.substr(a.size() - 16), " <a@example.com>") << a;
        std::string shown = a.substr(0, a.size() - 16);
        EXPECT_EQ(shown.find('"'), std::string::npos) << a;
        EXPECT_EQ(decode_2047(shown), name) << a;
    }
}

TEST(Mime, OnlyWordsThatNeedItAreEncoded) {
    std::string v = mime_header_text("Grüße aus Köln");
    EXPECT_EQ(decode_2047(v), "Grüße aus Köln");
    EXPECT_NE(v.find(" aus "), std::string::npos) << v;  // the ASCII word between stays readable
    EXPECT_EQ(decode_2047(mime_header_text("Grüße Köln")), "Grüße Köln");  // adjacent: one run, space inside
    EXPECT_EQ(mime_header_text("=?x?="), "=?UTF-8?B?PT94Pz0=?=");  // looks like an encoded word
    EXPECT_EQ(decode_2047(mime_header_text("  leading and trailing  ")), "  leading and trailing  ");
    EXPECT_EQ(decode_2047(mime_header_text("   ")), "   ");
}

TEST(Mime, FieldsFoldAt78AndNeverPass998) {
    std::string subject;
    for (int i = 0; i < 30; i++) subject += "Grüße ";
    subject += std::string(200, 'y') + " tail";
    std::string f = mime_field_unstructured("Subject", subject);
    for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 200u + 1) << l;
    EXPECT_EQ(decode_2047(unfold(f)), subject);

    std::string words;
    for (int i = 0; i < 120; i++) words += "word" + std::to_string(i) + " ";
    words.pop_back();
    f = mime_field_unstructured("Subject", words);
    for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 78u) << l;
    EXPECT_EQ(unfold(f), words);  // plain ASCII: folded, never encoded

    std::string one_word(998, 'x');  // "Subject: " + 998 would be 1007
    f = mime_field_unstructured("Subject", one_word);
    for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 998u);
    EXPECT_EQ(decode_2047(unfold(f)), one_word);
}

// A caller's header (not encoded: it may be structured, e.g. a long
// List-Unsubscribe URL) whose one word fits the value's 998 bytes but not
// the first line after its name: folded right after the colon.
TEST(Mime, ALongWordInACallersHeaderGoesOnItsOwnLine) {
    for (size_t name_len : {3u, 16u, 76u}) {
        std::string name = "X-" + std::string(name_len - 2, 'n');
        for (size_t word_len : {900u, 994u, 997u}) {
            std::string word = "<https://example.com/u/" + std::string(word_len - 24, 'u') + ">";
            std::string f = mime_field_unstructured(name, word, false);
            for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 998u) << name_len << " " << word_len;
            EXPECT_EQ(unfold(f), word);
            EXPECT_EQ(f.find("=?"), std::string::npos);  // as it is, not encoded
        }
    }
    // 998 bytes without a space fit no line (a fold puts one before them):
    // encoded words, the only way left
    std::string f = mime_field_unstructured("X-A", std::string(998, 'w'), false);
    for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 998u);
    EXPECT_EQ(decode_2047(unfold(f)), std::string(998, 'w'));

    std::string word(997, 'w');
    EXPECT_EQ(mime_header_text(word), word);  // one line for the hosted providers, not encoded
    EXPECT_EQ(mime_header_text("a " + std::string(996, 'w')), "a " + std::string(996, 'w'));
}

TEST(Mime, RandomTextRoundTrips) {
    std::mt19937 rng(7);
    const char *pieces[] = {"a", "Z", " ", "  ", "\t", "ü", "€", "𝄞", "=?", "?=", "_", "=", "\"", "long-word-without-breaks-"};
    for (int n = 0; n < 500; n++) {
        std::string s;
        int len = static_cast<int>(rng() % 120);
        for (int i = 0; i < len; i++) s += pieces[rng() % (sizeof pieces / sizeof *pieces)];
        if (s.empty()) continue;
        std::string f = mime_field_unstructured("X-Test", s);
        for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 998u);
        EXPECT_EQ(decode_2047(unfold(f)), s) << f;
    }
}

TEST(Mime, AddressListsFoldBetweenAddressesWithALabels) {
    std::vector<Address> list;
    for (int i = 0; i < 12; i++) list.push_back({"user" + std::to_string(i) + "@bücher.example", i % 2 ? "Zoë Ärger" : ""});
    std::string f = mime_field_addresses("To", list, false);
    for (const std::string &l : lines_of(f)) EXPECT_LE(l.size(), 78u) << l;
    EXPECT_NE(f.find("user0@xn--bcher-kva.example,"), std::string::npos) << f;
    EXPECT_EQ(f.find("bücher"), std::string::npos);
    EXPECT_EQ(mime_address({"zoë@exämple.com", ""}), "<zoë@xn--exmple-cua.com>");  // the local part needs SMTPUTF8
}

TEST(Mime, QuotedPrintableKeepsLineBreaksAndLimits) {
    std::string qp = mime_quoted_printable(mime_crlf("a = b\nlängere Zeile \n.dot\nFrom here\n" + std::string(200, 'x')));
    EXPECT_EQ(qp.substr(0, 7), "a =3D b");
    EXPECT_NE(qp.find("l=C3=A4ngere Zeile=20\r\n"), std::string::npos) << qp;  // trailing space encoded
    EXPECT_NE(qp.find("\r\n=2Edot\r\n=46rom here\r\n"), std::string::npos) << qp;
    size_t start = 0;
    for (size_t nl; (nl = qp.find("\r\n", start)) != std::string::npos; start = nl + 2) EXPECT_LE(nl - start, 76u);
    EXPECT_LE(qp.size() - start, 76u);
    EXPECT_EQ(mime_crlf("a\rb\nc\r\nd"), "a\r\nb\r\nc\r\nd");
}

// A soft break begins a line too: "From " or "." there is encoded as well
// (an mbox on the way writes ">From ", and the DKIM body hash breaks).
TEST(Mime, QuotedPrintableEncodesFromAndDotAfterASoftBreak) {
    for (size_t before : {73u, 74u, 75u, 76u, 150u}) {
        for (const char *start : {"From here", ".dot"}) {
            std::string qp = mime_quoted_printable(std::string(before, 'a') + start + "\r\nend");
            size_t pos = 0;
            for (size_t nl; (nl = qp.find("\r\n", pos)) != std::string::npos; pos = nl + 2) {
                EXPECT_NE(qp.compare(nl + 2, 5, "From "), 0) << before << ": " << qp;
                EXPECT_NE(qp[nl + 2], '.') << before << ": " << qp;
                EXPECT_LE(nl - pos, 76u);
            }
        }
    }
}

TEST(Mime, ComposedMessageIsSevenBitWithShortLines) {
    Message m;
    m.from = {"news@bücher.example", "Zoë Ärger"};
    m.to = {{"a@example.org", ""}};
    m.subject = std::string(998, 's');
    m.text = "Hallo\nZeile zwei";
    m.html = "<p>" + std::string(3000, 'h') + "</p>";
    m.headers = {{"X-Campaign", "Herbst ünd Winter"}};
    m.attachments.push_back({"Bericht für 2026 — sehr lang " + std::string(60, 'n') + ".csv", "text/csv",
                             base64_encode(std::string(1000, 'z')), 1000, false});
    ComposeOptions o;
    o.message_id = "<msg_1@mailapi.test>";
    o.date = 1800000000;
    o.boundary_seed = "msg_1";
    std::string mail = mime_compose(m, o);
    size_t start = 0;
    for (size_t nl; (nl = mail.find("\r\n", start)) != std::string::npos; start = nl + 2) {
        EXPECT_LE(nl - start, 998u);
        for (size_t k = start; k < nl; k++) {
            EXPECT_TRUE(mail[k] != '\r' && mail[k] != '\n' && static_cast<unsigned char>(mail[k]) < 0x80);
        }
    }
    EXPECT_NE(mail.find("Content-Type: multipart/mixed"), std::string::npos);
    EXPECT_NE(mail.find("Content-Type: multipart/alternative"), std::string::npos);
    EXPECT_NE(mail.find("filename*0*=utf-8''Bericht%20f%C3%BCr"), std::string::npos) << mail;
    EXPECT_NE(mail.find("Hallo\r\nZeile zwei"), std::string::npos);
    EXPECT_NE(mail.find("Message-ID: <msg_1@mailapi.test>\r\n"), std::string::npos);
    EXPECT_FALSE(message_needs_smtputf8(m));
    m.to.push_back({"ålice@example.net", ""});
    EXPECT_TRUE(message_needs_smtputf8(m));
}

// multipart/* and message/* may not be base64 (RFC 2045 6.4, RFC 2046
// 5.2.1): an attachment given such a type goes as application/octet-stream,
// or readers see a multipart without a boundary, or base64 as a header.
TEST(Mime, AnAttachmentOfAMultipartOrMessageTypeGoesAsBytes) {
    for (const char *type : {"multipart/mixed", "Multipart/Related", "message/rfc822", "MESSAGE/partial"}) {
        Message m;
        m.from = {"a@example.com", ""};
        m.to = {{"b@example.org", ""}};
        m.subject = "s";
        m.text = "t";
        m.attachments.push_back({"fwd.eml", type, base64_encode("From: x@y.z\r\n\r\nhi\r\n"), 20, false});
        ComposeOptions o;
        o.message_id = "<id@example.com>";
        o.boundary_seed = "id";
        std::string mail = mime_compose(m, o);
        EXPECT_NE(mail.find("Content-Type: application/octet-stream;\r\n name=\"fwd.eml\""), std::string::npos) << mail;
        EXPECT_EQ(mail.find(std::string("Content-Type: ") + type + ";\r\n name="), std::string::npos) << mail;
    }
    Message m;
    m.attachments.push_back({"a.csv", "text/csv", "", 0, false});
    m.text = "t";
    ComposeOptions o;
    EXPECT_NE(mime_compose(m, o).find("Content-Type: text/csv;"), std::string::npos);
}

TEST(Mime, Date) {
    EXPECT_EQ(rfc5322_date(1800000000), "Fri, 15 Jan 2027 08:00:00 +0000");
}

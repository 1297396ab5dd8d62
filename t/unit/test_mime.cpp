#include <gtest/gtest.h>

#include "base64.h"
#include "mime.h"

using namespace mailapi;

TEST(Mime, AsciiStaysPlain) {
    EXPECT_EQ(mime_header_text("Hello, world"), "Hello, world");
    EXPECT_EQ(mime_address({"a@example.com", ""}), "<a@example.com>");
    EXPECT_EQ(mime_address({"a@example.com", "Ann \"A\" B"}), "\"Ann \\\"A\\\" B\" <a@example.com>");
}

TEST(Mime, NonAsciiIsEncodedAndFolded) {
    std::string subject;
    for (int i = 0; i < 30; i++) subject += "Grüße ";
    std::string enc = mime_header_text(subject);
    std::string decoded;
    size_t pos = 0;
    while ((pos = enc.find("=?UTF-8?B?", pos)) != std::string::npos) {
        size_t end = enc.find("?=", pos + 10);
        ASSERT_NE(end, std::string::npos);
        std::string part;
        ASSERT_TRUE(base64_decode(enc.substr(pos + 10, end - pos - 10), part));
        decoded += part;
        pos = end + 2;
    }
    EXPECT_EQ(decoded, subject);
    size_t line_start = 0;
    for (size_t nl = enc.find("\r\n"); ; nl = enc.find("\r\n", line_start)) {
        size_t len = (nl == std::string::npos ? enc.size() : nl) - line_start;
        EXPECT_LE(len, 76u);
        if (nl == std::string::npos) break;
        line_start = nl + 2;
    }
    EXPECT_EQ(mime_header_text("=?x?="), "=?UTF-8?B?PT94Pz0=?=");  // looks like an encoded word
    EXPECT_EQ(mime_header_text("a\tb").rfind("=?UTF-8?B?", 0), 0u);
}

TEST(Mime, Date) {
    EXPECT_EQ(rfc5322_date(1800000000), "Fri, 15 Jan 2027 08:00:00 +0000");
}

#include <gtest/gtest.h>

#include "base64.h"

using namespace mailapi;

TEST(Base64, RoundTripsAllLengths) {
    std::string data;
    for (int n = 0; n < 70; n++) {
        std::string out;
        ASSERT_TRUE(base64_decode(base64_encode(data), out));
        EXPECT_EQ(out, data);
        ASSERT_TRUE(base64url_decode(base64url_encode(data), out));
        EXPECT_EQ(out, data);
        data.push_back(static_cast<char>(n * 37 + 250));
    }
}

TEST(Base64, KnownVectors) {
    EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
    EXPECT_EQ(base64_encode("fo"), "Zm8=");
    EXPECT_EQ(base64url_encode("\xfb\xff"), "-_8");
}

TEST(Base64, RejectsJunk) {
    std::string out;
    EXPECT_FALSE(base64_decode("Zm9", out));        // bad length
    EXPECT_FALSE(base64_decode("Zm9v YmFy", out));  // whitespace
    EXPECT_FALSE(base64_decode("Zm=v", out));       // padding in the middle
    EXPECT_FALSE(base64_decode("Z-8=", out));       // url alphabet in standard
    EXPECT_FALSE(base64url_decode("Zm8=", out));    // padded url form
    EXPECT_FALSE(base64url_decode("+_8", out));     // standard alphabet in url form
    EXPECT_FALSE(base64url_decode("-_9", out));     // non-canonical trailing bits
    EXPECT_FALSE(base64url_decode("A", out));
    EXPECT_FALSE(base64url_decode("Zh", out));      // non-canonical: one byte with bits to spare
    EXPECT_FALSE(base64url_decode("Zm9v!m9v", out)); // a character outside the alphabet mid-way
    EXPECT_TRUE(base64url_decode("Zg", out) && out == "f");
    EXPECT_FALSE(base64_decode("ovv=", out));       // non-canonical trailing bits (found by fuzz_token)
    EXPECT_FALSE(base64_decode("Zm9=", out));
    EXPECT_TRUE(base64_decode("Zm8=", out));
}

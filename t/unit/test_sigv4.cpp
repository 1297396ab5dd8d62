// SigV4 against AWS's published signature test suite (aws-sig-v4-test-suite,
// 2015-08-30: credentials AKIDEXAMPLE, region us-east-1, service "service"),
// expected Authorization values as the suite and the AWS SDKs' copies of it
// give them.
#include <gtest/gtest.h>

#include "sigv4.h"

namespace {

const time_t SUITE_TIME = 1440938160;  // 20150830T123600Z
const char *const SUITE_TOKEN =
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwt"
    "hAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHN"
    "VXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLx"
    "BA==";

SigV4Credentials suite_credentials() {
    return {"us-east-1", "service", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
}

SigV4Request suite_request(const char *method, const char *path = "/") {
    SigV4Request r;
    r.method = method;
    r.host = "example.amazonaws.com";
    r.path = path;
    return r;
}

std::string authorization(const SigV4Request &r, const SigV4Credentials &c = suite_credentials()) {
    std::vector<std::string> lines = sigv4_headers(r, c, SUITE_TIME);
    for (const auto &l : lines) {
        if (l.rfind("Authorization: ", 0) == 0) return l.substr(15);
    }
    return "";
}

std::string expected(const char *signed_headers, const char *signature) {
    return std::string("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=") +
           signed_headers + ", Signature=" + signature;
}

}  // namespace

TEST(SigV4, AmzDate) { EXPECT_EQ(sigv4_amz_date(SUITE_TIME), "20150830T123600Z"); }

TEST(SigV4, GetVanilla) {
    SigV4Request r = suite_request("GET");
    EXPECT_EQ(sigv4_canonical_request(r, "20150830T123600Z", ""),
              "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
              "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"));
    std::vector<std::string> lines = sigv4_headers(r, suite_credentials(), SUITE_TIME);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[1], "X-Amz-Date: 20150830T123600Z");
}

TEST(SigV4, QueryIsSortedAndEncoded) {
    SigV4Request r = suite_request("GET");
    r.query = {{"Param2", "value2"}, {"Param1", "value1"}};
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));

    r.query = {{"-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}};
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"));

    r.query = {{"\xe1\x88\xb4", "bar"}};  // get-vanilla-utf8-query
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"));
}

TEST(SigV4, PathIsEncoded) {
    EXPECT_EQ(authorization(suite_request("GET", "/\xe1\x88\xb4")),  // get-utf8
              expected("host;x-amz-date", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"));
    EXPECT_EQ(authorization(suite_request("GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")),
              expected("host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"));
}

TEST(SigV4, HeadersAreLowercasedSortedTrimmedAndJoined) {
    SigV4Request r = suite_request("GET");
    r.headers = {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}};  // key-duplicate
    EXPECT_EQ(authorization(r), expected("host;my-header1;x-amz-date",
                                         "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"));
    r.headers = {{"My-Header1", "value4,value1,value3,value2"}};  // value-order: kept as sent
    EXPECT_EQ(authorization(r), expected("host;my-header1;x-amz-date",
                                         "08c7e5a9acfcfeb3ab6b2185e75ce8b1deb5e634ec47601a50643f830c755c01"));
    r.headers = {{"My-Header1", " value1"}, {"My-Header2", "\"a   b   c\""}};  // value-trim
    EXPECT_EQ(authorization(r), expected("host;my-header1;my-header2;x-amz-date",
                                         "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"));
}

TEST(SigV4, Post) {
    SigV4Request r = suite_request("POST");
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"));
    r.headers = {{"My-Header1", "value1"}};
    EXPECT_EQ(authorization(r), expected("host;my-header1;x-amz-date",
                                         "c5410059b04c1ee005303aed430f6e6645f61f4dc9e1461ec8f8916fdf18852c"));
    r.headers = {{"My-Header1", "VALUE1"}};  // values keep their case
    EXPECT_EQ(authorization(r), expected("host;my-header1;x-amz-date",
                                         "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d"));
    r.headers.clear();
    r.query = {{"Param1", "value1"}};
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"));
    r.query = {{"@#$%^", ""}, {"+", "/,?><`\";:\\|][{}"}};  // post-vanilla-query-nonunreserved
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "66c82657c86e26fb25238d0e69f011edc4c6df5ae71119d7cb98ed9b87393c1e"));
    r.query = {{"p", ""}};
    EXPECT_EQ(authorization(r),
              expected("host;x-amz-date", "e71688addb58a26418614085fb730ba3faa623b461c17f48f2fbdb9361b94a9b"));
}

TEST(SigV4, PostWithBody) {
    SigV4Request r = suite_request("POST");
    r.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
    r.payload = "Param1=value1";
    EXPECT_EQ(authorization(r), expected("content-type;host;x-amz-date",
                                         "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"));
    r.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf8"}};
    EXPECT_EQ(authorization(r), expected("content-type;host;x-amz-date",
                                         "1a72ec8f64bd914b0e42e42607c7fbce7fb2c7465f63e3092b3b0d39fa77a6fe"));
}

TEST(SigV4, SessionTokenIsSigned) {  // post-sts-header-before
    SigV4Credentials c = suite_credentials();
    c.session_token = SUITE_TOKEN;
    SigV4Request r = suite_request("POST");
    EXPECT_EQ(authorization(r, c), expected("host;x-amz-date;x-amz-security-token",
                                            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"));
    std::vector<std::string> lines = sigv4_headers(r, c, SUITE_TIME);
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[2], std::string("X-Amz-Security-Token: ") + SUITE_TOKEN);
}

TEST(SigV4, ContentSha256Header) {
    SigV4Request r = suite_request("POST");
    r.payload = "{}";
    r.content_sha256_header = true;
    std::string names;
    std::string canonical = sigv4_canonical_request(r, "20150830T123600Z", "", &names);
    EXPECT_EQ(names, "host;x-amz-content-sha256;x-amz-date");
    const std::string hash = "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";  // sha256("{}")
    EXPECT_NE(canonical.find("x-amz-content-sha256:" + hash + "\n"), std::string::npos);
    std::vector<std::string> lines = sigv4_headers(r, suite_credentials(), SUITE_TIME);
    ASSERT_EQ(lines.size(), 3u);
    EXPECT_EQ(lines[2], "X-Amz-Content-Sha256: " + hash);
}

TEST(SigV4, ScopeCarriesRegionAndService) {
    SigV4Credentials c{"eu-west-1", "ses", "AKID", "secret", ""};
    SigV4Request r = suite_request("POST", "/v2/email/outbound-emails");
    std::string a = authorization(r, c);
    EXPECT_EQ(a.rfind("AWS4-HMAC-SHA256 Credential=AKID/20150830/eu-west-1/ses/aws4_request, ", 0), 0u);
    c.secret_access_key = "other";
    EXPECT_NE(authorization(r, c), a);
}

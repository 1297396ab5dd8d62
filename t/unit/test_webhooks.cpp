// Webhooks out: the signature against the Standard Webhooks spec's own
// example, endpoint URLs and types, and which addresses deliveryd may call.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cstring>

#include "webhook_dispatch.h"
#include "webhooks.h"

using namespace mailapi;

TEST(WebhookSignature, MatchesTheSpecsExample) {
    // https://github.com/standard-webhooks/standard-webhooks (spec and its libraries' tests)
    std::string sig = webhook_signature({"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "msg_p5jXN8AQM9LWM0D4loKWxJek",
                                        1614265330, "{\"test\": 2432232314}");
    EXPECT_EQ(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(WebhookSignature, OneAValidSecretSpaceSeparated) {
    std::string a = webhook_secret_new(), b = webhook_secret_new();
    std::string both = webhook_signature({a, "whsec_!!", b}, "id", 1, "{}");
    EXPECT_EQ(both, webhook_signature({a}, "id", 1, "{}") + " " + webhook_signature({b}, "id", 1, "{}"));
    std::string key;
    EXPECT_TRUE(webhook_secret_key(a, key));
    EXPECT_EQ(key.size(), 24u);
    EXPECT_FALSE(webhook_secret_key("whsec_c2hvcnQ=", key));  // too short a key
}

TEST(WebhookUrl, UserFragmentsAndOtherSchemesAreRefused) {
    std::string err;
    EXPECT_TRUE(webhook_url_valid("https://hooks.example.com/mail?x=1", err));
    EXPECT_TRUE(webhook_url_valid("http://[2001:4860::1]:8080/x", err));
    for (const char *bad : {"ftp://x/", "https://u:p@x/", "https://x@y/", "https:///x", "https://x/#f",
                            "https://x/ y", "https://x/\r\nHost: y", "gopher://x/", "HTTPS://x/"}) {
        EXPECT_FALSE(webhook_url_valid(bad, err)) << bad;
    }
}

namespace {

bool public_v4(const char *text) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    EXPECT_EQ(inet_pton(AF_INET, text, &a.sin_addr), 1) << text;
    return webhook_address_public(reinterpret_cast<const sockaddr *>(&a));
}

bool public_v6(const char *text) {
    sockaddr_in6 a{};
    a.sin6_family = AF_INET6;
    EXPECT_EQ(inet_pton(AF_INET6, text, &a.sin6_addr), 1) << text;
    return webhook_address_public(reinterpret_cast<const sockaddr *>(&a));
}

}  // namespace

TEST(WebhookAddress, OnlyPublicIPv4) {
    for (const char *ok : {"8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "172.32.0.1", "11.0.0.1"}) {
        EXPECT_TRUE(public_v4(ok)) << ok;
    }
    for (const char *no : {"127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255",
                           "192.168.1.1", "169.254.169.254", "100.64.0.1", "192.0.0.8", "192.0.2.1", "198.18.0.1",
                           "198.51.100.2", "203.0.113.9", "224.0.0.1", "255.255.255.255", "240.0.0.1"}) {
        EXPECT_FALSE(public_v4(no)) << no;
    }
}

TEST(WebhookAddress, OnlyPublicIPv6AndNoIPv4InsideOne) {
    for (const char *ok : {"2001:4860:4860::8888", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"}) {
        EXPECT_TRUE(public_v6(ok)) << ok;
    }
    for (const char *no : {"::", "::1", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
                           "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1",
                           // IPv4-compatible (deprecated), IPv4-translated, local-use NAT64, 6to4 and Teredo
                           // carry an IPv4 address too; site-local and discard-only are not public
                           "::127.0.0.1", "::10.0.0.1", "::ffff:0:127.0.0.1", "64:ff9b:1::a00:1", "2002:7f00:1::1",
                           "2002:a9fe:a9fe::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fec0::1", "100::1"}) {
        EXPECT_FALSE(public_v6(no)) << no;
    }
}

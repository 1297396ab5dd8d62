#include <gtest/gtest.h>

#include "apikeys.h"
#include "token.h"

using namespace mailapi;

TEST(ApiKeys, Parses) {
    std::vector<ApiKey> keys;
    std::string err;
    ASSERT_TRUE(apikeys_parse("# id tenant scopes secret\n\nk1 acme send+read MDEyMzQ1Njc4OWFiY2RlZg==\n"
                              "k2 acme read MDEyMzQ1Njc4OWFiY2RlZg==\n",
                              keys, err))
        << err;
    ASSERT_EQ(keys.size(), 2u);
    EXPECT_EQ(keys[0].tenant, "acme");
    EXPECT_EQ(keys[0].secret, "0123456789abcdef");
    EXPECT_EQ(apikeys_find(keys, "k2")->scopes, unsigned(SCOPE_READ));
    EXPECT_EQ(apikeys_find(keys, "k3"), nullptr);
}

TEST(ApiKeys, NamesTheBadLine) {
    std::vector<ApiKey> keys;
    std::string err;
    const char *bad[] = {
        "k1 acme send\n",                                   // no secret
        "k1 acme admin MDEyMzQ1Njc4OWFiY2RlZg==\n",         // bad scope
        "k1 acme send c2hvcnQ=\n",                          // secret too short
        "k1 ac/me send MDEyMzQ1Njc4OWFiY2RlZg==\n",         // bad tenant
        "k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== extra\n",    // trailing junk
        "k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== rate=5/w\n",   // bad unit
        "k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== rate=0/s\n",   // zero
        "k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== burst=5\n",    // burst without rate
        "k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== quota=10\n",   // no period
    };
    for (const char *line : bad) {
        EXPECT_FALSE(apikeys_parse(std::string("# header\n") + line, keys, err)) << line;
        EXPECT_EQ(err.rfind("line 2:", 0), 0u) << err;
    }
    EXPECT_FALSE(apikeys_parse("k1 a send MDEyMzQ1Njc4OWFiY2RlZg==\nk1 b send MDEyMzQ1Njc4OWFiY2RlZg==\n", keys, err));
    EXPECT_NE(err.find("duplicate"), std::string::npos);
}

TEST(ApiKeys, LimitOptions) {
    std::vector<ApiKey> keys;
    std::string err;
    ASSERT_TRUE(apikeys_parse("a t send MDEyMzQ1Njc4OWFiY2RlZg== rate=120/m quota=1000/d\n"
                              "b t send MDEyMzQ1Njc4OWFiY2RlZg== rate=50/s burst=200\n"
                              "c t send MDEyMzQ1Njc4OWFiY2RlZg==\n",
                              keys, err))
        << err;
    EXPECT_DOUBLE_EQ(keys[0].rate, 2.0);
    EXPECT_EQ(keys[0].burst, 2u);
    EXPECT_EQ(keys[0].daily_quota, 1000u);
    EXPECT_EQ(keys[1].burst, 200u);
    EXPECT_EQ(keys[2].rate, 0.0);
    EXPECT_EQ(keys[2].daily_quota, 0u);
    EXPECT_FALSE(apikeys_parse("a t send MDEyMzQ1Njc4OWFiY2RlZg== colour=blue\n", keys, err));
    EXPECT_NE(err.find("unknown option"), std::string::npos);
}

TEST(ApiKeys, Retention) {
    std::vector<ApiKey> keys;
    std::string err;
    ASSERT_TRUE(apikeys_parse("a acme send MDEyMzQ1Njc4OWFiY2RlZg== retention=30d\n"
                              "b acme read MDEyMzQ1Njc4OWFiY2RlZg==\n"
                              "c acme send MDEyMzQ1Njc4OWFiY2RlZg== retention=7d rate=5/s\n"
                              "d other send MDEyMzQ1Njc4OWFiY2RlZg==\n"
                              "e third send MDEyMzQ1Njc4OWFiY2RlZg== retention=3650d\n"
                              "f fourth send MDEyMzQ1Njc4OWFiY2RlZg== retention=1d\n",
                              keys, err))
        << err;
    ASSERT_EQ(keys.size(), 6u);
    // every key of a tenant gets the tenant's shortest
    EXPECT_EQ(apikeys_find(keys, "a")->retention_days, 7u);
    EXPECT_EQ(apikeys_find(keys, "b")->retention_days, 7u);
    EXPECT_EQ(apikeys_find(keys, "c")->retention_days, 7u);
    EXPECT_EQ(apikeys_find(keys, "d")->retention_days, 0u);  // kept for ever
    EXPECT_EQ(apikeys_find(keys, "e")->retention_days, 3650u);
    EXPECT_EQ(apikeys_find(keys, "f")->retention_days, 1u);
    const char *bad[] = {"retention=0d", "retention=3651d", "retention=30", "retention=d", "retention=30h",
                         "retention=-1d", "retention=", "retention=1.5d", "retention=30dd"};
    for (const char *opt : bad) {
        EXPECT_FALSE(apikeys_parse(std::string("k1 acme send MDEyMzQ1Njc4OWFiY2RlZg== ") + opt + "\n", keys, err))
            << opt;
        EXPECT_NE(err.find("retention must be Nd"), std::string::npos) << err;
    }
}

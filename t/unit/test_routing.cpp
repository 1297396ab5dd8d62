// deliveryd settings (provider accounts, routes) and the weighted order of
// a pool's members.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "config.h"
#include "provider_set.h"

namespace {

struct ConfigFile {
    std::string path;
    explicit ConfigFile(const std::string &text) {
        char tmpl[] = "/tmp/deliveryd-test-XXXXXX";
        int fd = mkstemp(tmpl);
        close(fd);
        path = tmpl;
        std::ofstream(path) << text;
    }
    ~ConfigFile() { unlink(path.c_str()); }
};

bool load(const std::string &text, Config &cfg, std::string &err) {
    ConfigFile f(text);
    return config_load(f.path, cfg, err);
}

}  // namespace

TEST(Config, ProviderLinesRoutesAndDefaults) {
    Config cfg;
    std::string err;
    ASSERT_TRUE(load("provider a sendgrid api_key=k rate=5\n"
                     "provider b postmark server_token=t\n"
                     "provider c ses region=eu-west-1 access_key_id=AK secret_access_key=S\n"
                     "route * a:3 | b , c\n"
                     "route acme c\n",
                     cfg, err))
        << err;
    ASSERT_EQ(cfg.routes.size(), 2u);
    const Route &all = cfg.routes.at("*");
    ASSERT_EQ(all.size(), 2u);
    EXPECT_EQ(all[0].names, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(all[0].weights, (std::vector<int>{3, 1}));
    EXPECT_EQ(all[1].names, (std::vector<std::string>{"c"}));
    ASSERT_EQ(cfg.provider_specs.size(), 3u);
    for (const ProviderSpec &p : cfg.provider_specs) {
        if (p.name == "a") {
            EXPECT_EQ(p.get("url"), "https://api.sendgrid.com");
            EXPECT_EQ(p.get("rate"), "5");
        }
        if (p.name == "b") {
            EXPECT_EQ(p.get("message_stream"), "outbound");
        }
        if (p.name == "c") {
            EXPECT_EQ(p.get("url"), "https://email.eu-west-1.amazonaws.com");
        }
    }
}

TEST(Config, UnusedProvidersAreNotBuiltAndShorthandsStillWork) {
    Config cfg;
    std::string err;
    ASSERT_TRUE(load("provider spare mailgun domain=d api_key=k\nproviders sendgrid,smtp\nsendgrid_api_key x\n"
                     "smtp_url smtps://relay.example.com:465\n",
                     cfg, err))
        << err;
    ASSERT_EQ(cfg.provider_specs.size(), 2u);  // "spare" is on no route
    EXPECT_EQ(cfg.provider_specs[0].name, "sendgrid");
    EXPECT_EQ(cfg.provider_specs[0].get("api_key"), "x");
    EXPECT_EQ(cfg.provider_specs[1].get("url"), "smtps://relay.example.com:465");
}

TEST(Config, NoFileMeansOneSmtpRoute) {
    Config cfg;
    std::string err;
    unsetenv("DELIVERYD_PROVIDERS");
    ASSERT_TRUE(config_load("", cfg, err)) << err;
    ASSERT_EQ(cfg.provider_specs.size(), 1u);
    EXPECT_EQ(cfg.provider_specs[0].get("url"), "smtp://127.0.0.1:25");
}

TEST(Config, ErrorsNameTheLine) {
    Config cfg;
    std::string err;
    EXPECT_FALSE(load("batch 1\nprovider x sendgrid\nroute * x\n", cfg, err));
    EXPECT_NE(err.find(":2: provider x (sendgrid) needs api_key"), std::string::npos) << err;
    EXPECT_FALSE(load("route * a|\n", cfg, err));
    EXPECT_NE(err.find("a pool member is missing"), std::string::npos) << err;
    EXPECT_FALSE(load("route * a|b/c\n", cfg, err));
    EXPECT_NE(err.find("\"b/c\" is not a provider name"), std::string::npos) << err;
    EXPECT_FALSE(load("provider a smtp\nroute * a,\n", cfg, err));
    EXPECT_NE(err.find("route *"), std::string::npos) << err;
}

TEST(Config, RestartOnlySettingsAreNamed) {
    Config a, b;
    EXPECT_EQ(config_restart_needed(a, b), "");
    b.redis = "10.0.0.1:6379";
    b.stream = "other";
    b.max_in_flight = 5;  // reloadable
    EXPECT_EQ(config_restart_needed(a, b), "redis, stream");
}

TEST(Config, AllowingPrivateWebhookAddressesIsNotReloaded) {
    // the webhooks' kept-alive connections to private addresses would outlive it
    Config a, b;
    b.webhook_allow_private = 1;
    EXPECT_EQ(config_restart_needed(a, b), "webhook_allow_private");
}

TEST(WeightedOrder, FollowsTheWeights) {
    std::mt19937_64 rng(42);
    int first[3] = {0, 0, 0};
    const int n = 20000;
    for (int i = 0; i < n; i++) {
        std::vector<size_t> order = weighted_order({6, 3, 1}, rng);
        ASSERT_EQ(order.size(), 3u);
        first[order[0]]++;
        std::sort(order.begin(), order.end());
        EXPECT_EQ(order, (std::vector<size_t>{0, 1, 2}));  // each member once
    }
    // Expected 60%, 30%, 10% first; 20,000 draws keep each within 2 points.
    EXPECT_NEAR(first[0] / double(n), 0.6, 0.02);
    EXPECT_NEAR(first[1] / double(n), 0.3, 0.02);
    EXPECT_NEAR(first[2] / double(n), 0.1, 0.02);
}

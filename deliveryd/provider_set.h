// The providers of one configuration and the routes through them. SIGHUP
// builds a new set; a message keeps the set it started with, and a provider
// whose settings did not change carries over with its breaker and limits.
#pragma once
#include <ev.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "breaker.h"
#include "config.h"
#include "curl_multi.h"

class ProviderSet {
public:
    // `previous` may be null. On error (a provider that cannot be built),
    // `err` is set and the set must not be used.
    ProviderSet(struct ev_loop *loop, const Config &cfg, CurlMulti &multi, const ProviderSet *previous,
                std::string &err);

    // The providers to try for one of `tenant`'s messages, in order: each
    // step of its route (or "*") with its members in weighted random order.
    std::vector<Provider *> plan(const std::string &tenant, std::mt19937_64 &rng) const;

    struct Entry {
        ProviderSpec spec;
        BreakerSettings breaker_settings;
        std::shared_ptr<Breaker> provider;
    };
    const std::map<std::string, Entry> &providers() const { return providers_; }

private:
    std::map<std::string, Entry> providers_;
    std::map<std::string, Route> routes_;
};

// Orders one step's members: each pick is random with probability
// proportional to its weight among those not yet picked.
std::vector<size_t> weighted_order(const std::vector<int> &weights, std::mt19937_64 &rng);

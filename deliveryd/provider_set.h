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
    // The providers and routes of `cfg`. The providers keep a reference to
    // `live`, the configuration the daemon runs with (SIGHUP assigns the new
    // one to it in place), never to `cfg`, which may be a reload's local
    // copy. `previous` may be null. On error (a provider that cannot be
    // built), `err` is set and the set must not be used.
    ProviderSet(struct ev_loop *loop, const Config &cfg, const Config &live, CurlMulti &multi,
                const ProviderSet *previous, std::string &err);
    // Given providers, tried in this order for every tenant (unit tests).
    explicit ProviderSet(const std::vector<std::pair<std::string, std::shared_ptr<Breaker>>> &in_order);

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

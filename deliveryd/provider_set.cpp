#include "provider_set.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "http_provider.h"
#include "smtp.h"
#include "throttle.h"

namespace {

std::unique_ptr<Provider> make_provider(struct ev_loop *loop, const ProviderSpec &spec, const Config &cfg,
                                        CurlMulti &multi, std::string &err) {
    if (spec.type == "smtp") return std::make_unique<SmtpProvider>(spec, cfg, loop);
    if (spec.type == "sendgrid") return std::make_unique<SendgridProvider>(spec, cfg, multi);
    if (spec.type == "mailgun") return std::make_unique<MailgunProvider>(spec, cfg, multi);
    if (spec.type == "postmark") return std::make_unique<PostmarkProvider>(spec, cfg, multi);
    if (spec.type == "ses") return std::make_unique<SesProvider>(spec, cfg, multi);
    if (spec.type == "http") return std::make_unique<HookProvider>(spec, cfg, multi);
    err = "provider " + spec.name + ": type " + spec.type + " is not built into this deliveryd";
    return nullptr;
}

int option_int(const ProviderSpec &spec, const char *key) { return std::atoi(spec.get(key).c_str()); }

}  // namespace

std::vector<size_t> weighted_order(const std::vector<int> &weights, std::mt19937_64 &rng) {
    // Efraimidis-Spirakis: sorting by u^(1/w) descending is a weighted
    // sample without replacement.
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    std::vector<std::pair<double, size_t>> keys;
    for (size_t i = 0; i < weights.size(); i++) {
        keys.emplace_back(std::pow(uniform(rng), 1.0 / std::max(1, weights[i])), i);
    }
    std::sort(keys.begin(), keys.end(), [](const auto &a, const auto &b) { return a.first > b.first; });
    std::vector<size_t> out;
    for (const auto &k : keys) out.push_back(k.second);
    return out;
}

ProviderSet::ProviderSet(struct ev_loop *loop, const Config &cfg, const Config &live, CurlMulti &multi,
                         const ProviderSet *previous, std::string &err)
    : routes_(cfg.routes) {
    BreakerSettings b{cfg.breaker_window, cfg.breaker_min_requests, cfg.breaker_threshold / 100.0,
                      static_cast<double>(cfg.breaker_cooldown)};
    for (const ProviderSpec &spec : cfg.provider_specs) {
        if (previous) {
            auto it = previous->providers_.find(spec.name);
            if (it != previous->providers_.end() && it->second.spec == spec &&
                it->second.breaker_settings == b) {
                providers_[spec.name] = it->second;
                continue;
            }
        }
        // No more sends at once than connections: the others wait without a
        // transfer (and its buffers) of their own.
        int concurrency = option_int(spec, "concurrency");
        concurrency = concurrency > 0 ? std::min(concurrency, cfg.connections_per_host) : cfg.connections_per_host;
        std::unique_ptr<Provider> p = make_provider(loop, spec, live, multi, err);
        if (!p) return;
        int rate = option_int(spec, "rate"), burst = option_int(spec, "burst");
        p = std::make_unique<Throttle>(loop, std::move(p), rate, burst > 0 ? burst : std::max(1, rate), concurrency,
                                       live);
        providers_[spec.name] = Entry{spec, b, std::make_shared<Breaker>(loop, std::move(p), b)};
    }
}

ProviderSet::ProviderSet(const std::vector<std::pair<std::string, std::shared_ptr<Breaker>>> &in_order) {
    Route route;
    for (const auto &p : in_order) {
        providers_[p.first] = Entry{ProviderSpec{p.first, "test", {}}, BreakerSettings{}, p.second};
        route.push_back(RouteStep{{p.first}, {1}});
    }
    routes_["*"] = route;
}

std::vector<Provider *> ProviderSet::plan(const std::string &tenant, std::mt19937_64 &rng) const {
    auto route = routes_.find(tenant);
    if (route == routes_.end()) route = routes_.find("*");
    std::vector<Provider *> out;
    if (route == routes_.end()) return out;  // this tenant has a route, the others none
    for (const RouteStep &step : route->second) {
        for (size_t i : weighted_order(step.weights, rng)) {
            Provider *p = providers_.at(step.names[i]).provider.get();
            if (std::find(out.begin(), out.end(), p) == out.end()) out.push_back(p);
        }
    }
    return out;
}

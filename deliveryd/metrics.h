// Counters and gauges for Prometheus, rendered in its text format.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

struct Metrics {
    // by provider and outcome: sent, failed, deferred, provider_failed
    std::map<std::pair<std::string, std::string>, uint64_t> sends;
    // send latency, seconds
    static constexpr double BUCKETS[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    std::vector<uint64_t> latency_buckets = std::vector<uint64_t>(sizeof BUCKETS / sizeof BUCKETS[0], 0);
    uint64_t latency_count = 0;
    double latency_sum = 0;
    // sampled from Redis
    int64_t queue_length = -1, queue_pending = -1, scheduled = -1, dead_letters = -1;
    double oldest_age_seconds = 0;
    // filled in when rendering
    int in_flight = 0;
    size_t in_flight_bytes = 0;
    std::map<std::string, int> breaker;  // provider -> 0 closed, 1 open, 2 half-open
    // retention (the sweeper's own counts, copied in when rendering)
    uint64_t retention_sweeps = 0, retention_messages = 0, retention_documents = 0, retention_failures = 0;

    void count(const std::string &provider, const std::string &outcome) { sends[{provider, outcome}]++; }
    void observe(double seconds);
    std::string render() const;
};

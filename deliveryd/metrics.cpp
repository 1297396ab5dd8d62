#include "metrics.h"

#include <cstdio>

constexpr double Metrics::BUCKETS[];

void Metrics::observe(double seconds) {
    for (size_t i = 0; i < latency_buckets.size(); i++) {
        if (seconds <= BUCKETS[i]) latency_buckets[i]++;
    }
    latency_count++;
    latency_sum += seconds;
}

std::string Metrics::render() const {
    std::string out;
    char line[256];
    auto add = [&](const char *fmt, auto... args) {
        snprintf(line, sizeof line, fmt, args...);
        out += line;
    };
    out += "# HELP deliveryd_sends_total Sends by provider and outcome.\n# TYPE deliveryd_sends_total counter\n";
    for (const auto &kv : sends) {
        add("deliveryd_sends_total{provider=\"%s\",outcome=\"%s\"} %llu\n", kv.first.first.c_str(),
            kv.first.second.c_str(), static_cast<unsigned long long>(kv.second));
    }
    out += "# HELP deliveryd_send_seconds Time one send took.\n# TYPE deliveryd_send_seconds histogram\n";
    for (size_t i = 0; i < latency_buckets.size(); i++) {
        add("deliveryd_send_seconds_bucket{le=\"%g\"} %llu\n", BUCKETS[i],
            static_cast<unsigned long long>(latency_buckets[i]));
    }
    add("deliveryd_send_seconds_bucket{le=\"+Inf\"} %llu\n", static_cast<unsigned long long>(latency_count));
    add("deliveryd_send_seconds_sum %.6f\n", latency_sum);
    add("deliveryd_send_seconds_count %llu\n", static_cast<unsigned long long>(latency_count));
    out += "# HELP deliveryd_in_flight Messages being worked on.\n# TYPE deliveryd_in_flight gauge\n";
    add("deliveryd_in_flight %d\n", in_flight);
    out += "# HELP deliveryd_in_flight_bytes Memory the messages being worked on are counted for "
           "(max_in_flight_bytes bounds it).\n# TYPE deliveryd_in_flight_bytes gauge\n";
    add("deliveryd_in_flight_bytes %zu\n", in_flight_bytes);
    out += "# HELP deliveryd_breaker_state Circuit breaker: 0 closed, 1 open, 2 half-open.\n"
           "# TYPE deliveryd_breaker_state gauge\n";
    for (const auto &kv : breaker) add("deliveryd_breaker_state{provider=\"%s\"} %d\n", kv.first.c_str(), kv.second);
    out += "# HELP deliveryd_queue_messages Entries in the stream; -1 until first sampled.\n"
           "# TYPE deliveryd_queue_messages gauge\n";
    add("deliveryd_queue_messages %lld\n", static_cast<long long>(queue_length));
    out += "# HELP deliveryd_queue_pending Entries read by a consumer and not yet acknowledged.\n"
           "# TYPE deliveryd_queue_pending gauge\n";
    add("deliveryd_queue_pending %lld\n", static_cast<long long>(queue_pending));
    out += "# HELP deliveryd_scheduled_messages Retries and future send_at waiting.\n"
           "# TYPE deliveryd_scheduled_messages gauge\n";
    add("deliveryd_scheduled_messages %lld\n", static_cast<long long>(scheduled));
    out += "# HELP deliveryd_dead_letters Messages given up on.\n# TYPE deliveryd_dead_letters gauge\n";
    add("deliveryd_dead_letters %lld\n", static_cast<long long>(dead_letters));
    out += "# HELP deliveryd_oldest_message_age_seconds Age of the oldest unacknowledged entry.\n"
           "# TYPE deliveryd_oldest_message_age_seconds gauge\n";
    add("deliveryd_oldest_message_age_seconds %.3f\n", oldest_age_seconds);
    out += "# HELP deliveryd_retention_sweeps_total Retention sweeps this instance ran (holding the lock).\n"
           "# TYPE deliveryd_retention_sweeps_total counter\n";
    add("deliveryd_retention_sweeps_total %llu\n", static_cast<unsigned long long>(retention_sweeps));
    out += "# HELP deliveryd_retention_messages_total Messages whose records this instance's sweeps deleted.\n"
           "# TYPE deliveryd_retention_messages_total counter\n";
    add("deliveryd_retention_messages_total %llu\n", static_cast<unsigned long long>(retention_messages));
    out += "# HELP deliveryd_retention_documents_total Store documents those sweeps deleted.\n"
           "# TYPE deliveryd_retention_documents_total counter\n";
    add("deliveryd_retention_documents_total %llu\n", static_cast<unsigned long long>(retention_documents));
    out += "# HELP deliveryd_retention_failures_total Sweeps cut short by Redis or the store.\n"
           "# TYPE deliveryd_retention_failures_total counter\n";
    add("deliveryd_retention_failures_total %llu\n", static_cast<unsigned long long>(retention_failures));
    return out;
}

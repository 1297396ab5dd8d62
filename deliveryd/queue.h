// The Redis stream that nginx fills: read through a consumer group, acked only
// after the outcome is recorded, so a crash leaves entries to be read again.
#pragma once
#include <hiredis/hiredis.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "config.h"

struct QueueEntry {
    std::string stream_id;
    std::string id;        // message id
    std::string tenant;
    std::string envelope;  // encrypted message
    int64_t created_ms = 0;
    int64_t send_at = 0;   // unix seconds, 0 = now
    int attempt = 0;
};

class Queue {
public:
    explicit Queue(const Config &cfg) : cfg_(cfg) {}

    bool connect(std::string &err);  // also creates the consumer group
    bool connected() const { return ctx_ != nullptr; }

    // New entries, waiting up to block_ms for the first.
    bool read_new(int count, int block_ms, std::vector<QueueEntry> &out);
    // This consumer's unacknowledged entries after stream id `after`.
    bool read_pending(const std::string &after, int count, std::vector<QueueEntry> &out);
    // Entries another consumer read but did not ack for min_idle_ms: it died.
    bool claim_idle(int64_t min_idle_ms, int count, std::vector<QueueEntry> &out);
    bool ack(const std::string &stream_id);

private:
    struct ReplyFree {
        void operator()(redisReply *r) const { freeReplyObject(r); }
    };
    struct ContextFree {
        void operator()(redisContext *c) const { redisFree(c); }
    };
    using Reply = std::unique_ptr<redisReply, ReplyFree>;

    Reply command(const std::vector<std::string> &args);
    static void parse_entries(const redisReply *list, std::vector<QueueEntry> &out);

    const Config &cfg_;
    std::unique_ptr<redisContext, ContextFree> ctx_;
};

// The Redis stream that nginx fills, read through a consumer group. An entry
// is acknowledged only once its outcome is recorded: then acked, deferred
// (acked and parked in the sorted set until it is due) or dead-lettered, each
// atomically by a script.
#pragma once
#include <ev.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "config.h"
#include "redis_async.h"

struct QueueEntry {
    std::string stream_id;
    std::string id;        // message id
    std::string tenant;
    std::string envelope;  // encrypted message
    int64_t created_ms = 0;
    int64_t send_at = 0;   // unix seconds, 0 = now
    int attempt = 0;       // sends tried before this one
};

class Queue {
public:
    // claimed: the entry was taken over from a consumer that went quiet (or
    // is this one's own from before a restart): it may have been sent already.
    using Handler = std::function<void(std::vector<QueueEntry> &&entries, bool claimed)>;
    using Done = std::function<void(bool ok)>;

    Queue(struct ev_loop *loop, const Config &cfg, Handler handler, std::function<int()> capacity);
    ~Queue();

    void start();
    void stop_reading();
    void read_more();  // call when capacity frees up

    void ack(const QueueEntry &e, Done done);
    void defer(const QueueEntry &e, int64_t due_ms, int attempt, Done done);
    void dead_letter(const QueueEntry &e, const std::string &error, Done done);
    // Queue depth, pending, scheduled, dead letters and the oldest entry's age.
    void sample(struct Metrics &m);
    bool connected() const { return cmd_.connected() && reader_.connected(); }

private:
    static void mover_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void sweep_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void retry_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    void ensure_group();
    void retry_later();  // after an error reply: the group, or the next read, again in a second

    struct ev_loop *loop_;
    const Config &cfg_;
    Handler handler_;
    std::function<int()> capacity_;
    RedisAsync reader_, cmd_;
    ev_timer mover_, sweep_, retry_;
    bool reading_ = false, stopping_ = false, group_ready_ = false;
};

std::vector<QueueEntry> parse_entries(const redisReply *list);

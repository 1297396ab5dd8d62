// The Redis stream that nginx fills, read through a consumer group
// (contract.h, docs/storage.md). An entry is a small pointer to a message
// hash; the envelope is fetched from the hash only when the message is sent.
// An entry leaves the stream once its outcome is recorded: acked (the hash
// goes too), deferred (the id waits in the scheduled set) or dead-lettered,
// each atomically by a script.
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
    int64_t created_ms = 0;
    int64_t send_at = 0;   // unix seconds, 0 = now
    int64_t since_ms = 0;  // this generation began (created_ms for the first)
    int attempt = 0;       // sends tried in this generation
    int gen = 0;           // replays of a dead letter
    size_t size = 0;       // bytes of the envelope
    // Recipients finished in earlier attempts (contract::field::DONE); a
    // delivery adds this attempt's before it defers or dead-letters the entry.
    std::string done;
    int64_t keep_days = 0;  // the tenant's retention (contract::field::KEEP), 0 = for ever
};

// What a delivery does to its entry and message in Redis (Queue; a fake in
// t/unit/test_delivery.cpp).
class DeliveryQueue {
public:
    using Done = std::function<void(bool ok)>;
    // ok false: Redis failed (retry); gone: the message hash no longer exists.
    using EnvelopeDone = std::function<void(bool ok, bool gone, std::string envelope)>;
    enum class Take { failed, gone, held, taken, cancelled };
    // taken: the envelope, and the SENT marker if a provider took it already;
    // cancelled: the envelope (for its record), nothing to send
    using TakeDone = std::function<void(Take, std::string envelope, std::string sent)>;
    // ok false: Redis failed (ask again); held: the lease is still this
    // consumer's, and runs claim_idle from now
    using RenewDone = std::function<void(bool ok, bool held)>;
    // ok false: Redis failed (ask again); else, for each recipient key asked
    // about, its suppression entry ("<at ms> <reason> ...") or "" (not suppressed)
    using SuppressedDone = std::function<void(bool ok, std::vector<std::string> entries)>;

    virtual ~DeliveryQueue() = default;
    // Takes the message to send it: its envelope, unless it is gone or
    // another consumer's live lease holds it (contract::TAKE_LUA).
    virtual void take(const QueueEntry &e, TakeDone done) = 0;
    virtual void envelope(const QueueEntry &e, EnvelopeDone done) = 0;  // again, for the record
    // Before a send long after the take: is the lease still this consumer's
    // (contract::RENEW_LUA)? It is not if this instance could not renew it
    // for claim_idle (stopped, cut off from Redis) and another took it over.
    virtual void renew(const QueueEntry &e, RenewDone done) = 0;
    // A provider took it: "<gen> <provider> <code> <ms>" (contract::SENT_LUA);
    // ok false: Redis did not take it (down, restarting).
    virtual void mark_sent(const QueueEntry &e, const std::string &marker, Done done) = 0;
    virtual void ack(const QueueEntry &e, Done done) = 0;   // the outcome is terminal and recorded
    virtual void drop(const QueueEntry &e, Done done) = 0;  // not a message entry: only the entry goes
    // Both keep e.done in the hash for the attempts and replays to come.
    virtual void defer(const QueueEntry &e, int64_t due_ms, int attempt, Done done) = 0;
    virtual void dead_letter(const QueueEntry &e, const std::string &error, Done done) = 0;
    // The tenant's suppression entries of these recipient keys (contract::suppression_key).
    virtual void suppressed(const std::string &tenant, const std::vector<std::string> &rkeys,
                            SuppressedDone done) = 0;
    // Runs a suppression::add_command.
    virtual void suppress(std::vector<std::string> command, Done done) = 0;
};

class Queue : public DeliveryQueue {
public:
    // claimed: the entry was taken over from a consumer that went quiet (or
    // is this one's own from before a restart): it may have been sent already.
    using Handler = std::function<void(std::vector<QueueEntry> &&entries, bool claimed)>;
    // (stream id, message id) of every entry this instance works on
    using Working = std::function<std::vector<std::pair<std::string, std::string>>()>;

    Queue(struct ev_loop *loop, const Config &cfg, Handler handler, std::function<int()> capacity, Working working);
    ~Queue() override;

    void start();
    void stop_reading();
    void read_more();  // call when capacity frees up

    void take(const QueueEntry &e, TakeDone done) override;
    void envelope(const QueueEntry &e, EnvelopeDone done) override;
    void renew(const QueueEntry &e, RenewDone done) override;
    void mark_sent(const QueueEntry &e, const std::string &marker, Done done) override;
    void ack(const QueueEntry &e, Done done) override;
    void drop(const QueueEntry &e, Done done) override;
    void defer(const QueueEntry &e, int64_t due_ms, int attempt, Done done) override;
    void dead_letter(const QueueEntry &e, const std::string &error, Done done) override;
    void suppressed(const std::string &tenant, const std::vector<std::string> &rkeys, SuppressedDone done) override;
    void suppress(std::vector<std::string> command, Done done) override;
    // Queue depth, pending, scheduled, dead letters and the oldest entry's age.
    void sample(struct Metrics &m);
    bool connected() const { return cmd_.connected() && reader_.connected(); }

private:
    static void mover_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void sweep_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void retry_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void touch_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void reap_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    void ensure_group();
    void retry_later();  // after an error reply: the group, or the next read, again in a second
    // EVALSHA, and EVAL when Redis does not know the script (yet, or after a restart).
    bool script(const struct Script &sc, std::vector<std::string> args, RedisAsync::Callback cb);
    std::string hash_key(const std::string &id) const;

    struct ev_loop *loop_;
    const Config &cfg_;
    Handler handler_;
    std::function<int()> capacity_;
    Working working_;
    RedisAsync reader_, cmd_;
    ev_timer mover_, sweep_, retry_, touch_, reap_;
    std::string claim_cursor_ = "0-0";  // XAUTOCLAIM goes on from here
    bool reading_ = false, stopping_ = false, group_ready_ = false;
};

std::vector<QueueEntry> parse_entries(const redisReply *list);

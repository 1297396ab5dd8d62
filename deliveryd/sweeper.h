// Retention: deletes the records of messages whose tenant's retention
// (retention=Nd in the keys file, stamped on each message by the module) has
// run out, with everything of them in the store (docs/storage.md,
// "Retention").
//
// Every retention_sweep_every seconds, from a thread of its own (libmongoc
// and its own Redis connection block), one instance at a time (a lock in
// Redis, SET NX PX, let go of when the sweep ends) walks the expiry
// documents' day buckets from a cursor kept in Redis, and deletes at most
// retention_batch messages a run: a backlog drains over successive runs,
// and no run costs more than that (and one lookup per day bucket visited,
// at most DAYS_PER_RUN). Each message's documents go first, its expiry
// document last, so a sweep cut short leaves nothing the next one misses.
#pragma once
#include <hiredis/hiredis.h>
#include <mongoc/mongoc.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"

struct Metrics;

class Sweeper {
public:
    // Takes what it needs of `cfg` (restart-only settings) and starts its thread.
    explicit Sweeper(const Config &cfg);
    ~Sweeper();
    Sweeper(const Sweeper &) = delete;
    Sweeper &operator=(const Sweeper &) = delete;

    void counts(Metrics &m) const;  // the sweeps' totals so far
    // A sweep was still stuck on the store at shutdown (its thread left
    // running): libmongoc must not be cleaned up under it.
    static bool abandoned() { return abandoned_; }

    // Day buckets one run looks at, at most (empty ones cost a lookup each).
    static constexpr int DAYS_PER_RUN = 1000;
    // The lock outlives any run (bounded by retention_batch and the store's
    // timeouts); a holder that died lets another sweep after this long.
    static constexpr int LOCK_MS = 300000;

private:
    void run();
    void sweep();  // one run, if this instance gets the lock
    bool connect_redis(std::string &err);
    bool connect_store(std::string &err);
    redisReply *command(const std::vector<std::string> &args);
    // Deletes one message's documents, its expiry document last; false on a
    // store error. `docs`: how many went; `mine`: its expiry document was
    // deleted by this call (so a message is counted once, whoever else sweeps).
    bool erase(const std::string &id, int64_t &docs, bool &mine, std::string &err);

    const std::string redis_, stream_, mongodb_, holder_;
    const int every_s_, batch_;
    const int64_t offset_ms_;
    redisContext *rc_ = nullptr;
    mongoc_client_t *client_ = nullptr;
    mongoc_collection_t *messages_ = nullptr;
    bool indexed_ = false;

    std::mutex mu_;
    std::condition_variable cv_, exited_cv_;
    bool stop_ = false, exited_ = false;
    std::thread thread_;
    static inline bool abandoned_ = false;
    std::atomic<uint64_t> sweeps_{0}, messages_swept_{0}, documents_swept_{0}, failures_{0};
};

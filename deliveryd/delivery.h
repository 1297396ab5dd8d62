// Each queue entry from envelope to a recorded outcome: decrypt, send, record,
// then ack, defer (retry with backoff, or a future send_at) or dead-letter.
// The record is always written before the entry leaves the queue.
#pragma once
#include <ev.h>

#include <functional>
#include <memory>
#include <string>
#include <unordered_set>

#include "crypto.h"
#include "queue.h"
#include "provider_set.h"
#include "store.h"

class Delivery {
public:
    Delivery(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, Store &store, Queue *&queue,
             std::shared_ptr<const ProviderSet> providers, struct Metrics &metrics);
    ~Delivery();

    void handle(QueueEntry entry, bool claimed);
    int in_flight() const { return static_cast<int>(in_flight_.size()); }
    std::function<void()> on_idle;  // a message finished: there is room again
    // SIGHUP: messages from now on go through `providers`; those under way
    // keep the set they started with.
    void set_providers(std::shared_ptr<const ProviderSet> providers) { providers_ = std::move(providers); }

private:
    struct Job;
    void decide(std::shared_ptr<Job> job);
    void send(std::shared_ptr<Job> job, size_t provider);
    void outcome(std::shared_ptr<Job> job, const std::string &provider, const SendOutcome &out);
    void give_up(std::shared_ptr<Job> job, const std::string &reason, int code);
    // Writes the record, retrying while the store is down, then runs `next`.
    void record(std::shared_ptr<Job> job, std::function<void()> next);
    // Runs a queue step (ack, defer, dead letter), retrying while Redis is down.
    void finish(std::shared_ptr<Job> job, std::function<void(Queue::Done)> step);
    void later(double seconds, std::function<void()> fn);

    struct ev_loop *loop_;
    const Config &cfg_;
    const mailapi::Keyring &keyring_;
    Store &store_;
    Queue *&queue_;
    std::shared_ptr<const ProviderSet> providers_;
    std::mt19937_64 rng_{std::random_device{}()};
    struct Metrics &metrics_;
    std::unordered_set<std::string> in_flight_;  // stream ids being worked on
};

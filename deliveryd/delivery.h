// Each queue entry from a pointer to a recorded outcome: fetch the envelope
// (within the byte budget), decrypt, send through the route's providers,
// then record-then-ack, record-then-defer or record-then-dead-letter. The
// record is always in the store before the entry leaves the queue.
#pragma once
#include <ev.h>

#include <deque>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "crypto.h"
#include "provider_set.h"
#include "queue.h"
#include "store.h"

class Delivery {
public:
    Delivery(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, RecordStore &store,
             std::shared_ptr<const ProviderSet> providers, struct Metrics &metrics);
    void set_queue(DeliveryQueue *queue) { queue_ = queue; }
    ~Delivery();

    void handle(QueueEntry entry, bool claimed);
    int in_flight() const { return static_cast<int>(jobs_.size()); }
    // Bytes the messages under way hold (about twice the envelope each).
    size_t bytes_in_flight() const { return bytes_; }
    std::vector<std::pair<std::string, std::string>> working() const;  // their (stream id, message id)
    std::function<void()> on_idle;  // a message finished: there is room again
    // A record was written (its events, the message's recipients): called
    // before the entry is let go; done(false) calls it again a second later.
    using Recorded = std::function<void(const std::string &tenant, const std::string &id,
                                        const std::vector<mailapi::records::Event> &events,
                                        const std::vector<std::string> &recipients, std::function<void(bool)> done)>;
    Recorded on_recorded;
    // Reads the keyring file again (at most every few seconds); true when it
    // changed. Asked when a message is sealed with a key id the keyring lacks.
    std::function<bool()> refresh_keyring;
    // SIGHUP: messages from now on go through `providers`; those under way
    // keep the set they started with.
    void set_providers(std::shared_ptr<const ProviderSet> providers) { providers_ = std::move(providers); }

private:
    struct Job;
    using JobPtr = std::shared_ptr<Job>;

    void check_claimed(JobPtr job);
    void admit(JobPtr job);
    void charge(JobPtr job);  // charged to the byte budget, fetched
    bool fits(const QueueEntry &e) const;
    // the envelope, and the message decrypted from it
    static size_t charge_of(const QueueEntry &e) { return 2 * e.size + 4096; }
    void fetch(JobPtr job);
    void sent_before(JobPtr job, const std::string &marker);
    void decide(JobPtr job);
    bool key_known(JobPtr job);
    void screen(JobPtr job, std::function<void()> next);  // suppressed recipients taken out first
    void suppressed(JobPtr job, size_t recipient, const std::string &reason, bool with_event);
    void suppress_bounced(JobPtr job, size_t recipient, int code, const std::string &reason);
    void start(JobPtr job);
    void held(JobPtr job, std::function<void()> next);  // the lease is still this consumer's: next
    void send(JobPtr job, size_t provider);
    void ask(JobPtr job, size_t provider);
    struct Personal;
    void ask_each(JobPtr job, size_t provider, std::shared_ptr<Personal> each);  // a copy a recipient
    void asked_each(JobPtr job, size_t provider, std::shared_ptr<Personal> each);
    void observe(JobPtr job, Provider *p, const SendOutcome &out, int64_t started);
    void answered(JobPtr job, size_t provider, const std::string &name, const SendOutcome &out);
    void mark_sent(JobPtr job, const std::string &marker);
    void next_provider(JobPtr job, size_t index, const std::string &provider, const SendOutcome &out);
    void each_recipient(JobPtr job, size_t index, const std::string &provider, const SendOutcome &out);
    void event(JobPtr job, std::string id, const char *type, const std::string &provider, int code,
               const std::string &reason, int rcpt = -1);

    // What happens to the recipients of the message.
    bool finished_with(const JobPtr &job, size_t recipient) const;
    void accept(JobPtr job, size_t recipient, const std::string &provider, int code, int64_t at);
    void refuse(JobPtr job, size_t recipient, int code, const std::string &reason, bool dead);
    void mark_taken(JobPtr job);
    void partly_taken(JobPtr job);

    // How the attempt ends: every recipient finished; all refused; some left
    // for a retry; given up; every circuit open.
    void terminal(JobPtr job);
    void refuse_all(JobPtr job, const std::string &provider, int code, const std::string &reason);
    void retry(JobPtr job, const std::string &provider, const SendOutcome &out);
    void give_up(JobPtr job, const std::string &reason, int code);
    void wait_for_circuits(JobPtr job);

    // The steps that end a job, each retried while Redis or the store is down.
    void record_then(JobPtr job, std::function<void()> next);
    void recorded(JobPtr job, std::function<void()> next);
    void ack(JobPtr job);
    void drop(JobPtr job);
    void defer(JobPtr job, int64_t due_ms, int attempt);
    void dead_letter(JobPtr job, const std::string &reason);
    void finish(JobPtr job, std::function<void(DeliveryQueue::Done)> step);
    void release(JobPtr job);
    void later(double seconds, std::function<void()> fn);

    struct ev_loop *loop_;
    const Config &cfg_;
    const mailapi::Keyring &keyring_;
    RecordStore &store_;
    DeliveryQueue *queue_ = nullptr;
    std::shared_ptr<const ProviderSet> providers_;
    std::mt19937_64 rng_{std::random_device{}()};
    struct Metrics &metrics_;
    std::unordered_map<std::string, JobPtr> jobs_;  // by stream id
    std::unordered_set<std::string> messages_;      // their message ids: one job a message
    std::deque<JobPtr> waiting_;                     // for room in the byte budget
    size_t bytes_ = 0;
};

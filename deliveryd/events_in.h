// The providers' events the module verified and queued
// (contract::events_stream), added to their messages' timelines. Each is
// looked up in the store (whosever message it is: the provider names our
// message id, not its tenant), named by its recipient's index, and written as
// an event document whose id is fixed by the provider's own event id, so a
// duplicate (a provider's retry, a takeover) writes nothing new. An event
// that comes before its message's record waits for it (a provider can be
// faster than our record), for a day at most; one for a message neither
// queued nor recorded is dropped at once.
#pragma once
#include <ev.h>

#include <functional>
#include <map>
#include <memory>
#include <vector>
#include <string>

#include "config.h"
#include "crypto.h"
#include "redis_async.h"
#include "store.h"

class EventsIn {
public:
    EventsIn(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, RecordStore &store);
    ~EventsIn();
    EventsIn(const EventsIn &) = delete;
    EventsIn &operator=(const EventsIn &) = delete;

    void start();
    void stop();  // reads no more; those under way finish (or are taken over)
    int in_flight() const { return static_cast<int>(working_.size()); }
    // An event was added to a timeline: as Delivery::on_recorded.
    std::function<void(const std::string &tenant, const std::string &id,
                       const std::vector<mailapi::records::Event> &events, const std::vector<std::string> &recipients,
                       std::function<void(bool)> done)>
        on_recorded;

private:
    struct Entry {
        std::string stream_id, source, message_id, sealed;
        int64_t queued_ms = 0;  // the stream id's time
    };

    void read(const char *from);
    void take(const redisReply *entries);
    void handle(Entry e);
    void lookup(const Entry &e, bool pending);
    void apply(const Entry &e, const mailapi::records::Stored &found);
    void suppress_then(const Entry &e, std::shared_ptr<RecordWrite> w, const std::string &address,
                       std::function<void()> next);
    void recorded(const Entry &e, std::shared_ptr<RecordWrite> w, std::vector<std::string> recipients);
    void finish(const Entry &e);
    void later(double seconds, std::function<void()> fn);
    static void poll_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void claim_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void touch_cb(struct ev_loop *, ev_timer *w, int) noexcept;

    struct ev_loop *loop_;
    const Config &cfg_;
    const mailapi::Keyring &keyring_;
    RecordStore &store_;
    std::string stream_;
    RedisAsync redis_;
    ev_timer poll_, claim_, touch_;
    bool group_ready_ = false, reading_ = false, stopping_ = false;
    std::string claim_cursor_ = "0-0";
    std::map<std::string, Entry> working_;  // by stream id
};

// The store's records (records.h, docs/storage.md), written from threads of
// their own (libmongoc blocks) in batches, each thread with its connection.
// Every write is an insert: a message's document with its first outcome,
// then one document per later event, each with an id fixed by what happened,
// so a write repeated after an error or a takeover changes nothing.
#pragma once
#include <ev.h>
#include <mongoc/mongoc.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config.h"
#include "records.h"

// A client of the store at `uri_text` (server selection and socket timeouts
// added where the URI sets none) and its database (the URI's, else
// "mailapi"); nullptr and err when the URI is bad.
mongoc_client_t *store_client_open(const std::string &uri_text, const char *appname, std::string &database,
                                   std::string &err);

// What one outcome writes: the message's document (first time; an existing
// one turns the events into event documents) or event documents.
struct RecordWrite {
    mailapi::records::Message message;
    std::vector<mailapi::records::Event> events;
    bool with_message = false;
};

// What a delivery needs of the store (Store; a fake in t/unit/test_delivery.cpp).
class RecordStore {
public:
    using WriteDone = std::function<void(bool ok, const std::string &error)>;
    using LookupDone = std::function<void(bool ok, const mailapi::records::Stored &found)>;

    virtual ~RecordStore() = default;
    // `w` is read until `done` runs (not copied: it may hold a large envelope).
    virtual void write(std::shared_ptr<const RecordWrite> w, WriteDone done) = 0;
    // What the store has of a message, without its envelope (found.has_message
    // false, no events: nothing). `tenant` empty: whosever it is (a provider's
    // event names our message id, not its tenant).
    virtual void lookup(const std::string &tenant, const std::string &id, LookupDone done) = 0;
};

class Store : public RecordStore {
public:
    Store(struct ev_loop *loop, const Config &cfg);
    ~Store() override;
    Store(const Store &) = delete;
    Store &operator=(const Store &) = delete;

    void write(std::shared_ptr<const RecordWrite> w, WriteDone done) override;
    void lookup(const std::string &tenant, const std::string &id, LookupDone done) override;
    bool healthy() const { return healthy_; }  // the last batch went through
    // A writer was still stuck on the store at shutdown (and left running):
    // libmongoc must not be cleaned up under it.
    static bool abandoned() { return abandoned_; }

private:
    struct Op {
        bool is_write = true;
        std::shared_ptr<const RecordWrite> w;
        std::string tenant, id;  // lookups
        WriteDone write_done;
        LookupDone lookup_done;
        bool ok = false;
        bool expired = false;  // past its retention (by the retention clock): nothing is written
        std::string error;
        mailapi::records::Stored found;
    };

    struct Writer {
        mongoc_client_t *client = nullptr;
        mongoc_collection_t *messages = nullptr;
        std::thread thread;
        void disconnect();
    };

    void run(Writer &w);
    bool connect(Writer &w, std::string &err);
    bool prepare(mongoc_client_t *client, const std::string &database, std::string &err);
    void execute(Writer &w, std::vector<std::unique_ptr<Op>> &batch);
    static void async_cb(struct ev_loop *, ev_async *w, int) noexcept;

    struct ev_loop *loop_;
    const std::string uri_;
    const int64_t clock_offset_ms_;  // retention_clock_offset
    ev_async async_;
    std::mutex mu_;
    std::condition_variable cv_, exited_cv_;
    size_t exited_ = 0;
    static inline bool abandoned_ = false;
    std::deque<std::unique_ptr<Op>> todo_, done_;
    bool stop_ = false;
    std::atomic<bool> healthy_{true};
    std::mutex connect_mu_;
    bool prepared_ = false;        // indexes made (once a process, under connect_mu_)
    std::vector<Writer> writers_;  // sized once: threads hold references
};

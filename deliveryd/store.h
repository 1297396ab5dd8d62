// MongoDB records, written from threads of their own (libmongoc blocks) in
// batches, each thread with its connection. A message's writes never overlap
// (each waits for the previous one), so they stay in order. One document per message, keyed by message id: the encrypted
// envelope, blind indexes of its recipients, status and event timeline.
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

struct RecordEvent {
    std::string type;      // deferred, sent, failed, ...
    int64_t at_ms = 0;
    std::string provider;  // may be empty
    int code = 0;          // provider's status code, 0 = none
    std::string reason;    // short, never personal data
};

// An update of one message's record: created with the first update, events
// appended by every one.
struct RecordUpdate {
    bool first = false;  // no record can exist yet: insert (cheap), upsert only on a duplicate
    std::string id, tenant, envelope, status;
    std::vector<std::string> rcpt;  // blind indexes
    int64_t created_ms = 0;
    std::vector<RecordEvent> events;
};

class Store {
public:
    using WriteDone = std::function<void(bool ok, const std::string &error)>;
    using StatusDone = std::function<void(bool ok, const std::string &status)>;  // "" = no record

    Store(struct ev_loop *loop, const Config &cfg);
    ~Store();
    Store(const Store &) = delete;
    Store &operator=(const Store &) = delete;

    void write(RecordUpdate rec, WriteDone done);
    void status(const std::string &id, StatusDone done);
    bool healthy() const { return healthy_; }  // the last batch went through

private:
    struct Op {
        bool is_write = true;
        RecordUpdate rec;
        WriteDone write_done;
        StatusDone status_done;
        bool ok = false;
        std::string result;  // error, or the status found
    };

    struct Writer {
        mongoc_client_t *client = nullptr;
        mongoc_collection_t *coll = nullptr;
        std::thread thread;
        void disconnect();
    };

    void run(Writer &w);
    bool connect(Writer &w, std::string &err);
    void execute(Writer &w, std::vector<std::unique_ptr<Op>> &batch);
    static void async_cb(struct ev_loop *, ev_async *w, int) noexcept;

    struct ev_loop *loop_;
    const std::string uri_;
    ev_async async_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<std::unique_ptr<Op>> todo_, done_;
    bool stop_ = false;
    std::atomic<bool> healthy_{true};
    std::mutex connect_mu_;
    std::vector<Writer> writers_;  // sized once: threads hold references
};

// Threads for libcurl transfers that block. libcurl's SMTP waits for the
// reply to the end of DATA synchronously even on the multi interface (curl
// issue 8555, on its to-do list), which would stall the whole event loop for as
// long as a relay takes to answer; so SMTP sends run here, each thread with
// its own easy handle whose connection is reused, and the outcomes come
// back to the loop through an ev_async.
#pragma once
#include <curl/curl.h>
#include <ev.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "provider.h"

class BlockingPool {
public:
    // Runs on a pool thread with that thread's easy handle; must return
    // soon once `stopping` is set (e.g. from CURLOPT_XFERINFOFUNCTION).
    using Work = std::function<SendOutcome(CURL *easy, const std::atomic<bool> &stopping)>;

    BlockingPool(struct ev_loop *loop, int threads);
    ~BlockingPool();  // aborts transfers under way; their `done` is not called
    BlockingPool(const BlockingPool &) = delete;
    BlockingPool &operator=(const BlockingPool &) = delete;

    // `done` runs on the loop thread.
    void run(Work work, std::function<void(SendOutcome)> done);

private:
    struct Task {
        Work work;
        std::function<void(SendOutcome)> done;
        SendOutcome out;
    };
    void worker();
    static void async_cb(struct ev_loop *loop, ev_async *w, int revents) noexcept;

    struct ev_loop *loop_;
    std::mutex mu_;
    std::condition_variable wake_;
    std::deque<std::unique_ptr<Task>> todo_, finished_;
    std::atomic<bool> stopping_{false};
    ev_async async_;
    std::vector<std::thread> threads_;
};

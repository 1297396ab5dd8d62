#include "blocking_pool.h"

BlockingPool::BlockingPool(struct ev_loop *loop, int threads) : loop_(loop) {
    ev_async_init(&async_, async_cb);
    async_.data = this;
    ev_async_start(loop_, &async_);
    for (int i = 0; i < threads; i++) threads_.emplace_back([this] { worker(); });
}

BlockingPool::~BlockingPool() {
    stopping_ = true;
    wake_.notify_all();
    for (std::thread &t : threads_) t.join();
    ev_async_stop(loop_, &async_);
}

void BlockingPool::run(Work work, std::function<void(SendOutcome)> done) {
    auto task = std::make_unique<Task>();
    task->work = std::move(work);
    task->done = std::move(done);
    {
        std::lock_guard<std::mutex> lock(mu_);
        todo_.push_back(std::move(task));
    }
    wake_.notify_one();
}

void BlockingPool::worker() {
    struct EasyFree {
        void operator()(CURL *c) const { curl_easy_cleanup(c); }
    };
    std::unique_ptr<CURL, EasyFree> easy(curl_easy_init());
    for (;;) {
        std::unique_ptr<Task> task;
        {
            std::unique_lock<std::mutex> lock(mu_);
            wake_.wait(lock, [this] { return stopping_ || !todo_.empty(); });
            if (stopping_) return;
            task = std::move(todo_.front());
            todo_.pop_front();
        }
        if (easy) {
            curl_easy_reset(easy.get());  // keeps the connection for the next send
            task->out = task->work(easy.get(), stopping_);
        } else {
            task->out = {SendResult::transient, 0, "no curl handle"};
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            finished_.push_back(std::move(task));
        }
        ev_async_send(loop_, &async_);
    }
}

void BlockingPool::async_cb(struct ev_loop *, ev_async *w, int) noexcept {
    auto *self = static_cast<BlockingPool *>(w->data);
    std::deque<std::unique_ptr<Task>> finished;
    {
        std::lock_guard<std::mutex> lock(self->mu_);
        finished.swap(self->finished_);
    }
    // Each task belongs to a message that keeps this pool alive until its
    // `done` has run; after the last one the pool may be gone: no `self` below.
    for (auto &task : finished) task->done(task->out);
}

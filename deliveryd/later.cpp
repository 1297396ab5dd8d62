#include "later.h"

namespace {

struct Timer {
    ev_timer w;
    std::function<void()> fn;
};

void timer_cb(struct ev_loop *loop, ev_timer *w, int) noexcept {
    auto *t = static_cast<Timer *>(w->data);
    ev_timer_stop(loop, w);
    std::function<void()> fn = std::move(t->fn);
    delete t;
    fn();
}

}  // namespace

void run_later(struct ev_loop *loop, double seconds, std::function<void()> fn) {
    auto *t = new Timer{};
    t->fn = std::move(fn);
    ev_timer_init(&t->w, timer_cb, seconds, 0);
    t->w.data = t;
    ev_timer_start(loop, &t->w);
}

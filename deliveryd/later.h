// Runs a function once, `seconds` from now, on the loop: a retry after a
// moment (Redis or the store down), without a timer member per retry.
#pragma once
#include <ev.h>

#include <functional>

void run_later(struct ev_loop *loop, double seconds, std::function<void()> fn);

// Host names to addresses without blocking the event loop: getaddrinfo runs
// on a thread of its own, and answers come back through an ev_async. An
// answer is kept for a minute (relays are few, connections reused); an IP
// literal needs no lookup at all.
#pragma once
#include <ev.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

struct ResolvedAddress {
    sockaddr_storage addr{};
    socklen_t len = 0;
};

class Resolver {
public:
    // ok false: `error` says why (the host is unknown, or the lookup failed).
    using Done = std::function<void(bool ok, const std::string &error, const std::vector<ResolvedAddress> &addrs)>;

    explicit Resolver(struct ev_loop *loop);
    ~Resolver();  // lookups under way are abandoned: their `done` is not called
    Resolver(const Resolver &) = delete;
    Resolver &operator=(const Resolver &) = delete;

    // `done` runs on the loop thread, at once for a literal or a cached name.
    void resolve(const std::string &host, int port, Done done);

private:
    struct Shared;
    static void async_cb(struct ev_loop *, ev_async *w, int) noexcept;

    struct ev_loop *loop_;
    std::shared_ptr<Shared> shared_;  // also held by the lookup thread, which may outlive this
};

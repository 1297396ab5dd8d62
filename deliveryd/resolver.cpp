#include "resolver.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

namespace {

constexpr ev_tstamp CACHE_SECONDS = 60;

struct Lookup {
    std::string host;
    int port = 0;
    Resolver::Done done;
    bool ok = false;
    std::string error;
    std::vector<ResolvedAddress> addrs;
};

bool literal(const std::string &host, int port, ResolvedAddress &out) {
    auto *v4 = reinterpret_cast<sockaddr_in *>(&out.addr);
    auto *v6 = reinterpret_cast<sockaddr_in6 *>(&out.addr);
    if (inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(static_cast<uint16_t>(port));
        out.len = sizeof *v4;
        return true;
    }
    if (inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(static_cast<uint16_t>(port));
        out.len = sizeof *v6;
        return true;
    }
    return false;
}

void lookup(Lookup &l) {
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    std::string port = std::to_string(l.port);
    int rc = getaddrinfo(l.host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
        l.error = std::string("cannot resolve the host: ") + gai_strerror(rc);
        return;
    }
    for (addrinfo *a = res; a; a = a->ai_next) {
        if (a->ai_addrlen > sizeof(sockaddr_storage)) continue;
        ResolvedAddress r;
        std::memcpy(&r.addr, a->ai_addr, a->ai_addrlen);
        r.len = a->ai_addrlen;
        l.addrs.push_back(r);
    }
    freeaddrinfo(res);
    l.ok = !l.addrs.empty();
    if (!l.ok) l.error = "the host has no address";
}

}  // namespace

struct Resolver::Shared : std::enable_shared_from_this<Resolver::Shared> {
    std::mutex mu;
    std::condition_variable wake;
    std::deque<std::unique_ptr<Lookup>> todo, done;
    bool stopping = false;
    ev_async async;
    struct ev_loop *loop = nullptr;
    // loop thread only
    std::map<std::string, std::pair<ev_tstamp, std::vector<ResolvedAddress>>> cache;

    void run() {
        for (;;) {
            std::unique_ptr<Lookup> l;
            {
                std::unique_lock<std::mutex> lock(mu);
                wake.wait(lock, [this] { return stopping || !todo.empty(); });
                if (stopping) return;
                l = std::move(todo.front());
                todo.pop_front();
            }
            lookup(*l);
            std::lock_guard<std::mutex> lock(mu);
            if (stopping) return;
            done.push_back(std::move(l));
            ev_async_send(loop, &async);
        }
    }
};

Resolver::Resolver(struct ev_loop *loop) : loop_(loop), shared_(std::make_shared<Shared>()) {
    shared_->loop = loop;
    ev_async_init(&shared_->async, async_cb);
    shared_->async.data = shared_.get();
    ev_async_start(loop_, &shared_->async);
    std::thread([s = shared_] { s->run(); }).detach();  // may sit in getaddrinfo past our end
}

Resolver::~Resolver() {
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        shared_->stopping = true;
        shared_->todo.clear();
        shared_->done.clear();
    }
    shared_->wake.notify_all();
    ev_async_stop(loop_, &shared_->async);
}

void Resolver::resolve(const std::string &host, int port, Done done) {
    ResolvedAddress lit;
    if (literal(host, port, lit)) {
        done(true, "", {lit});
        return;
    }
    std::string key = host + ":" + std::to_string(port);
    auto it = shared_->cache.find(key);
    if (it != shared_->cache.end() && ev_now(loop_) - it->second.first < CACHE_SECONDS) {
        done(true, "", it->second.second);
        return;
    }
    auto l = std::make_unique<Lookup>();
    l->host = host;
    l->port = port;
    l->done = std::move(done);
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        shared_->todo.push_back(std::move(l));
    }
    shared_->wake.notify_one();
}

void Resolver::async_cb(struct ev_loop *loop, ev_async *w, int) noexcept {
    // a `done` below may destroy the Resolver, and the lookup thread then
    // lets go of its share: this one keeps `s` until the end
    std::shared_ptr<Shared> s = static_cast<Shared *>(w->data)->shared_from_this();
    std::deque<std::unique_ptr<Lookup>> done;
    {
        std::lock_guard<std::mutex> lock(s->mu);
        done.swap(s->done);
    }
    for (auto &l : done) {
        {
            std::lock_guard<std::mutex> lock(s->mu);
            if (s->stopping) return;  // an earlier `done` destroyed the Resolver
        }
        if (l->ok) s->cache[l->host + ":" + std::to_string(l->port)] = {ev_now(loop), l->addrs};
        l->done(l->ok, l->error, l->addrs);
    }
}

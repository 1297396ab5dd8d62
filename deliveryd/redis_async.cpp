#include "redis_async.h"

#include <hiredis/adapters/libev.h>

#include <cstdlib>

#include "log.h"
#include "redis_address.h"

RedisAsync::RedisAsync(struct ev_loop *loop, std::string name, std::string address, double reply_timeout)
    : loop_(loop), name_(std::move(name)), address_(std::move(address)), reply_timeout_(reply_timeout) {
    ev_timer_init(&reconnect_, reconnect_cb, 0, 0);
    reconnect_.data = this;
    ev_timer_init(&watchdog_, watchdog_cb, 1, 1);
    watchdog_.data = this;
}

RedisAsync::~RedisAsync() {
    ev_timer_stop(loop_, &reconnect_);
    ev_timer_stop(loop_, &watchdog_);
    on_connect = nullptr;
    if (ac_) {
        redisAsyncContext *ac = ac_;
        ac_ = nullptr;
        ac->data = nullptr;  // callbacks see a context that is going away
        redisAsyncFree(ac);
    }
}

void RedisAsync::start() {
    ev_timer_start(loop_, &watchdog_);
    connect();
}

void RedisAsync::connect() {
    mailapi::RedisAddress addr;
    std::string err;
    if (!mailapi::redis_address_parse(address_, addr, err)) {
        log_error("redis address is not valid", {{"conn", name_}, {"error", err}});
        gone();
        return;
    }
    redisAsyncContext *ac =
        addr.port ? redisAsyncConnect(addr.host.c_str(), addr.port) : redisAsyncConnectUnix(addr.host.c_str());
    if (ac == nullptr || ac->err) {
        log_error("redis connect failed", {{"conn", name_}, {"error", ac ? ac->errstr : "out of memory"}});
        if (ac) redisAsyncFree(ac);
        gone();
        return;
    }
    ac->data = this;
    redisLibevAttach(loop_, ac);
    redisAsyncSetConnectCallback(ac, connect_cb);
    redisAsyncSetDisconnectCallback(ac, disconnect_cb);
    ac_ = ac;
}

void RedisAsync::gone() {
    ac_ = nullptr;
    if (connected_) log_warn("redis connection lost", {{"conn", name_}});
    connected_ = false;
    outstanding_ = 0;
    ev_timer_set(&reconnect_, backoff_, 0);
    ev_timer_start(loop_, &reconnect_);
    backoff_ = std::min(backoff_ * 2, 5.0);
}

void RedisAsync::connect_cb(const redisAsyncContext *ac, int status) noexcept {
    auto *self = static_cast<RedisAsync *>(ac->data);
    if (self == nullptr) return;
    if (status != REDIS_OK) {
        log_error("redis connect failed", {{"conn", self->name_}, {"error", ac->errstr}});
        self->gone();  // hiredis frees the context after this returns
        return;
    }
    self->connected_ = true;
    self->backoff_ = 0.1;
    self->last_reply_ = ev_now(self->loop_);
    if (self->on_connect) self->on_connect();
}

void RedisAsync::disconnect_cb(const redisAsyncContext *ac, int) noexcept {
    auto *self = static_cast<RedisAsync *>(ac->data);
    if (self) self->gone();
}

void RedisAsync::reconnect_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    static_cast<RedisAsync *>(w->data)->connect();
}

void RedisAsync::watchdog_cb(struct ev_loop *loop, ev_timer *w, int) noexcept {
    auto *self = static_cast<RedisAsync *>(w->data);
    if (self->ac_ && self->connected_ && self->outstanding_ && ev_now(loop) - self->last_reply_ > self->reply_timeout_) {
        log_error("redis gave no reply in time, reconnecting", {{"conn", self->name_}});
        redisAsyncDisconnect(self->ac_);  // pending callbacks get NULL; disconnect_cb reconnects
    }
}

void RedisAsync::reply_cb(redisAsyncContext *ac, void *reply, void *privdata) noexcept {
    auto *cb = static_cast<Callback *>(privdata);
    auto *self = static_cast<RedisAsync *>(ac->data);
    if (self && reply) {
        if (self->outstanding_) self->outstanding_--;
        self->last_reply_ = ev_now(self->loop_);
    }
    // self == nullptr: the owner is being destroyed; its callbacks must not run
    if (self && *cb) (*cb)(static_cast<redisReply *>(reply));
    delete cb;
}

bool RedisAsync::command(const std::vector<std::string> &args, Callback cb) {
    if (!ac_ || !connected_) return false;
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (const std::string &a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    if (outstanding_ == 0) last_reply_ = ev_now(loop_);
    auto *heap_cb = new Callback(std::move(cb));
    if (redisAsyncCommandArgv(ac_, reply_cb, heap_cb, static_cast<int>(argv.size()), argv.data(), lens.data()) !=
        REDIS_OK) {
        delete heap_cb;
        return false;
    }
    outstanding_++;
    return true;
}

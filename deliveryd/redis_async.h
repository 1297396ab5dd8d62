// One hiredis async connection on the libev loop, reconnecting with backoff.
// hiredis 0.14 has no command timeouts: a watchdog drops a connection whose
// replies stop coming.
#pragma once
#include <ev.h>
#include <hiredis/async.h>

#include <functional>
#include <string>
#include <vector>

class RedisAsync {
public:
    using Callback = std::function<void(redisReply *)>;  // nullptr: the connection failed

    RedisAsync(struct ev_loop *loop, std::string name, std::string address, double reply_timeout);
    ~RedisAsync();
    RedisAsync(const RedisAsync &) = delete;
    RedisAsync &operator=(const RedisAsync &) = delete;

    void start();
    bool connected() const { return connected_; }
    // False (and no callback) when not connected.
    bool command(const std::vector<std::string> &args, Callback cb);

    std::function<void()> on_connect;

private:
    static void connect_cb(const redisAsyncContext *ac, int status) noexcept;
    static void disconnect_cb(const redisAsyncContext *ac, int status) noexcept;
    static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata) noexcept;
    static void reconnect_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    static void watchdog_cb(struct ev_loop *, ev_timer *w, int) noexcept;
    void connect();
    void gone();

    struct ev_loop *loop_;
    std::string name_, address_;
    double reply_timeout_;
    redisAsyncContext *ac_ = nullptr;
    bool connected_ = false;
    double backoff_ = 0.1;
    unsigned outstanding_ = 0;
    ev_tstamp last_reply_ = 0;
    ev_timer reconnect_, watchdog_;
};

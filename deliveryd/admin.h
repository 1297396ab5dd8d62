// A tiny HTTP/1.0 listener on the loop, for operators: GET /metrics
// (Prometheus text) and GET /healthz. Bind it to loopback or a private port.
#pragma once
#include <ev.h>

#include <functional>
#include <string>

class Admin {
public:
    // handler(path, status&, content_type&) returns the body
    using Handler = std::function<std::string(const std::string &path, int &status, std::string &type)>;

    Admin(struct ev_loop *loop, Handler handler);
    ~Admin();
    bool listen(const std::string &address, std::string &err);

private:
    struct Conn;
    static void accept_cb(struct ev_loop *loop, ev_io *w, int) noexcept;
    static void read_cb(struct ev_loop *loop, ev_io *w, int) noexcept;
    static void timeout_cb(struct ev_loop *loop, ev_timer *w, int) noexcept;
    static void close_conn(struct ev_loop *loop, Conn *c);

    struct ev_loop *loop_;
    Handler handler_;
    int fd_ = -1;
    ev_io accept_;
};

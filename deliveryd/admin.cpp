#include "admin.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

struct Admin::Conn {
    ev_io io;
    ev_timer timer;
    Admin *owner;
    std::string request;
};

Admin::Admin(struct ev_loop *loop, Handler handler) : loop_(loop), handler_(std::move(handler)) {}

Admin::~Admin() {
    if (fd_ >= 0) {
        ev_io_stop(loop_, &accept_);
        close(fd_);
    }
}

bool Admin::listen(const std::string &address, std::string &err) {
    size_t colon = address.rfind(':');
    struct sockaddr_in sa = {};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(std::atoi(address.c_str() + colon + 1)));
    if (colon == std::string::npos || inet_pton(AF_INET, address.substr(0, colon).c_str(), &sa.sin_addr) != 1) {
        err = "admin_listen must be IPv4:port, e.g. 127.0.0.1:9464";
        return false;
    }
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<struct sockaddr *>(&sa), sizeof sa) != 0 || ::listen(fd_, 64) != 0) {
        err = "cannot listen on " + address + ": " + std::strerror(errno);
        return false;
    }
    ev_io_init(&accept_, accept_cb, fd_, EV_READ);
    accept_.data = this;
    ev_io_start(loop_, &accept_);
    return true;
}

void Admin::accept_cb(struct ev_loop *loop, ev_io *w, int) noexcept {
    auto *self = static_cast<Admin *>(w->data);
    int fd = accept4(self->fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    auto *c = new Conn{};
    c->owner = self;
    ev_io_init(&c->io, read_cb, fd, EV_READ);
    c->io.data = c;
    ev_timer_init(&c->timer, timeout_cb, 5, 0);
    c->timer.data = c;
    ev_io_start(loop, &c->io);
    ev_timer_start(loop, &c->timer);
}

void Admin::close_conn(struct ev_loop *loop, Conn *c) {
    ev_io_stop(loop, &c->io);
    ev_timer_stop(loop, &c->timer);
    close(c->io.fd);
    delete c;
}

void Admin::timeout_cb(struct ev_loop *loop, ev_timer *w, int) noexcept { close_conn(loop, static_cast<Conn *>(w->data)); }

void Admin::read_cb(struct ev_loop *loop, ev_io *w, int) noexcept {
    auto *c = static_cast<Conn *>(w->data);
    char buf[2048];
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n <= 0 || c->request.size() > 8192) {
        close_conn(loop, c);
        return;
    }
    c->request.append(buf, static_cast<size_t>(n));
    if (c->request.find("\r\n\r\n") == std::string::npos && c->request.find("\n\n") == std::string::npos) return;
    std::string path;
    int status = 404;
    std::string type = "text/plain", body = "not found\n";
    if (c->request.compare(0, 4, "GET ") == 0) {
        path = c->request.substr(4, c->request.find(' ', 4) - 4);
        body = c->owner->handler_(path, status, type);
    } else {
        status = 405;
        body = "GET only\n";
    }
    std::string resp = "HTTP/1.0 " + std::to_string(status) + (status == 200 ? " OK" : " Error") +
                       "\r\nContent-Type: " + type + "\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: close\r\n\r\n" + body;
    // small answers to a local scraper: one blocking-free write is enough
    ssize_t written = write(w->fd, resp.data(), resp.size());
    (void)written;
    close_conn(loop, c);
}

#include "curl_multi.h"

struct CurlMulti::Watch {
    ev_io io;
    CurlMulti *owner;
};

CurlMulti::CurlMulti(struct ev_loop *loop, long max_per_host) : loop_(loop), multi_(curl_multi_init()) {
    ev_timer_init(&timer_, timeout_cb, 0, 0);
    timer_.data = this;
    curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, 256L);
    curl_multi_setopt(multi_, CURLMOPT_MAX_HOST_CONNECTIONS, max_per_host);
}

CurlMulti::~CurlMulti() {
    ev_timer_stop(loop_, &timer_);
    curl_multi_cleanup(multi_);  // transfers still running are the callers' to free
}

bool CurlMulti::add(CURL *easy, Done done) {
    auto *d = new Done(std::move(done));
    curl_easy_setopt(easy, CURLOPT_PRIVATE, d);
    if (curl_multi_add_handle(multi_, easy) != CURLM_OK) {
        delete d;
        return false;
    }
    return true;
}

int CurlMulti::socket_cb(CURL *, curl_socket_t s, int what, void *userp, void *socketp) noexcept {
    auto *self = static_cast<CurlMulti *>(userp);
    auto *w = static_cast<Watch *>(socketp);
    if (what == CURL_POLL_REMOVE) {
        if (w) {
            ev_io_stop(self->loop_, &w->io);
            delete w;
        }
        return 0;
    }
    int events = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    if (w == nullptr) {
        w = new Watch{};
        w->owner = self;
        curl_multi_assign(self->multi_, s, w);
    } else {
        ev_io_stop(self->loop_, &w->io);
    }
    ev_io_init(&w->io, io_cb, s, events);
    w->io.data = w;
    ev_io_start(self->loop_, &w->io);
    return 0;
}

int CurlMulti::timer_cb(CURLM *, long timeout_ms, void *userp) noexcept {
    auto *self = static_cast<CurlMulti *>(userp);
    ev_timer_stop(self->loop_, &self->timer_);
    if (timeout_ms >= 0) {
        ev_timer_set(&self->timer_, static_cast<double>(timeout_ms) / 1000.0, 0);
        ev_timer_start(self->loop_, &self->timer_);
    }
    return 0;
}

void CurlMulti::io_cb(struct ev_loop *, ev_io *w, int revents) noexcept {
    auto *watch = static_cast<Watch *>(w->data);
    CurlMulti *self = watch->owner;
    int flags = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(self->multi_, w->fd, flags, &self->running_);
    self->check_done();
}

void CurlMulti::timeout_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<CurlMulti *>(w->data);
    curl_multi_socket_action(self->multi_, CURL_SOCKET_TIMEOUT, 0, &self->running_);
    self->check_done();
}

void CurlMulti::check_done() {
    int left;
    while (CURLMsg *msg = curl_multi_info_read(multi_, &left)) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        Done *d = nullptr;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, &d);
        curl_multi_remove_handle(multi_, easy);
        if (d) {
            Done done = std::move(*d);
            delete d;
            done(rc);  // may free `easy` and add new transfers
        }
    }
}

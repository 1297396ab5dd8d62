// libcurl's multi interface on the libev loop: many transfers in flight, each
// finishing with a callback.
#pragma once
#include <curl/curl.h>
#include <ev.h>

#include <functional>

class CurlMulti {
public:
    using Done = std::function<void(CURLcode)>;

    // max_per_host: connections to one host at once; further transfers wait
    // for one of them and reuse it.
    CurlMulti(struct ev_loop *loop, long max_per_host);
    ~CurlMulti();
    CurlMulti(const CurlMulti &) = delete;
    CurlMulti &operator=(const CurlMulti &) = delete;

    // Starts `easy`; `done` runs once it finished. The caller keeps owning
    // `easy` and frees it in or after `done`.
    bool add(CURL *easy, Done done);
    int running() const { return running_; }

private:
    struct Watch;
    static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) noexcept;
    static int timer_cb(CURLM *multi, long timeout_ms, void *userp) noexcept;
    static void io_cb(struct ev_loop *loop, ev_io *w, int revents) noexcept;
    static void timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) noexcept;
    void check_done();

    struct ev_loop *loop_;
    CURLM *multi_;
    ev_timer timer_;
    int running_ = 0;
};

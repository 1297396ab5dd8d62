// hiredis async on nginx's event loop: one connection per worker, level-
// triggered events (hiredis reads at most one buffer per callback), connect
// timeout and reconnect with backoff on nginx timers. Commands issued during
// one turn of the loop are pipelined: a posted event writes them all at once.
#include "ngx_mail_api.h"

#include <hiredis/async.h>

namespace {

constexpr ngx_msec_t BACKOFF_MIN = 100;
constexpr ngx_msec_t BACKOFF_MAX = 5000;

struct RedisConn {
    ngx_mail_api_main_conf_t *mcf;
    ngx_log_t *log;
    redisAsyncContext *ac;
    ngx_connection_t *c;
    ngx_event_t reconnect;
    ngx_event_t connect_timer;
    ngx_event_t flush;      // posted: writes what this loop turn queued
    bool flushing;          // inside flush: a write left over needs the socket
    ngx_msec_t backoff;
    ngx_msec_t last_reply;  // when the last reply arrived
    ngx_uint_t outstanding; // commands sent, not yet answered
    bool connected;
    bool exiting;
};

RedisConn *g_redis;

void redis_connect(RedisConn *r) noexcept;

void schedule_reconnect(RedisConn *r) noexcept {
    if (r->exiting || r->reconnect.timer_set) return;
    ngx_add_timer(&r->reconnect, r->backoff);
    r->backoff = ngx_min(r->backoff * 2, BACKOFF_MAX);
}

void on_read(ngx_event_t *ev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *r = static_cast<RedisConn *>(c->data);
    redisAsyncHandleRead(r->ac);
}

void on_write(ngx_event_t *ev) noexcept {
    auto *c = static_cast<ngx_connection_t *>(ev->data);
    auto *r = static_cast<RedisConn *>(c->data);
    redisAsyncHandleWrite(r->ac);
}

void ev_add_read(void *p) noexcept {
    auto *r = static_cast<RedisConn *>(p);
    if (r->c && !r->c->read->active) {
        ngx_add_event(r->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT);
    }
}

void ev_del_read(void *p) noexcept {
    auto *r = static_cast<RedisConn *>(p);
    if (r->c && r->c->read->active) {
        ngx_del_event(r->c->read, NGX_READ_EVENT, 0);
    }
}

void ev_add_write(void *p) noexcept {
    auto *r = static_cast<RedisConn *>(p);
    if (r->connected && !r->flushing) {
        if (!r->flush.posted) {
            ngx_post_event(&r->flush, &ngx_posted_events);
        }
        return;
    }
    if (r->c && !r->c->write->active) {
        ngx_add_event(r->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);
    }
}

void ev_del_write(void *p) noexcept {
    auto *r = static_cast<RedisConn *>(p);
    if (r->c && r->c->write->active) {
        ngx_del_event(r->c->write, NGX_WRITE_EVENT, 0);
    }
}

// hiredis calls this on every teardown (failed connect, lost connection, our
// own free), after failing pending commands and before closing the socket.
void ev_cleanup(void *p) noexcept {
    auto *r = static_cast<RedisConn *>(p);
    if (r->c) {
        ev_del_read(r);
        ev_del_write(r);
        // ngx_delete_posted_event is two statements: keep the braces.
        if (r->c->read->posted) {
            ngx_delete_posted_event(r->c->read);
        }
        if (r->c->write->posted) {
            ngx_delete_posted_event(r->c->write);
        }
        ngx_free_connection(r->c);
        r->c = nullptr;
    }
    if (r->flush.posted) {
        ngx_delete_posted_event(&r->flush);
    }
    if (r->connect_timer.timer_set) {
        ngx_del_timer(&r->connect_timer);
    }
    if (r->connected) {
        ngx_log_error(NGX_LOG_WARN, r->log, 0, "mail_api: redis connection lost");
    }
    r->ac = nullptr;
    r->connected = false;
    r->outstanding = 0;
    schedule_reconnect(r);
}

void on_connect(const redisAsyncContext *ac, int status) noexcept {
    auto *r = static_cast<RedisConn *>(ac->ev.data);
    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, r->log, 0, "mail_api: redis connect failed: %s", ac->errstr);
        return;  // hiredis frees the context, which calls ev_cleanup
    }
    if (r->connect_timer.timer_set) {
        ngx_del_timer(&r->connect_timer);
    }
    r->connected = true;
    r->backoff = BACKOFF_MIN;
    r->last_reply = ngx_current_msec;
    ngx_log_error(NGX_LOG_INFO, r->log, 0, "mail_api: redis connected");
    // Ahead of any EVALSHA on this connection: replies come in order.
    ngx_mail_api_redis_load_script();
}

void on_script_loaded(redisAsyncContext *ac, void *reply, void *) noexcept {
    auto *rep = static_cast<redisReply *>(reply);
    if (rep && rep->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_ERR, static_cast<RedisConn *>(ac->ev.data)->log, 0,
                      "mail_api: redis SCRIPT LOAD failed: %s", rep->str);
    }
}

void on_disconnect(const redisAsyncContext *ac, int status) noexcept {
    auto *r = static_cast<RedisConn *>(ac->ev.data);
    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, r->log, 0, "mail_api: redis disconnected: %s", ac->errstr);
    }
}

void on_connect_timeout(ngx_event_t *ev) noexcept {
    auto *r = static_cast<RedisConn *>(ev->data);
    ngx_log_error(NGX_LOG_ERR, r->log, 0, "mail_api: redis connect timed out");
    if (r->ac) redisAsyncFree(r->ac);  // ev_cleanup schedules the retry
}

void on_flush(ngx_event_t *ev) noexcept {
    auto *r = static_cast<RedisConn *>(ev->data);
    if (r->ac == nullptr) return;
    r->flushing = true;
    redisAsyncHandleWrite(r->ac);  // may free the context on a write error
    r->flushing = false;
}

void on_reconnect(ngx_event_t *ev) noexcept {
    redis_connect(static_cast<RedisConn *>(ev->data));
}

void redis_connect(RedisConn *r) noexcept {
    ngx_mail_api_main_conf_t *mcf = r->mcf;
    // ngx_str_t from the conf is NUL-terminated: it was copied with ngx_pstrdup + 1.
    auto *host = reinterpret_cast<const char *>(mcf->redis_host.data);
    redisAsyncContext *ac = mcf->redis_port ? redisAsyncConnect(host, static_cast<int>(mcf->redis_port))
                                            : redisAsyncConnectUnix(host);
    if (ac == nullptr || ac->err) {
        ngx_log_error(NGX_LOG_ERR, r->log, 0, "mail_api: redis connect failed: %s",
                      ac ? ac->errstr : "out of memory");
        if (ac) redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ngx_connection_t *c = ngx_get_connection(ac->c.fd, r->log);
    if (c == nullptr) {
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    c->data = r;
    c->read->handler = on_read;
    c->write->handler = on_write;
    c->read->log = r->log;
    c->write->log = r->log;
    r->c = c;
    r->ac = ac;
    ac->ev.data = r;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    redisAsyncSetConnectCallback(ac, on_connect);  // arms the write event
    ngx_add_timer(&r->connect_timer, mcf->redis_connect_timeout);
}

struct Pending {
    ngx_mail_api_redis_handler_pt handler;
    void *data;
};

void on_reply(redisAsyncContext *ac, void *reply, void *privdata) noexcept {
    auto *p = static_cast<Pending *>(privdata);
    auto *r = static_cast<RedisConn *>(ac->ev.data);
    if (reply && r->outstanding) {
        r->outstanding--;
        r->last_reply = ngx_current_msec;
    }
    ngx_mail_api_redis_handler_pt handler = p->handler;
    void *data = p->data;
    ngx_free(p);
    handler(data, static_cast<redisReply *>(reply));
}

}  // namespace

void ngx_mail_api_redis_load_script() noexcept {
    RedisConn *r = g_redis;
    if (r == nullptr || r->ac == nullptr || !r->connected) return;
    redisAsyncCommand(r->ac, on_script_loaded, nullptr, "SCRIPT LOAD %s", ngx_mail_api_enqueue_script);
}

ngx_int_t ngx_mail_api_redis_init(ngx_cycle_t *cycle, ngx_mail_api_main_conf_t *mcf) noexcept {
    auto *r = static_cast<RedisConn *>(ngx_pcalloc(cycle->pool, sizeof(RedisConn)));
    if (r == nullptr) return NGX_ERROR;
    r->mcf = mcf;
    r->log = cycle->log;
    r->backoff = BACKOFF_MIN;
    for (ngx_event_t *ev : {&r->reconnect, &r->connect_timer, &r->flush}) {
        ev->data = r;
        ev->log = cycle->log;
        ev->cancelable = 1;  // never delays a graceful shutdown
    }
    r->reconnect.handler = on_reconnect;
    r->connect_timer.handler = on_connect_timeout;
    r->flush.handler = on_flush;
    g_redis = r;
    redis_connect(r);
    return NGX_OK;
}

void ngx_mail_api_redis_exit() noexcept {
    RedisConn *r = g_redis;
    if (r == nullptr) return;
    r->exiting = true;
    if (r->reconnect.timer_set) {
        ngx_del_timer(&r->reconnect);
    }
    if (r->ac) redisAsyncFree(r->ac);
    g_redis = nullptr;
}

bool ngx_mail_api_redis_ready() noexcept {
    return g_redis && g_redis->connected;
}

ngx_int_t ngx_mail_api_redis_command(int argc, const char **argv, const size_t *lens,
                                     ngx_mail_api_redis_handler_pt handler, void *data) noexcept {
    RedisConn *r = g_redis;
    if (r == nullptr || !r->connected) return NGX_ERROR;
    auto *p = static_cast<Pending *>(ngx_alloc(sizeof(Pending), r->log));
    if (p == nullptr) return NGX_ERROR;
    p->handler = handler;
    p->data = data;
    if (r->outstanding == 0) r->last_reply = ngx_current_msec;
    if (redisAsyncCommandArgv(r->ac, on_reply, p, argc, argv, lens) != REDIS_OK) {
        ngx_free(p);
        return NGX_ERROR;
    }
    r->outstanding++;
    return NGX_OK;
}

void ngx_mail_api_redis_stalled(ngx_msec_t timeout) noexcept {
    RedisConn *r = g_redis;
    if (r && r->ac && r->connected && r->outstanding &&
        ngx_current_msec - r->last_reply >= timeout) {
        ngx_log_error(NGX_LOG_ERR, r->log, 0,
                      "mail_api: redis gave no reply for %M ms, reconnecting", timeout);
        redisAsyncFree(r->ac);  // fails every pending command, then reconnects
    }
}

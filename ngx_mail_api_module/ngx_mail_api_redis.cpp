// hiredis async on nginx's event loop: one connection per worker, level-
// triggered events (hiredis reads at most one buffer per callback), connect
// timeout and reconnect with backoff on nginx timers. Commands issued during
// one turn of the loop are pipelined: a posted event writes them all at once.
//
// Sends go as one transaction a turn (ngx_mail_api_redis_transact): with
// appendfsync always Redis fsyncs its AOF once per turn of its own loop in
// which it wrote, and it reads 16 KiB of a connection a turn: about ten 1 KiB
// sends, each an EVALSHA, cost an fsync. Inside MULTI it writes nothing until
// EXEC, so every send of the transaction shares one fsync.
#include "ngx_mail_api.h"

#include <hiredis/async.h>

#include <charconv>
#include <new>
#include <string>
#include <vector>

#include "contract.h"

namespace {

constexpr ngx_msec_t BACKOFF_MIN = 100;
constexpr ngx_msec_t BACKOFF_MAX = 5000;
// A transaction holds Redis while it runs: beyond these it is sent and the
// next one begun (a 10 MiB message goes alone).
constexpr size_t TX_MAX_ITEMS = 256;
constexpr size_t TX_MAX_BYTES = 1 << 20;
// Transactions with Redis at once: one executing and fsyncing, the next
// already in its socket (Redis never waits for the worker), the third gathers.
constexpr ngx_uint_t TX_IN_FLIGHT = 2;

// One request's commands in a transaction; its handler gets one reply.
struct TxItem {
    ngx_mail_api_redis_handler_pt handler;
    void *data;
    size_t commands;
};

// The transaction being filled this turn. The buffers stay (cleared) from
// one to the next: no allocation per send once they have grown.
struct Tx {
    std::vector<TxItem> items;
    std::string resp;          // its commands, RESP-encoded one after another
    std::vector<size_t> ends;  // where each of them ends in resp
};

// Sent: waits for EXEC's reply.
struct TxSent {
    std::vector<TxItem> items;
};

Tx *g_tx;

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
    ngx_uint_t tx_pending;  // transactions sent, not yet answered
    bool connected;
    bool exiting;
    bool refusal_logged;    // a queued command of the transaction under way was refused
    bool script_loading;    // a SCRIPT LOAD is on its way: NOSCRIPTs before its reply ask for no other
};

RedisConn *g_redis;

void redis_connect(RedisConn *r) noexcept;

// What was queued for a transaction not sent (the connection went): each
// request hears it as a lost connection, as hiredis tells the sent ones.
void tx_fail_unsent() noexcept {
    if (g_tx == nullptr || g_tx->items.empty()) return;
    std::vector<TxItem> items;
    items.swap(g_tx->items);
    g_tx->resp.clear();
    g_tx->ends.clear();
    for (const TxItem &it : items) it.handler(it.data, nullptr);
}

void resp_append(std::string &out, int argc, const char *const *argv, const size_t *lens) {
    char num[24];
    auto number = [&](char kind, size_t n) {
        out += kind;
        out.append(num, std::to_chars(num, num + sizeof num, n).ptr - num);
        out += "\r\n";
    };
    number('*', static_cast<size_t>(argc));
    for (int i = 0; i < argc; i++) {
        number('$', lens[i]);
        out.append(argv[i], lens[i]);
        out += "\r\n";
    }
}

// EXEC's reply, shared out: each request gets the reply of its last command,
// or the first error among its commands; EXEC's own error (EXECABORT: a
// command was refused while queued, e.g. OOM) or none at all goes to all.
void on_exec(redisAsyncContext *ac, void *reply, void *privdata) noexcept;

// Once a transaction: under OOM every command of it is refused, and each
// send then logs its own 503 (answer() in ngx_mail_api_send.cpp); a line per
// command as well would be two more a send when the disk may be filling too.
void on_queued(redisAsyncContext *ac, void *reply, void *) noexcept {
    auto *rep = static_cast<redisReply *>(reply);
    auto *r = static_cast<RedisConn *>(ac->ev.data);
    if (rep && rep->type == REDIS_REPLY_ERROR && !r->refusal_logged) {
        r->refusal_logged = true;
        ngx_log_error(NGX_LOG_ERR, r->log, 0, "mail_api: redis refused a queued command: %s", rep->str);
    }
}

// The turn's transaction to hiredis (written by the posted flush). Group
// commit: while TX_IN_FLIGHT are with Redis the next one only gathers, and
// goes when the first is answered, or when it is full. The fsync's time then
// makes the next transaction larger, not the queue at Redis longer; an idle
// worker's send goes at once.
void tx_send(RedisConn *r, bool full = false) noexcept {
    Tx *tx = g_tx;
    if (tx == nullptr || tx->items.empty()) return;
    if (r->tx_pending >= TX_IN_FLIGHT && !full && r->connected) return;
    if (r->ac == nullptr || !r->connected) {
        tx_fail_unsent();
        return;
    }
    auto *sent = new (std::nothrow) TxSent;
    if (sent == nullptr || redisAsyncCommand(r->ac, on_queued, nullptr, "MULTI") != REDIS_OK) {
        delete sent;
        tx_fail_unsent();
        return;
    }
    size_t start = 0;
    for (size_t end : tx->ends) {
        redisAsyncFormattedCommand(r->ac, on_queued, nullptr, tx->resp.data() + start, end - start);
        start = end;
    }
    sent->items.swap(tx->items);
    tx->resp.clear();
    tx->ends.clear();
    if (tx->resp.capacity() > 2 * TX_MAX_BYTES) {
        std::string().swap(tx->resp);  // a large message's room is not kept
    }
    if (redisAsyncCommand(r->ac, on_exec, sent, "EXEC") != REDIS_OK) {
        // only while hiredis tears the context down: nothing will answer
        std::vector<TxItem> items;
        items.swap(sent->items);
        delete sent;
        for (const TxItem &it : items) it.handler(it.data, nullptr);
        return;
    }
    if (r->outstanding == 0) r->last_reply = ngx_current_msec;
    r->outstanding++;
    r->tx_pending++;
}

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
        // hiredis closes the socket itself: nginx must not count it as open
        // (an exiting worker would log "open socket left" and abort)
        r->c->fd = (ngx_socket_t) -1;
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
    r->tx_pending = 0;
    r->script_loading = false;
    tx_fail_unsent();
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
    static_cast<RedisConn *>(ac->ev.data)->script_loading = false;
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
    tx_send(r);  // its commands posted this event again: it writes them now
    if (r->flush.posted) {
        ngx_delete_posted_event(&r->flush);
    }
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

void on_exec(redisAsyncContext *ac, void *reply, void *privdata) noexcept {
    auto *sent = static_cast<TxSent *>(privdata);
    auto *r = static_cast<RedisConn *>(ac->ev.data);
    auto *rep = static_cast<redisReply *>(reply);
    if (rep && r->outstanding) {
        r->outstanding--;
        r->last_reply = ngx_current_msec;
    }
    if (rep && r->tx_pending) r->tx_pending--;
    r->refusal_logged = false;  // the next transaction's replies come after this one
    bool shared = rep && rep->type == REDIS_REPLY_ARRAY;
    size_t at = 0;
    for (const TxItem &it : sent->items) {
        redisReply *mine = rep;
        if (shared) {
            mine = nullptr;
            for (size_t i = at; i < at + it.commands && i < rep->elements; i++) {
                mine = rep->element[i];
                if (mine->type == REDIS_REPLY_ERROR) break;
            }
            at += it.commands;
        }
        it.handler(it.data, mine);
    }
    delete sent;
    if (rep && r->ac && r->connected) tx_send(r);  // what gathered meanwhile (its write is posted)
}

}  // namespace

ngx_int_t ngx_mail_api_redis_transact(const ngx_mail_api_redis_cmd_t *cmds, ngx_uint_t n,
                                      ngx_mail_api_redis_handler_pt handler, void *data) noexcept {
    RedisConn *r = g_redis;
    Tx *tx = g_tx;
    if (r == nullptr || tx == nullptr || !r->connected || n == 0) return NGX_ERROR;
    size_t bytes = 0;
    for (ngx_uint_t i = 0; i < n; i++) {
        for (int a = 0; a < cmds[i].argc; a++) bytes += cmds[i].lens[a];
    }
    if (!tx->items.empty() && (tx->items.size() >= TX_MAX_ITEMS || tx->resp.size() + bytes > TX_MAX_BYTES)) {
        tx_send(r, true);
        if (!r->connected) return NGX_ERROR;
    }
    try {
        size_t mark = tx->resp.size(), marks = tx->ends.size();
        try {
            for (ngx_uint_t i = 0; i < n; i++) {
                resp_append(tx->resp, cmds[i].argc, cmds[i].argv, cmds[i].lens);
                tx->ends.push_back(tx->resp.size());
            }
            tx->items.push_back({handler, data, n});
        } catch (...) {
            tx->resp.resize(mark);
            tx->ends.resize(marks);
            throw;
        }
    } catch (...) {
        return NGX_ERROR;
    }
    if (!r->flush.posted) {
        ngx_post_event(&r->flush, &ngx_posted_events);
    }
    return NGX_OK;
}

void ngx_mail_api_redis_load_script() noexcept {
    RedisConn *r = g_redis;
    if (r == nullptr || r->ac == nullptr || !r->connected || r->script_loading) return;
    r->script_loading = redisAsyncCommand(r->ac, on_script_loaded, nullptr, "SCRIPT LOAD %s",
                                          mailapi::contract::ENQUEUE_LUA) == REDIS_OK;
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
    g_tx = new (std::nothrow) Tx;
    if (g_tx == nullptr) return NGX_ERROR;
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
    tx_fail_unsent();
    delete g_tx;
    g_tx = nullptr;
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

namespace {

// Lives until Redis answers, which may be after the request timed out and
// ended; `r` is then NULL and the reply only frees this.
struct RequestCall {
    ngx_http_request_t *r;
    ngx_mail_api_reply_pt on_reply;
    void *data;
    ngx_event_t timer;
    ngx_msec_t timeout;
};

void request_reply(void *data, redisReply *reply) noexcept {
    auto *call = static_cast<RequestCall *>(data);
    if (call->timer.timer_set) {
        ngx_del_timer(&call->timer);
    }
    ngx_http_request_t *r = call->r;
    if (r == nullptr) {
        ngx_free(call);
        return;
    }
    ngx_int_t rc;
    try {
        rc = call->on_reply(r, reply, call->data);
    } catch (...) {
        rc = NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_free(call);
    if (rc != NGX_DONE) ngx_mail_api_finish(r, rc);
}

void request_timeout(ngx_event_t *ev) noexcept {
    auto *call = static_cast<RequestCall *>(ev->data);
    ngx_http_request_t *r = call->r;
    call->r = nullptr;
    ngx_mail_api_finish(r, ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                                   "the queue did not answer in time, retry later"));
    ngx_mail_api_redis_stalled(call->timeout);
}

}  // namespace

ngx_int_t ngx_mail_api_redis_request(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf,
                                     const std::vector<std::string> &args, ngx_mail_api_reply_pt on_reply,
                                     void *data) noexcept {
    auto *call = static_cast<RequestCall *>(ngx_calloc(sizeof(RequestCall), r->connection->log));
    if (call == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    call->r = r;
    call->on_reply = on_reply;
    call->data = data;
    call->timeout = mcf->redis_timeout;
    call->timer.handler = request_timeout;
    call->timer.data = call;
    call->timer.log = r->connection->log;
    try {
        std::vector<const char *> argv;
        std::vector<size_t> lens;
        for (const std::string &a : args) {
            argv.push_back(a.data());
            lens.push_back(a.size());  // binary-safe
        }
        if (ngx_mail_api_redis_command(static_cast<int>(args.size()), argv.data(), lens.data(), request_reply, call) ==
            NGX_OK) {
            ngx_add_timer(&call->timer, mcf->redis_timeout);
            return NGX_DONE;
        }
    } catch (...) {
    }
    ngx_free(call);
    return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                   "the queue is unavailable, retry later");
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

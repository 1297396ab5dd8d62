#include "queue.h"

#include <cstdlib>
#include <cstring>

#include "clock.h"
#include "contract.h"
#include "log.h"
#include "metrics.h"

namespace contract = mailapi::contract;
namespace fields = mailapi::contract::field;

using mailapi::wall_ms;

namespace {

bool ok_reply(const redisReply *r) { return r && r->type != REDIS_REPLY_ERROR; }

// A number of an entry, held to [lo, hi]: an entry written by hand (or a
// corrupted one) must not make the arithmetic on it overflow.
int64_t bounded(const std::string &v, int64_t lo, int64_t hi) {
    long long n = std::strtoll(v.c_str(), nullptr, 10);  // saturates on overflow
    return n < lo ? lo : n > hi ? hi : static_cast<int64_t>(n);
}

constexpr int64_t LAST_SECOND = 253402300799;  // 9999-12-31T23:59:59Z
constexpr int64_t MOST_TRIES = 1000000;        // attempts, generations

}  // namespace

// A script and its SHA1, for EVALSHA.
struct Script {
    const char *lua;
    std::string sha;
    explicit Script(const char *l) : lua(l), sha(contract::script_sha(l)) {}
};
namespace {
const Script ACK(contract::ACK_LUA), DEFER(contract::DEFER_LUA), MOVE(contract::MOVE_LUA), DEAD(contract::DEAD_LUA),
    REAP(contract::REAP_LUA), TAKE(contract::TAKE_LUA), RENEW(contract::RENEW_LUA), SENT(contract::SENT_LUA);
}  // namespace

std::vector<QueueEntry> parse_entries(const redisReply *list) {
    std::vector<QueueEntry> out;
    if (list == nullptr || list->type != REDIS_REPLY_ARRAY) return out;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING) continue;
        QueueEntry q;
        q.stream_id.assign(e->element[0]->str, e->element[0]->len);
        const redisReply *f = e->element[1];
        if (f->type == REDIS_REPLY_ARRAY) {
            for (size_t j = 0; j + 1 < f->elements; j += 2) {
                if (f->element[j]->type != REDIS_REPLY_STRING || f->element[j + 1]->type != REDIS_REPLY_STRING) continue;
                std::string k(f->element[j]->str, f->element[j]->len);
                std::string v(f->element[j + 1]->str, f->element[j + 1]->len);
                if (k == fields::ID) q.id = std::move(v);
                else if (k == fields::TENANT) q.tenant = std::move(v);
                else if (k == fields::CREATED) q.created_ms = bounded(v, 0, LAST_SECOND * 1000);
                else if (k == fields::SEND_AT) q.send_at = bounded(v, 0, LAST_SECOND);
                else if (k == fields::SINCE) q.since_ms = bounded(v, 0, LAST_SECOND * 1000);
                else if (k == fields::ATTEMPT) q.attempt = static_cast<int>(bounded(v, 0, MOST_TRIES));
                else if (k == fields::GEN) q.gen = static_cast<int>(bounded(v, 0, MOST_TRIES));
                else if (k == fields::SIZE) q.size = static_cast<size_t>(bounded(v, 0, int64_t{1} << 40));
                else if (k == fields::DONE) q.done = v.substr(0, contract::DONE_MAX);
                else if (k == fields::KEEP) q.keep_days = bounded(v, 0, 100000);
            }
        }
        if (q.since_ms == 0) q.since_ms = q.created_ms;
        out.push_back(std::move(q));
    }
    return out;
}

Queue::Queue(struct ev_loop *loop, const Config &cfg, Handler handler, std::function<int()> capacity, Working working)
    : loop_(loop), cfg_(cfg), handler_(std::move(handler)), capacity_(std::move(capacity)),
      working_(std::move(working)), reader_(loop, "reader", cfg.redis, 10.0), cmd_(loop, "commands", cfg.redis, 10.0) {
    ev_timer_init(&mover_, mover_cb, 0.25, 0.25);
    mover_.data = this;
    ev_timer_init(&sweep_, sweep_cb, 0, cfg.retry_interval);
    sweep_.data = this;
    ev_timer_init(&retry_, retry_cb, 1, 0);
    retry_.data = this;
    // Well inside claim_idle: work under way here is never idle long enough
    // for another instance to take it over.
    double touch = std::max(0.5, cfg.claim_idle / 4.0);
    ev_timer_init(&touch_, touch_cb, touch, touch);
    touch_.data = this;
    // A consumer gone for twice claim_idle (and at least 10 s) with nothing
    // pending is removed; looked for as often as claim_idle, at most a minute apart.
    ev_timer_init(&reap_, reap_cb, 5, std::max(5, std::min(60, cfg.claim_idle)));
    reap_.data = this;
}

Queue::~Queue() {
    for (ev_timer *t : {&mover_, &sweep_, &retry_, &touch_, &reap_}) ev_timer_stop(loop_, t);
}

std::string Queue::hash_key(const std::string &id) const { return contract::message_key(cfg_.stream, id); }

bool Queue::script(const Script &sc, std::vector<std::string> args, RedisAsync::Callback cb) {
    const char *lua = sc.lua;
    std::vector<std::string> evalsha = {"EVALSHA", sc.sha};
    evalsha.insert(evalsha.end(), args.begin(), args.end());
    return cmd_.command(evalsha, [this, lua, args = std::move(args), cb](redisReply *r) mutable {
        if (r && r->type == REDIS_REPLY_ERROR && std::strncmp(r->str, "NOSCRIPT", 8) == 0) {
            std::vector<std::string> eval = {"EVAL", lua};
            eval.insert(eval.end(), args.begin(), args.end());
            if (!cmd_.command(eval, cb)) cb(nullptr);
            return;
        }
        cb(r);
    });
}

void Queue::retry_later() {
    if (!ev_is_active(&retry_)) ev_timer_start(loop_, &retry_);
}

void Queue::retry_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    if (!self->reader_.connected()) return;  // on_connect starts over
    if (!self->group_ready_) self->ensure_group();
    else self->read_more();
}

void Queue::start() {
    reader_.on_connect = [this] {
        reading_ = false;
        ensure_group();
    };
    cmd_.on_connect = [this] { ev_timer_again(loop_, &sweep_); };
    reader_.start();
    cmd_.start();
    ev_timer_start(loop_, &mover_);
    ev_timer_start(loop_, &touch_);
    ev_timer_start(loop_, &reap_);
}

void Queue::stop_reading() {
    stopping_ = true;
    ev_timer_stop(loop_, &sweep_);
}

void Queue::ensure_group() {
    // From the start of the stream: it holds only unfinished work, so a group
    // that was lost and is made again re-reads no history.
    reader_.command({"XGROUP", "CREATE", cfg_.stream, cfg_.group, "0", "MKSTREAM"}, [this](redisReply *r) {
        if (r && (r->type != REDIS_REPLY_ERROR || std::strncmp(r->str, "BUSYGROUP", 9) == 0)) {
            group_ready_ = true;
            // what this consumer's previous life, or a dead one, left unfinished
            sweep_cb(loop_, &sweep_, 0);
            read_more();
        } else if (r) {
            // e.g. LOADING while Redis reads its data back after a restart
            log_error("cannot create the consumer group, retrying", {{"error", r->str}});
            retry_later();
        }
    });
}

void Queue::read_more() {
    if (stopping_ || reading_ || !group_ready_ || !reader_.connected()) return;
    int n = std::min(capacity_(), cfg_.batch);
    if (n <= 0) return;
    reading_ = true;
    bool sent = reader_.command({"XREADGROUP", "GROUP", cfg_.group, cfg_.consumer, "COUNT", std::to_string(n),
                                 "BLOCK", "1000", "STREAMS", cfg_.stream, ">"},
                                [this](redisReply *r) {
                                    reading_ = false;
                                    if (r && r->type == REDIS_REPLY_ERROR) {
                                        log_error("XREADGROUP failed", {{"error", r->str}});
                                        // NOGROUP, or UNBLOCKED: the stream (and its group) was
                                        // deleted while this read waited
                                        if (std::strncmp(r->str, "NOGROUP", 7) == 0 ||
                                            std::strncmp(r->str, "UNBLOCKED", 9) == 0) {
                                            group_ready_ = false;
                                            ensure_group();
                                        } else {
                                            retry_later();  // nothing else would read again
                                        }
                                        return;
                                    }
                                    if (r && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                                        r->element[0]->elements == 2) {
                                        auto entries = parse_entries(r->element[0]->element[1]);
                                        if (!entries.empty() && !stopping_) handler_(std::move(entries), false);
                                    }
                                    if (r) read_more();
                                });
    if (!sent) reading_ = false;
}

// Entries a consumer read and never finished, idle past claim_idle: taken
// over, from where the last sweep stopped, so that idle entries behind many
// live ones are reached too.
void Queue::sweep_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    if (self->stopping_ || !self->group_ready_) return;
    int n = std::min(self->capacity_(), self->cfg_.batch);
    if (n <= 0) return;
    self->cmd_.command({"XAUTOCLAIM", self->cfg_.stream, self->cfg_.group, self->cfg_.consumer,
                        std::to_string(static_cast<int64_t>(self->cfg_.claim_idle) * 1000), self->claim_cursor_,
                        "COUNT", std::to_string(n)},
                       [self](redisReply *r) {
                           if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
                           if (r->element[0]->type == REDIS_REPLY_STRING) {
                               self->claim_cursor_.assign(r->element[0]->str, r->element[0]->len);
                           }
                           auto entries = parse_entries(r->element[1]);
                           if (!entries.empty() && !self->stopping_) self->handler_(std::move(entries), true);
                       });
}

// Resets the idle time of every entry worked on here and renews the leases
// on their messages (sends may wait on a slow provider, on the byte budget
// or on the store): none of it is taken over while this instance lives.
void Queue::touch_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    if (!self->group_ready_) return;
    auto working = self->working_();
    std::string lease = std::to_string(static_cast<int64_t>(self->cfg_.claim_idle) * 1000);
    for (size_t at = 0; at < working.size(); at += 500) {
        size_t end = std::min(working.size(), at + 500);
        std::vector<std::string> claim = {"XCLAIM", self->cfg_.stream, self->cfg_.group, self->cfg_.consumer, "0"};
        std::vector<std::string> renew = {std::to_string(end - at)};
        for (size_t i = at; i < end; i++) {
            claim.push_back(working[i].first);
            renew.push_back(self->hash_key(working[i].second));
        }
        claim.push_back("JUSTID");
        renew.push_back(self->cfg_.consumer);
        renew.push_back(lease);
        self->cmd_.command(claim, [](redisReply *r) {
            if (r && r->type == REDIS_REPLY_ERROR) log_error("cannot keep entries claimed", {{"error", r->str}});
        });
        self->script(RENEW, std::move(renew), [](redisReply *r) {
            if (r && r->type == REDIS_REPLY_ERROR) log_error("cannot renew leases", {{"error", r->str}});
        });
    }
}

void Queue::reap_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    if (!self->group_ready_) return;
    int64_t idle_ms = std::max<int64_t>(10, 2LL * self->cfg_.claim_idle) * 1000;
    self->script(REAP,
                 {"1", self->cfg_.stream, self->cfg_.group, std::to_string(idle_ms), self->cfg_.consumer},
                 [](redisReply *r) {
                     if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
                         log_info("removed consumers that are gone", {{"count", std::to_string(r->integer)}});
                     } else if (r && r->type == REDIS_REPLY_ERROR) {
                         log_error("cannot remove consumers that are gone", {{"error", r->str}});
                     }
                 });
}

void Queue::mover_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    self->script(MOVE,
                 {"2", self->cfg_.stream, self->cfg_.scheduled, std::to_string(wall_ms()), "500"}, [](redisReply *r) {
                     if (r && r->type == REDIS_REPLY_ERROR) log_error("scheduler failed", {{"error", r->str}});
                 });
}

void Queue::take(const QueueEntry &e, TakeDone done) {
    std::string lease = std::to_string(static_cast<int64_t>(cfg_.claim_idle) * 1000);
    if (!script(TAKE, {"1", hash_key(e.id), cfg_.consumer, lease}, [done](redisReply *r) {
            if (!ok_reply(r) || r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
                r->element[0]->type != REDIS_REPLY_INTEGER) {
                return done(Take::failed, "", "");
            }
            switch (r->element[0]->integer) {
            case 0:
                return done(Take::gone, "", "");
            case 1:
                return done(Take::held, "", "");
            default:
                break;
            }
            auto str = [r](size_t i) {
                return r->elements > i && r->element[i]->type == REDIS_REPLY_STRING
                           ? std::string(r->element[i]->str, r->element[i]->len)
                           : std::string();
            };
            done(r->element[0]->integer == 3 ? Take::cancelled : Take::taken, str(1), str(2));
        })) {
        done(Take::failed, "", "");
    }
}

void Queue::renew(const QueueEntry &e, RenewDone done) {
    std::string lease = std::to_string(static_cast<int64_t>(cfg_.claim_idle) * 1000);
    if (!script(RENEW, {"1", hash_key(e.id), cfg_.consumer, lease}, [done](redisReply *r) {
            if (!ok_reply(r) || r->type != REDIS_REPLY_INTEGER) return done(false, false);
            done(true, r->integer == 1);
        })) {
        done(false, false);
    }
}

void Queue::mark_sent(const QueueEntry &e, const std::string &marker, Done done) {
    if (!script(SENT, {"1", hash_key(e.id), marker}, [done](redisReply *r) {
            if (r && r->type == REDIS_REPLY_ERROR) log_error("cannot mark a message sent", {{"error", r->str}});
            done(ok_reply(r));
        })) {
        done(false);
    }
}

void Queue::suppressed(const std::string &tenant, const std::vector<std::string> &rkeys, SuppressedDone done) {
    std::vector<std::string> args = {"HMGET", contract::suppression_key(cfg_.stream, tenant)};
    args.insert(args.end(), rkeys.begin(), rkeys.end());
    size_t n = rkeys.size();
    if (!cmd_.command(args, [done, n](redisReply *r) {
            if (!ok_reply(r) || r->type != REDIS_REPLY_ARRAY || r->elements != n) return done(false, {});
            std::vector<std::string> out(n);
            for (size_t i = 0; i < n; i++) {
                if (r->element[i]->type == REDIS_REPLY_STRING) out[i].assign(r->element[i]->str, r->element[i]->len);
            }
            done(true, std::move(out));
        })) {
        done(false, {});
    }
}

void Queue::suppress(std::vector<std::string> command, Done done) {
    if (!cmd_.command(command, [done](redisReply *r) { done(ok_reply(r)); })) done(false);
}

void Queue::envelope(const QueueEntry &e, EnvelopeDone done) {
    if (!cmd_.command({"HGET", hash_key(e.id), fields::ENVELOPE}, [done](redisReply *r) {
            if (!ok_reply(r)) return done(false, false, "");
            if (r->type != REDIS_REPLY_STRING) return done(true, true, "");
            done(true, false, std::string(r->str, r->len));
        })) {
        done(false, false, "");
    }
}

void Queue::ack(const QueueEntry &e, Done done) {
    if (!script(ACK,
                {"2", cfg_.stream, hash_key(e.id), cfg_.group, e.stream_id},
                [done](redisReply *r) { done(ok_reply(r)); })) {
        done(false);
    }
}

void Queue::drop(const QueueEntry &e, Done done) {
    // MULTI/EXEC would need the connection to itself: a script does the same.
    if (!script(ACK,
                {"2", cfg_.stream, cfg_.stream + ":-", cfg_.group, e.stream_id},
                [done](redisReply *r) { done(ok_reply(r)); })) {
        done(false);
    }
}

void Queue::defer(const QueueEntry &e, int64_t due_ms, int attempt, Done done) {
    if (!script(DEFER,
                {"3", cfg_.stream, cfg_.scheduled, hash_key(e.id), cfg_.group, e.stream_id, std::to_string(due_ms),
                 std::to_string(attempt), e.id, e.done, cfg_.consumer},
                [done, id = e.id](redisReply *r) {
                    if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0) {
                        log_warn("another instance holds the message now: left to it", {{"id", id}});
                    }
                    done(ok_reply(r));  // either way this job is over
                })) {
        done(false);
    }
}

void Queue::dead_letter(const QueueEntry &e, const std::string &error, Done done) {
    std::vector<std::string> args = {"2", cfg_.stream, cfg_.dead_letters, cfg_.group, e.stream_id,
                                     std::to_string(cfg_.dead_letters_max), e.done, cfg_.consumer,
                                     fields::ID, e.id, fields::TENANT, e.tenant, fields::CREATED,
                                     std::to_string(e.created_ms), fields::ATTEMPT, std::to_string(e.attempt),
                                     fields::GEN, std::to_string(e.gen), fields::ERROR, error};
    if (!script(DEAD, std::move(args), [done, id = e.id](redisReply *r) {
            if (r && r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
                log_warn("another instance holds the message now: left to it", {{"id", id}});
            } else if (r && r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
                log_warn("dead letters over dead_letters_max dropped (their records say failed)",
                         {{"count", std::to_string(r->integer)}});
            }
            done(ok_reply(r));
        })) {
        done(false);
    }
}

void Queue::sample(Metrics &m) {
    auto integer = [](redisReply *r, int64_t &out) {
        if (r && r->type == REDIS_REPLY_INTEGER) out = r->integer;
    };
    cmd_.command({"XLEN", cfg_.stream}, [&m, integer](redisReply *r) { integer(r, m.queue_length); });
    cmd_.command({"ZCARD", cfg_.scheduled}, [&m, integer](redisReply *r) { integer(r, m.scheduled); });
    cmd_.command({"XLEN", cfg_.dead_letters}, [&m, integer](redisReply *r) { integer(r, m.dead_letters); });
    cmd_.command({"XPENDING", cfg_.stream, cfg_.group}, [&m](redisReply *r) {
        if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
        m.queue_pending = r->element[0]->type == REDIS_REPLY_INTEGER ? r->element[0]->integer : 0;
        m.oldest_age_seconds = 0;
        if (m.queue_pending > 0 && r->element[1]->type == REDIS_REPLY_STRING) {
            // a stream id starts with its creation time in milliseconds
            m.oldest_age_seconds = static_cast<double>(wall_ms() - std::atoll(r->element[1]->str)) / 1000.0;
        }
    });
}

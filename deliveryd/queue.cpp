#include "queue.h"

#include <sys/time.h>

#include <cstdlib>
#include <cstring>

#include "log.h"
#include "metrics.h"

namespace {

// KEYS: stream, scheduled zset, parking hash. ARGV: group, stream id, due ms, field, value, ...
const char DEFER_LUA[] = R"lua(
redis.call('HSET', KEYS[3], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[3])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
)lua";

// KEYS: stream, scheduled zset. ARGV: now ms, max entries. Due entries go back
// onto the stream, atomically, whichever instance runs it.
const char MOVE_LUA[] = R"lua(
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, key in ipairs(due) do
  local fields = redis.call('HGETALL', key)
  if #fields > 0 then redis.call('XADD', KEYS[1], '*', unpack(fields)) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], key)
end
return #due
)lua";

// KEYS: stream, dead-letter stream. ARGV: group, stream id, field, value, ...
const char DEAD_LUA[] = R"lua(
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
)lua";

int64_t now_ms() {
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    return static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
}

std::vector<std::string> fields(const QueueEntry &e, int attempt) {
    return {"id", e.id, "tenant", e.tenant, "created", std::to_string(e.created_ms), "send_at",
            std::to_string(e.send_at), "attempt", std::to_string(attempt), "env", e.envelope};
}

bool ok_reply(const redisReply *r) { return r && r->type != REDIS_REPLY_ERROR; }

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
                std::string k(f->element[j]->str, f->element[j]->len);
                std::string v(f->element[j + 1]->str, f->element[j + 1]->len);
                if (k == "id") q.id = std::move(v);
                else if (k == "tenant") q.tenant = std::move(v);
                else if (k == "env") q.envelope = std::move(v);
                else if (k == "created") q.created_ms = std::atoll(v.c_str());
                else if (k == "send_at") q.send_at = std::atoll(v.c_str());
                else if (k == "attempt") q.attempt = std::atoi(v.c_str());
            }
        }
        out.push_back(std::move(q));
    }
    return out;
}

Queue::Queue(struct ev_loop *loop, const Config &cfg, Handler handler, std::function<int()> capacity)
    : loop_(loop), cfg_(cfg), handler_(std::move(handler)), capacity_(std::move(capacity)),
      reader_(loop, "reader", cfg.redis, 10.0), cmd_(loop, "commands", cfg.redis, 10.0) {
    ev_timer_init(&mover_, mover_cb, 0.25, 0.25);
    mover_.data = this;
    ev_timer_init(&sweep_, sweep_cb, 0, cfg.retry_interval);
    sweep_.data = this;
    ev_timer_init(&retry_, retry_cb, 1, 0);
    retry_.data = this;
}

Queue::~Queue() {
    ev_timer_stop(loop_, &mover_);
    ev_timer_stop(loop_, &sweep_);
    ev_timer_stop(loop_, &retry_);
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
}

void Queue::stop_reading() {
    stopping_ = true;
    ev_timer_stop(loop_, &sweep_);
}

void Queue::ensure_group() {
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

void Queue::sweep_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    if (self->stopping_ || !self->group_ready_) return;
    int n = std::min(self->capacity_(), self->cfg_.batch);
    if (n <= 0) return;
    self->cmd_.command({"XAUTOCLAIM", self->cfg_.stream, self->cfg_.group, self->cfg_.consumer,
                        std::to_string(static_cast<int64_t>(self->cfg_.claim_idle) * 1000), "0-0", "COUNT",
                        std::to_string(n)},
                       [self](redisReply *r) {
                           if (r && r->type == REDIS_REPLY_ARRAY && r->elements >= 2) {
                               auto entries = parse_entries(r->element[1]);
                               if (!entries.empty() && !self->stopping_) self->handler_(std::move(entries), true);
                           }
                       });
}

void Queue::mover_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<Queue *>(w->data);
    self->cmd_.command({"EVAL", MOVE_LUA, "2", self->cfg_.stream, self->cfg_.scheduled, std::to_string(now_ms()),
                        "500"},
                       [](redisReply *r) {
                           if (r && r->type == REDIS_REPLY_ERROR) log_error("scheduler failed", {{"error", r->str}});
                       });
}

void Queue::ack(const QueueEntry &e, Done done) {
    if (!cmd_.command({"XACK", cfg_.stream, cfg_.group, e.stream_id},
                      [done](redisReply *r) { done(ok_reply(r)); })) {
        done(false);
    }
}

void Queue::defer(const QueueEntry &e, int64_t due_ms, int attempt, Done done) {
    std::vector<std::string> args = {"EVAL", DEFER_LUA, "3", cfg_.stream, cfg_.scheduled,
                                     cfg_.scheduled + ":" + e.id, cfg_.group, e.stream_id, std::to_string(due_ms)};
    for (std::string &f : fields(e, attempt)) args.push_back(std::move(f));
    if (!cmd_.command(args, [done](redisReply *r) { done(ok_reply(r)); })) done(false);
}

void Queue::dead_letter(const QueueEntry &e, const std::string &error, Done done) {
    std::vector<std::string> args = {"EVAL", DEAD_LUA, "2", cfg_.stream, cfg_.dead_letters, cfg_.group,
                                     e.stream_id};
    for (std::string &f : fields(e, e.attempt)) args.push_back(std::move(f));
    args.push_back("error");
    args.push_back(error);
    if (!cmd_.command(args, [done](redisReply *r) { done(ok_reply(r)); })) done(false);
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
            m.oldest_age_seconds = static_cast<double>(now_ms() - std::atoll(r->element[1]->str)) / 1000.0;
        }
    });
}

#include "queue.h"

#include <cstring>

#include "log.h"

bool Queue::connect(std::string &err) {
    ctx_.reset();
    struct timeval tv = {5, 0};
    redisContext *c;
    if (cfg_.redis.rfind("unix:", 0) == 0) {
        c = redisConnectUnixWithTimeout(cfg_.redis.c_str() + 5, tv);
    } else {
        std::string host = cfg_.redis;
        int port = 6379;
        size_t colon = host.rfind(':');
        if (colon != std::string::npos) {
            port = std::atoi(host.c_str() + colon + 1);
            host.resize(colon);
        }
        c = redisConnectWithTimeout(host.c_str(), port, tv);
    }
    if (c == nullptr || c->err) {
        err = c ? c->errstr : "out of memory";
        if (c) redisFree(c);
        return false;
    }
    ctx_.reset(c);
    Reply r = command({"XGROUP", "CREATE", cfg_.stream, cfg_.group, "0", "MKSTREAM"});
    if (!r || (r->type == REDIS_REPLY_ERROR && std::strncmp(r->str, "BUSYGROUP", 9) != 0)) {
        err = r ? r->str : "connection lost";
        ctx_.reset();
        return false;
    }
    return true;
}

Queue::Reply Queue::command(const std::vector<std::string> &args) {
    if (!ctx_) return nullptr;
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (const std::string &a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    auto *r = static_cast<redisReply *>(
        redisCommandArgv(ctx_.get(), static_cast<int>(argv.size()), argv.data(), lens.data()));
    if (r == nullptr) {
        log_error("redis connection lost", {{"error", ctx_->errstr}});
        ctx_.reset();
    }
    return Reply(r);
}

void Queue::parse_entries(const redisReply *list, std::vector<QueueEntry> &out) {
    if (list == nullptr || list->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING) {
            continue;
        }
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
}

bool Queue::read_new(int count, int block_ms, std::vector<QueueEntry> &out) {
    Reply r = command({"XREADGROUP", "GROUP", cfg_.group, cfg_.consumer, "COUNT", std::to_string(count),
                       "BLOCK", std::to_string(block_ms), "STREAMS", cfg_.stream, ">"});
    if (!r || r->type == REDIS_REPLY_ERROR) return false;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements == 2) {
        parse_entries(r->element[0]->element[1], out);
    }
    return true;
}

bool Queue::read_pending(const std::string &after, int count, std::vector<QueueEntry> &out) {
    Reply r = command({"XREADGROUP", "GROUP", cfg_.group, cfg_.consumer, "COUNT", std::to_string(count),
                       "STREAMS", cfg_.stream, after});
    if (!r || r->type == REDIS_REPLY_ERROR) return false;
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0 && r->element[0]->elements == 2) {
        parse_entries(r->element[0]->element[1], out);
    }
    return true;
}

bool Queue::claim_idle(int64_t min_idle_ms, int count, std::vector<QueueEntry> &out) {
    Reply r = command({"XAUTOCLAIM", cfg_.stream, cfg_.group, cfg_.consumer, std::to_string(min_idle_ms),
                       "0-0", "COUNT", std::to_string(count)});
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return false;
    parse_entries(r->element[1], out);
    return true;
}

bool Queue::ack(const std::string &stream_id) {
    Reply r = command({"XACK", cfg_.stream, cfg_.group, stream_id});
    return r && r->type == REDIS_REPLY_INTEGER;
}

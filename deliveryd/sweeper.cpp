#include "sweeper.h"

#include <openssl/rand.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>

#include "bson_doc.h"
#include "clock.h"
#include "contract.h"
#include "log.h"
#include "metrics.h"
#include "records.h"
#include "redis_address.h"
#include "store.h"

namespace contract = mailapi::contract;
namespace records = mailapi::records;
using mailapi::Bson;

using mailapi::wall_ms;

namespace {

// Who holds the lock: the consumer's name and a random part, so that two
// instances configured with one name (a mistake) still do not share it.
std::string holder_name(const std::string &consumer) {
    unsigned char r[8];
    if (RAND_bytes(r, sizeof r) != 1) return consumer;
    static const char hex[] = "0123456789abcdef";
    std::string out = consumer + ":";
    for (unsigned char c : r) {
        out.push_back(hex[c >> 4]);
        out.push_back(hex[c & 15]);
    }
    return out;
}

struct ReplyFree {
    void operator()(redisReply *r) const {
        if (r) freeReplyObject(r);
    }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

int64_t deleted_count(const bson_t *reply) {
    bson_iter_t it;
    return bson_iter_init_find(&it, reply, "deletedCount") && BSON_ITER_HOLDS_NUMBER(&it) ? bson_iter_as_int64(&it)
                                                                                          : 0;
}

}  // namespace

Sweeper::Sweeper(const Config &cfg)
    : redis_(cfg.redis), stream_(cfg.stream), mongodb_(cfg.mongodb), holder_(holder_name(cfg.consumer)),
      every_s_(cfg.retention_sweep_every), batch_(cfg.retention_batch),
      offset_ms_(int64_t{cfg.retention_clock_offset} * 1000) {
    thread_ = std::thread([this] { run(); });
}

// As the store's writers: a sweep stuck on a stalled store is not waited
// for past a moment (what it did not delete, the next sweep deletes).
Sweeper::~Sweeper() {
    std::unique_lock<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
    bool done = exited_cv_.wait_for(lock, std::chrono::seconds(3), [this] { return exited_; });
    lock.unlock();
    if (!done) {
        thread_.detach();
        abandoned_ = true;
        log_warn("a retention sweep did not end in time; left to the next", {});
        return;
    }
    thread_.join();
    if (messages_) mongoc_collection_destroy(messages_);
    if (client_) mongoc_client_destroy(client_);
    if (rc_) redisFree(rc_);
}

void Sweeper::counts(Metrics &m) const {
    m.retention_sweeps = sweeps_;
    m.retention_messages = messages_swept_;
    m.retention_documents = documents_swept_;
    m.retention_failures = failures_;
}

void Sweeper::run() {
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(mu_);
            // every_s_ after start too: a fleet restarted together does not
            // sweep before it is up
            if (cv_.wait_for(lock, std::chrono::seconds(every_s_), [this] { return stop_; })) break;
        }
        sweep();
    }
    std::lock_guard<std::mutex> lock(mu_);
    exited_ = true;
    exited_cv_.notify_all();
}

bool Sweeper::connect_redis(std::string &err) {
    if (rc_ && rc_->err == 0) return true;
    if (rc_) redisFree(rc_);
    rc_ = nullptr;
    mailapi::RedisAddress addr;
    if (!mailapi::redis_address_parse(redis_, addr, err)) return false;
    struct timeval tv = {5, 0};
    rc_ = addr.port ? redisConnectWithTimeout(addr.host.c_str(), addr.port, tv)
                    : redisConnectUnixWithTimeout(addr.host.c_str(), tv);
    if (rc_ == nullptr || rc_->err) {
        err = rc_ ? rc_->errstr : "cannot connect to redis";
        if (rc_) redisFree(rc_);
        rc_ = nullptr;
        return false;
    }
    redisSetTimeout(rc_, tv);
    return true;
}

redisReply *Sweeper::command(const std::vector<std::string> &args) {
    std::vector<const char *> argv;
    std::vector<size_t> lens;
    for (const std::string &a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
    }
    return static_cast<redisReply *>(redisCommandArgv(rc_, static_cast<int>(argv.size()), argv.data(), lens.data()));
}

bool Sweeper::connect_store(std::string &err) {
    if (messages_) return true;
    std::string database;
    client_ = store_client_open(mongodb_, "deliveryd-sweeper", database, err);
    if (client_ == nullptr) return false;
    messages_ = mongoc_client_get_collection(client_, database.c_str(), records::MESSAGES);
    if (!indexed_) {
        // The day buckets' index (real MongoDB; FerretDB uses the GIN index
        // t/stack.py makes, and this btree on a short string is harmless).
        Bson cmd, reply;
        bson_error_t e;
        bson_t indexes, index, key;
        BSON_APPEND_UTF8(cmd.get(), "createIndexes", records::MESSAGES);
        BSON_APPEND_ARRAY_BEGIN(cmd.get(), "indexes", &indexes);
        BSON_APPEND_DOCUMENT_BEGIN(&indexes, "0", &index);
        BSON_APPEND_DOCUMENT_BEGIN(&index, "key", &key);
        BSON_APPEND_INT32(&key, records::field::X, 1);
        bson_append_document_end(&index, &key);
        BSON_APPEND_UTF8(&index, "name", records::field::X);
        bson_append_document_end(&indexes, &index);
        bson_append_array_end(cmd.get(), &indexes);
        if (!mongoc_collection_write_command_with_opts(messages_, cmd.get(), nullptr, reply.get(), &e)) {
            err = std::string("cannot create the expiry index: ") + e.message;
            mongoc_collection_destroy(messages_);
            mongoc_client_destroy(client_);
            messages_ = nullptr;
            client_ = nullptr;
            return false;
        }
        indexed_ = true;
    }
    return true;
}

bool Sweeper::erase(const std::string &id, int64_t &docs, bool &mine, std::string &err) {
    const std::string expiry = records::expiry_document_id(id);
    bson_error_t e;
    {
        // everything of the message but its expiry document: {m: id, _id: {$ne: "<id>.x"}}
        Bson filter, reply;
        bson_t ne;
        BSON_APPEND_UTF8(filter.get(), records::field::M, id.c_str());
        BSON_APPEND_DOCUMENT_BEGIN(filter.get(), records::field::ID, &ne);
        BSON_APPEND_UTF8(&ne, "$ne", expiry.c_str());
        bson_append_document_end(filter.get(), &ne);
        if (!mongoc_collection_delete_many(messages_, filter.get(), nullptr, reply.get(), &e)) {
            err = e.message;
            return false;
        }
        docs += deleted_count(reply.get());
    }
    Bson filter, reply;
    BSON_APPEND_UTF8(filter.get(), records::field::ID, expiry.c_str());
    if (!mongoc_collection_delete_one(messages_, filter.get(), nullptr, reply.get(), &e)) {
        err = e.message;
        return false;
    }
    int64_t n = deleted_count(reply.get());
    docs += n;
    mine = n > 0;
    return true;
}

void Sweeper::sweep() {
    std::string err;
    if (!connect_redis(err)) {
        failures_++;
        log_error("retention sweep: redis unavailable", {{"error", err}});
        return;
    }
    const std::string lock_key = contract::retention_lock_key(stream_);
    Reply got(command({"SET", lock_key, holder_, "NX", "PX", std::to_string(LOCK_MS)}));
    if (!got || got->type == REDIS_REPLY_ERROR) {
        failures_++;
        log_error("retention sweep: redis unavailable", {{"error", got ? got->str : rc_->errstr}});
        return;
    }
    if (got->type != REDIS_REPLY_STATUS) return;  // another instance sweeps now
    const std::string cursor_key = contract::retention_cursor_key(stream_);
    const int64_t now = wall_ms() + offset_ms_;
    const int64_t cutoff = now - contract::RETENTION_GRACE_MS;
    const int64_t last_day = contract::expiry_day(cutoff);
    int64_t cursor = contract::expiry_day(contract::EPOCH_MS);  // nothing expires earlier
    Reply c(command({"GET", cursor_key}));
    if (c && c->type == REDIS_REPLY_STRING) cursor = std::max<int64_t>(cursor, std::strtoll(c->str, nullptr, 10));
    const int64_t first = cursor;
    int64_t messages = 0, documents = 0, left = batch_;
    int days = 0;
    bool failed = false;
    if (!connect_store(err)) failed = true;
    for (int64_t day = cursor; !failed && day <= last_day && left > 0 && days < DAYS_PER_RUN; day++) {
        days++;
        // {x: "<day>", expires_at: {$lt: cutoff}}, only m, at most what is left of the batch
        Bson filter, opts;
        bson_t lt, projection;
        BSON_APPEND_UTF8(filter.get(), records::field::X, std::to_string(day).c_str());
        BSON_APPEND_DOCUMENT_BEGIN(filter.get(), records::field::EXPIRES_AT, &lt);
        BSON_APPEND_DATE_TIME(&lt, "$lt", cutoff);
        bson_append_document_end(filter.get(), &lt);
        BSON_APPEND_INT64(opts.get(), "limit", left);
        BSON_APPEND_DOCUMENT_BEGIN(opts.get(), "projection", &projection);
        BSON_APPEND_INT32(&projection, records::field::M, 1);
        bson_append_document_end(opts.get(), &projection);
        mongoc_cursor_t *cur = mongoc_collection_find_with_opts(messages_, filter.get(), opts.get(), nullptr);
        std::vector<std::string> ids;
        const bson_t *doc;
        while (mongoc_cursor_next(cur, &doc)) {
            bson_iter_t it;
            if (bson_iter_init_find(&it, doc, records::field::M) && BSON_ITER_HOLDS_UTF8(&it)) {
                ids.emplace_back(bson_iter_utf8(&it, nullptr));
            }
        }
        bson_error_t e;
        if (mongoc_cursor_error(cur, &e)) {
            err = e.message;
            failed = true;
        }
        mongoc_cursor_destroy(cur);
        if (failed) break;
        int64_t asked = left;
        for (const std::string &id : ids) {
            bool mine = false;
            if (!erase(id, documents, mine, err)) {
                failed = true;
                break;
            }
            if (mine) messages++;
            left--;
        }
        if (failed) break;
        // A day wholly past and drained: the cursor goes past it. Today's
        // bucket (or one not drained) is looked at again by the next run.
        if (static_cast<int64_t>(ids.size()) >= asked || day == last_day) break;
        cursor = day + 1;
    }
    if (cursor != first && !failed) Reply(command({"SET", cursor_key, std::to_string(cursor)}));
    Reply(command({"EVAL", contract::RETENTION_UNLOCK_LUA, "1", lock_key, holder_}));
    sweeps_++;
    messages_swept_ += static_cast<uint64_t>(messages);
    documents_swept_ += static_cast<uint64_t>(documents);
    if (failed) {
        failures_++;
        if (messages_) mongoc_collection_destroy(messages_);
        if (client_) mongoc_client_destroy(client_);
        messages_ = nullptr;
        client_ = nullptr;
    }
    if (failed || messages || documents) {
        // counts, never ids or addresses
        if (failed) {
            log_error("retention sweep cut short",
                      {{"messages", std::to_string(messages)}, {"documents", std::to_string(documents)},
                       {"days", std::to_string(days)}, {"cursor_day", std::to_string(cursor)}, {"error", err}});
        } else {
            log_info("retention sweep",
                     {{"messages", std::to_string(messages)}, {"documents", std::to_string(documents)},
                      {"days", std::to_string(days)}, {"cursor_day", std::to_string(cursor)},
                      {"batch", std::to_string(batch_)}});
        }
    }
}

#include "delivery.h"

#include <sys/time.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "log.h"
#include "metrics.h"

namespace {

int64_t now_ms() {
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    return static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
}

bool terminal(const std::string &status) {
    return status == "sent" || status == "failed" || status == "suppressed" || status == "cancelled";
}

struct Timer {
    ev_timer w;
    std::function<void()> fn;
};

void timer_cb(struct ev_loop *loop, ev_timer *w, int) noexcept {
    auto *t = static_cast<Timer *>(w->data);
    ev_timer_stop(loop, w);
    std::function<void()> fn = std::move(t->fn);
    delete t;
    fn();
}

}  // namespace

struct Delivery::Job {
    QueueEntry entry;
    bool claimed = false;
    bool tried = false;  // some provider was really asked (not all circuits open)
    mailapi::Message msg;
    RecordUpdate rec;
    std::shared_ptr<const ProviderSet> providers;  // keeps `plan` alive across a reload
    std::vector<Provider *> plan;
};

Delivery::Delivery(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, Store &store,
                   Queue *&queue, std::shared_ptr<const ProviderSet> providers, Metrics &metrics)
    : loop_(loop), cfg_(cfg), keyring_(keyring), store_(store), queue_(queue), providers_(std::move(providers)),
      metrics_(metrics) {}

Delivery::~Delivery() = default;

void Delivery::later(double seconds, std::function<void()> fn) {
    auto *t = new Timer{};
    t->fn = std::move(fn);
    ev_timer_init(&t->w, timer_cb, seconds, 0);
    t->w.data = t;
    ev_timer_start(loop_, &t->w);
}

void Delivery::handle(QueueEntry entry, bool claimed) {
    if (!in_flight_.insert(entry.stream_id).second) return;  // already on it (claimed back from ourselves)
    auto job = std::make_shared<Job>();
    job->entry = std::move(entry);
    job->claimed = claimed;
    const QueueEntry &e = job->entry;
    if (!mailapi::message_id_valid(e.id) || e.tenant.empty()) {
        log_error("malformed queue entry dropped", {{"stream_id", e.stream_id}});
        finish(job, [this, job](Queue::Done d) { queue_->ack(job->entry, d); });
        return;
    }
    if (e.send_at > 0 && e.send_at * 1000 > now_ms()) {
        finish(job, [this, job](Queue::Done d) {
            queue_->defer(job->entry, job->entry.send_at * 1000, job->entry.attempt, d);
        });
        return;
    }
    if (!claimed) {
        decide(job);
        return;
    }
    // Taken over from a consumer that died: it may have sent and recorded it.
    store_.status(e.id, [this, job](bool ok, const std::string &status) {
        if (!ok) {
            later(1, [this, job] {
                in_flight_.erase(job->entry.stream_id);
                handle(job->entry, true);
            });
            return;
        }
        if (terminal(status)) {
            finish(job, [this, job](Queue::Done d) { queue_->ack(job->entry, d); });
            return;
        }
        decide(job);
    });
}

void Delivery::decide(std::shared_ptr<Job> job) {
    const QueueEntry &e = job->entry;
    RecordUpdate &rec = job->rec;
    rec.id = e.id;
    rec.tenant = e.tenant;
    rec.envelope = e.envelope;
    rec.created_ms = e.created_ms;
    rec.first = e.attempt == 0 && !job->claimed;
    if (e.attempt == 0) rec.events.push_back({"queued", e.created_ms, "", 0, ""});
    std::string plain;
    mailapi::FieldError ferr;
    if (!mailapi::envelope_open(keyring_, mailapi::envelope_aad(e.tenant, e.id), e.envelope, plain) ||
        !mailapi::message_parse(plain, mailapi::MessageLimits::stored(), 0, job->msg, ferr)) {
        log_error("envelope cannot be opened", {{"id", e.id}, {"tenant", e.tenant}});
        give_up(job, "envelope cannot be decrypted", 0);
        return;
    }
    for (const std::string &addr : mailapi::message_recipients(job->msg)) {
        rec.rcpt.push_back(mailapi::blind_index(keyring_, addr));
    }
    if (now_ms() - e.created_ms > static_cast<int64_t>(cfg_.max_age) * 1000) {
        give_up(job, "expired before it could be sent", 0);
        return;
    }
    job->providers = providers_;
    job->plan = providers_->plan(e.tenant, rng_);
    send(job, 0);
}

// Providers in order: a transient failure moves on to the next at once; the
// retry comes later only when every one of them failed.
void Delivery::send(std::shared_ptr<Job> job, size_t index) {
    Provider *p = job->plan[index];
    int64_t started = now_ms();
    p->send(job->entry.id, job->entry.tenant, job->msg, [this, job, index, p, started](SendOutcome out) {
        log_info(out.result == SendResult::sent ? "sent" : "send failed",
                 {{"id", job->entry.id}, {"tenant", job->entry.tenant}, {"provider", p->name()},
                  {"code", std::to_string(out.code)}, {"ms", std::to_string(now_ms() - started)},
                  {"attempt", std::to_string(job->entry.attempt + 1)}, {"reason", out.reason}});
        job->tried |= !out.skipped;
        if (!out.skipped) metrics_.observe(static_cast<double>(now_ms() - started) / 1000.0);
        metrics_.count(p->name(), out.skipped                             ? "skipped"
                                  : out.result == SendResult::sent      ? "sent"
                                  : out.result == SendResult::permanent ? "rejected"
                                                                        : "transient");
        if (out.result == SendResult::transient && index + 1 < job->plan.size()) {
            job->rec.events.push_back({"provider_failed", now_ms(), p->name(), out.code, out.reason});
            send(job, index + 1);
            return;
        }
        if (!job->tried) {
            // every circuit is open: wait for a cooldown, without spending an attempt
            job->rec.events.clear();
            int64_t due = now_ms() + static_cast<int64_t>(cfg_.breaker_cooldown) * 1000;
            finish(job, [this, job, due](Queue::Done d) {
                queue_->defer(job->entry, due, job->entry.attempt, d);
            });
            return;
        }
        outcome(job, p->name(), out);
    });
}

void Delivery::outcome(std::shared_ptr<Job> job, const std::string &provider, const SendOutcome &out) {
    const QueueEntry &e = job->entry;
    RecordUpdate &rec = job->rec;
    switch (out.result) {
    case SendResult::sent:
        rec.status = "sent";
        rec.events.push_back({"sent", now_ms(), provider, out.code, ""});
        record(job, [this, job] { finish(job, [this, job](Queue::Done d) { queue_->ack(job->entry, d); }); });
        return;
    case SendResult::permanent:
        rec.status = "failed";
        rec.events.push_back({"failed", now_ms(), provider, out.code, out.reason});
        record(job, [this, job] { finish(job, [this, job](Queue::Done d) { queue_->ack(job->entry, d); }); });
        return;
    case SendResult::transient:
        break;
    }
    int attempts = e.attempt + 1;
    if (attempts >= cfg_.max_attempts) {
        give_up(job, "gave up after " + std::to_string(attempts) + " attempts: " + out.reason, out.code);
        return;
    }
    // Exponential backoff with equal jitter: half fixed, half random.
    double delay = std::min<double>(cfg_.retry_max_delay, cfg_.retry_base * std::pow(2.0, attempts - 1));
    delay = delay / 2 + std::uniform_real_distribution<double>(0, delay / 2)(rng_);
    delay = std::max<double>(delay, std::min(out.retry_after, cfg_.retry_max_delay));  // the provider's Retry-After
    int64_t due = now_ms() + static_cast<int64_t>(delay * 1000);
    if (due - e.created_ms > static_cast<int64_t>(cfg_.max_age) * 1000) {
        give_up(job, "gave up: the next attempt would be past max_age: " + out.reason, out.code);
        return;
    }
    rec.status = "queued";
    rec.events.push_back({"deferred", now_ms(), provider, out.code, out.reason});
    record(job, [this, job, due, attempts] {
        finish(job, [this, job, due, attempts](Queue::Done d) { queue_->defer(job->entry, due, attempts, d); });
    });
}

void Delivery::give_up(std::shared_ptr<Job> job, const std::string &reason, int code) {
    job->rec.status = "failed";
    job->rec.events.push_back({"failed", now_ms(), "", code, reason});
    record(job, [this, job, reason] {
        finish(job, [this, job, reason](Queue::Done d) { queue_->dead_letter(job->entry, reason, d); });
    });
}

void Delivery::record(std::shared_ptr<Job> job, std::function<void()> next) {
    store_.write(job->rec, [this, job, next](bool ok, const std::string &err) {
        if (ok) {
            next();
            return;
        }
        log_error("record not written, retrying", {{"id", job->entry.id}, {"error", err}});
        later(1, [this, job, next] { record(job, next); });
    });
}

void Delivery::finish(std::shared_ptr<Job> job, std::function<void(Queue::Done)> step) {
    step([this, job, step](bool ok) {
        if (!ok) {
            later(0.5, [this, job, step] { finish(job, step); });
            return;
        }
        in_flight_.erase(job->entry.stream_id);
        if (on_idle) on_idle();
    });
}

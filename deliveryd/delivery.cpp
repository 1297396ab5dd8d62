#include "delivery.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>

#include <jansson.h>

#include "clock.h"
#include "contract.h"
#include "later.h"
#include "links.h"
#include "log.h"
#include "metrics.h"
#include "suppression.h"

namespace contract = mailapi::contract;
namespace records = mailapi::records;

using mailapi::wall_ms;

namespace {

// Not the wall clock: a clock step does not make a lease look younger or older.
double steady_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

constexpr int64_t KEY_WAIT_MS = 10000;  // a message waiting for its key looks again after this

}  // namespace

struct Delivery::Job {
    QueueEntry entry;
    bool claimed = false;
    bool tried = false;             // some provider was really asked (not all circuits open)
    bool capable = false;           // some provider of the plan could carry it (not `unsupported`)
    std::string sent;               // a provider took it before (the SENT marker): record, do not send
    bool cancelled = false;         // cancelled before anyone took it: record that, send nothing
    double leased_at = 0;           // steady_s() when the lease was last asked for and granted
    bool released = false;          // nothing more of it is written anywhere
    size_t charge = 0;              // bytes counted against max_in_flight_bytes
    mailapi::Message msg;
    std::shared_ptr<RecordWrite> rec = std::make_shared<RecordWrite>();  // what this attempt's outcome writes
    std::shared_ptr<const ProviderSet> providers;  // keeps `plan` alive across a reload
    std::vector<Provider *> plan;
    SendRequest req;                    // what the providers are asked: the message, the recipients left
    size_t recipients = 0;              // the message's envelope recipients
    std::vector<size_t> pending;        // not taken or refused for good yet, ascending
    contract::RecipientsDone done;      // finished: in earlier attempts, and in this one
    std::vector<size_t> taken_now;      // taken in this attempt (the SENT marker lists them)
    std::map<size_t, std::pair<int, std::string>> deferred;  // refused for now in this attempt: code, reason
    std::vector<std::string> recipient_list;  // the envelope's, kept past the message for the webhooks
    size_t suppressed = 0;              // recipients on the suppression list, in this attempt
    std::string last_provider;          // of the last acceptance
    int last_code = 0;
    int64_t last_at = 0;
};

// A message with links for each recipient (unsubscribe, responses) is sent
// as one copy a recipient, one after the other (one copy held at a time),
// each taken recorded in the SENT marker at once; then the others' outcomes
// are those of a relay that answered each recipient.
struct Delivery::Personal {
    std::vector<size_t> left;  // to send to in this round
    size_t next = 0;
    mailapi::Message copy;     // the one under way
    std::vector<SendOutcome::Recipient> refused;
    SendOutcome last;          // the last whole-message failure
    bool each_alike = true;    // every failure was the whole send's (no reply per recipient)
};

Delivery::Delivery(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, RecordStore &store,
                   std::shared_ptr<const ProviderSet> providers, Metrics &metrics)
    : loop_(loop), cfg_(cfg), keyring_(keyring), store_(store), providers_(std::move(providers)),
      metrics_(metrics) {}

Delivery::~Delivery() = default;

std::vector<std::pair<std::string, std::string>> Delivery::working() const {
    std::vector<std::pair<std::string, std::string>> ids;
    ids.reserve(jobs_.size());
    for (const auto &j : jobs_) ids.emplace_back(j.first, j.second->entry.id);
    return ids;
}

void Delivery::later(double seconds, std::function<void()> fn) { run_later(loop_, seconds, std::move(fn)); }

void Delivery::handle(QueueEntry entry, bool claimed) {
    if (jobs_.count(entry.stream_id)) return;  // already on it (claimed back from ourselves)
    if (messages_.count(entry.id)) {
        // Another entry of a message a job here works on (a copy the
        // scheduler made of it while that job's lease ran out and another
        // instance deferred it, say). TAKE lets a consumer take what it holds
        // itself, so a second job would send it too: the entry stays pending,
        // to be taken over once it has been idle for claim_idle.
        log_info("a message under way here came again: left for later",
                 {{"id", entry.id}, {"stream_id", entry.stream_id}});
        return;
    }
    auto job = std::make_shared<Job>();
    job->entry = std::move(entry);
    job->claimed = claimed;
    jobs_[job->entry.stream_id] = job;
    if (mailapi::message_id_valid(job->entry.id)) messages_.insert(job->entry.id);
    const QueueEntry &e = job->entry;
    if (!mailapi::message_id_valid(e.id) || e.tenant.empty()) {
        log_error("malformed queue entry dropped", {{"stream_id", e.stream_id}});
        drop(job);
        return;
    }
    if (e.send_at > 0 && e.send_at * 1000 > wall_ms()) {  // not due: wait in the scheduled set
        defer(job, e.send_at * 1000, e.attempt);
        return;
    }
    if (claimed) {
        check_claimed(job);
        return;
    }
    admit(job);
}

// Taken over from a consumer that died: it may have sent and recorded it.
void Delivery::check_claimed(JobPtr job) {
    store_.lookup(job->entry.tenant, job->entry.id, [this, job](bool ok, const records::Stored &found) {
        if (!ok) {
            later(1, [this, job] { check_claimed(job); });
            return;
        }
        if (const records::Event *t = records::terminal(found, job->entry.gen)) {
            // recorded, and then its owner died: finish what it began
            if (t->dead) dead_letter(job, t->reason);
            else ack(job);
            return;
        }
        admit(job);
    });
}

// The envelope is fetched only when the messages under way leave room for
// it; one message alone is always let through, whatever its size. First
// come, first served: a message that waits for room is not overtaken by
// smaller ones that fit (a steady flow of them kept a large one waiting as
// long as it lasted, and past max_age it was failed unsent).
void Delivery::admit(JobPtr job) {
    if (!waiting_.empty() || !fits(job->entry)) {
        waiting_.push_back(job);
        return;
    }
    charge(job);
}

bool Delivery::fits(const QueueEntry &e) const {
    return bytes_ == 0 || bytes_ + charge_of(e) <= cfg_.max_in_flight_bytes;
}

void Delivery::charge(JobPtr job) {
    job->charge = charge_of(job->entry);
    bytes_ += job->charge;
    fetch(job);
}

void Delivery::fetch(JobPtr job) {
    double asked = steady_s();
    queue_->take(job->entry, [this, job, asked](DeliveryQueue::Take taken, std::string envelope, std::string sent) {
        switch (taken) {
        case DeliveryQueue::Take::failed:
            later(0.5, [this, job] { fetch(job); });
            return;
        case DeliveryQueue::Take::gone:  // finished by another consumer, whose ack removed it
            drop(job);
            return;
        case DeliveryQueue::Take::held:
            // another instance is sending it (a copy of its entry came here:
            // a lost group, a restored Redis): its ack ends this entry too,
            // or, if it dies, the lease runs out and the entry is taken over
            log_info("another instance is on it", {{"id", job->entry.id}});
            release(job);
            return;
        case DeliveryQueue::Take::cancelled:  // DELETE /v1/messages/{id} came first: recorded so, sent to none
            job->cancelled = true;
            break;
        case DeliveryQueue::Take::taken:
            break;
        }
        job->leased_at = asked;
        job->rec->message.envelope = std::move(envelope);
        job->sent = sent;
        decide(job);
    });
}

// A key rotation reaches nginx before this deliveryd: a message sealed with a
// key id its keyring lacks waits (the keyring file is read again, at most
// every few seconds) instead of failing; it fails only past max_age.
bool Delivery::key_known(JobPtr job) {
    std::string kid(mailapi::envelope_key_id(job->rec->message.envelope));
    if (kid.empty() || keyring_.find(kid)) return true;
    if (refresh_keyring && refresh_keyring() && keyring_.find(kid)) return true;
    const QueueEntry &e = job->entry;
    int64_t since = std::max(e.since_ms, e.send_at * 1000);
    if (wall_ms() - since > static_cast<int64_t>(cfg_.max_age) * 1000) {
        give_up(job, "sealed with key \"" + kid + "\", which deliveryd's keyring lacks", 0);
        return false;
    }
    log_warn("message sealed with a key this keyring lacks: add it to the keyring file (it is read again)",
             {{"id", e.id}, {"key_id", kid}});
    std::string().swap(job->rec->message.envelope);
    job->rec->events.clear();
    defer(job, wall_ms() + KEY_WAIT_MS, e.attempt);  // not an attempt: nothing was tried
    return false;
}

void Delivery::event(JobPtr job, std::string id, const char *type, const std::string &provider, int code,
                     const std::string &reason, int rcpt) {
    job->rec->events.push_back({std::move(id), type, wall_ms(), provider, code, reason});
    job->rec->events.back().rcpt = rcpt;
}

void Delivery::decide(JobPtr job) {
    const QueueEntry &e = job->entry;
    records::Message &m = job->rec->message;
    m.id = e.id;
    m.tenant = e.tenant;
    m.created_ms = e.created_ms;
    m.send_at = e.send_at;
    m.expires_ms = contract::expiry_ms(e.created_ms, e.keep_days);  // retention
    // The message's document goes with its first outcome; later outcomes
    // (and a document a previous life of this message wrote) are events.
    job->rec->with_message = e.attempt == 0 && e.gen == 0 && e.done.empty();
    if (job->rec->with_message) job->rec->events.push_back({contract::event_id_queued(), contract::event::QUEUED,
                                                          e.created_ms, "", 0, ""});
    if (!key_known(job)) return;
    std::string plain;
    mailapi::FieldError ferr;
    bool opened = mailapi::envelope_open(keyring_, mailapi::envelope_aad(e.tenant, e.id), m.envelope, plain);
    // While it is sent a message is held once, decrypted, plus what the
    // provider makes of it: a large envelope is let go at once and fetched
    // again for the record.
    if (m.envelope.size() > contract::INLINE_ENVELOPE_MAX) std::string().swap(m.envelope);
    if (!opened || !mailapi::message_parse(plain, mailapi::MessageLimits::stored(), 0, job->msg, ferr)) {
        log_error("envelope cannot be opened", {{"id", e.id}, {"tenant", e.tenant}});
        give_up(job, "envelope cannot be decrypted", 0);
        return;
    }
    std::string().swap(plain);
    for (const std::string &addr : mailapi::message_recipients(job->msg)) {
        contract::bucket_keys(contract::recipient_key(keyring_, e.tenant, addr), e.created_ms, m.rk);
    }
    if (job->rec->with_message) {
        json_t *shown = mailapi::message_json(job->msg, false);
        bool sealed = shown && records::summary_seal(keyring_, e.tenant, e.id, shown, m.summary);
        json_decref(shown);
        if (!sealed) {
            give_up(job, "the summary could not be sealed", 0);
            return;
        }
    }
    // The recipients still to reach: all but those finished in earlier attempts.
    job->recipients = mailapi::message_envelope_recipients(job->msg).size();
    job->done = contract::done_parse(e.done);
    for (size_t i = 0; i < job->recipients; i++) {
        if (!finished_with(job, i)) job->pending.push_back(i);
    }
    if (job->cancelled) {
        event(job, contract::event_id_terminal(e.gen), contract::event::CANCELLED, "", 0, "cancelled through the API");
        record_then(job, [this, job] { ack(job); });
        return;
    }
    if (job->pending.empty()) {  // every recipient finished, the outcome not recorded (a crash)
        terminal(job);
        return;
    }
    // Age counts from when this generation began, or from send_at for a
    // message scheduled ahead.
    int64_t since = std::max(e.since_ms, e.send_at * 1000);
    if (wall_ms() - since > static_cast<int64_t>(cfg_.max_age) * 1000) {
        give_up(job, "expired before it could be sent", 0);
        return;
    }
    if (!job->sent.empty()) {
        sent_before(job, job->sent);
        return;
    }
    start(job);
}

// The recipients on the tenant's suppression list are not sent to: each is
// finished (refused for good, so no retry or replay sends to it) with a
// recipient_suppressed event, or, when all are, the message ends suppressed.
// Asked before every attempt: a bounce between two attempts counts.
void Delivery::screen(JobPtr job, std::function<void()> next) {
    if (job->recipient_list.empty()) job->recipient_list = mailapi::message_envelope_recipients(job->msg);
    std::vector<std::string> keys;
    for (size_t i : job->pending) {
        keys.push_back(contract::recipient_key(keyring_, job->entry.tenant,
                                               mailapi::address_normalise(job->recipient_list[i])));
    }
    std::vector<size_t> asked = job->pending;
    queue_->suppressed(job->entry.tenant, keys, [this, job, next, asked](bool ok, std::vector<std::string> found) {
        if (!ok) {
            later(0.5, [this, job, next] { screen(job, next); });
            return;
        }
        size_t on_list = 0;
        for (const std::string &f : found) on_list += !f.empty();
        // all of the message's recipients: its terminal event says it once
        bool all = on_list == job->recipients;
        for (size_t k = 0; k < asked.size(); k++) {
            if (!found[k].empty()) suppressed(job, asked[k], suppression::reason_of(found[k]), !all);
        }
        next();
    });
}

void Delivery::suppressed(JobPtr job, size_t i, const std::string &reason, bool with_event) {
    auto it = std::find(job->pending.begin(), job->pending.end(), i);
    if (it == job->pending.end()) return;
    job->pending.erase(it);
    job->done.refused.push_back(i);
    job->suppressed++;
    if (!with_event) return;
    event(job, contract::event_id_recipient(job->entry.gen, job->entry.attempt, i, 'u'),
          contract::event::RECIPIENT_SUPPRESSED, "", 0, "on the suppression list (" + reason + ")",
          static_cast<int>(i));
}

// A relay said the mailbox or its domain does not exist: the address goes on
// the tenant's suppression list (a failure to add it is logged, not retried:
// the next bounce adds it).
void Delivery::suppress_bounced(JobPtr job, size_t i, int code, const std::string &reason) {
    if (!suppression::hard_bounce(code, reason) || i >= job->recipient_list.size()) return;
    std::vector<std::string> cmd = suppression::add_command(cfg_.stream, keyring_, job->entry.tenant,
                                                            job->recipient_list[i], contract::reason::BOUNCED,
                                                            wall_ms());
    if (cmd.empty()) return;
    queue_->suppress(std::move(cmd), [id = job->entry.id](bool ok) {
        if (!ok) log_warn("a hard-bounced recipient could not be suppressed", {{"id", id}});
    });
}

bool Delivery::finished_with(const JobPtr &job, size_t i) const {
    const contract::RecipientsDone &d = job->done;
    return std::find(d.sent.begin(), d.sent.end(), i) != d.sent.end() ||
           std::find(d.refused.begin(), d.refused.end(), i) != d.refused.end();
}

void Delivery::start(JobPtr job) {
    screen(job, [this, job] {
        if (job->pending.empty()) {
            terminal(job);
            return;
        }
        job->providers = providers_;
        job->plan = providers_->plan(job->entry.tenant, rng_);
        send(job, 0);
    });
}

// A provider took it in an earlier life of this attempt, which died before
// the record: record that, and send only to whom it did not take.
void Delivery::sent_before(JobPtr job, const std::string &marker) {
    int gen = -1, code = 0;
    long long at = 0;
    char provider[64] = "", list[4096] = "";
    int fields = std::sscanf(marker.c_str(), "%d %63s %d %lld %4095s", &gen, provider, &code, &at, list);
    job->sent.clear();
    if (fields < 4 || gen != job->entry.gen) {
        start(job);  // a marker of another generation: this one was not sent
        return;
    }
    log_info("sent before it was recorded: recording it", {{"id", job->entry.id}, {"provider", provider}});
    // an old marker names no recipients: all of them
    std::vector<size_t> taken = fields == 5 ? contract::done_parse(list).sent : job->pending;
    for (size_t i : taken) accept(job, i, provider, code, at);
    if (job->pending.empty()) {
        terminal(job);
        return;
    }
    start(job);
}

void Delivery::accept(JobPtr job, size_t i, const std::string &provider, int code, int64_t at) {
    auto it = std::find(job->pending.begin(), job->pending.end(), i);
    if (it == job->pending.end()) return;
    job->pending.erase(it);
    job->taken_now.push_back(i);
    job->done.sent.push_back(i);
    job->last_provider = provider;
    job->last_code = code;
    job->last_at = at;
}

void Delivery::refuse(JobPtr job, size_t i, int code, const std::string &reason, bool dead) {
    auto it = std::find(job->pending.begin(), job->pending.end(), i);
    if (it == job->pending.end()) return;
    job->pending.erase(it);
    job->done.refused.push_back(i);
    event(job, contract::event_id_recipient(job->entry.gen, job->entry.attempt, i, 'f'),
          contract::event::RECIPIENT_FAILED, "", code, reason, static_cast<int>(i));
    job->rec->events.back().dead = dead;
    if (!dead) suppress_bounced(job, i, code, reason);
}

// Remembered in Redis at once: should this instance die before the record
// is written, the next one records these instead of sending to them again.
// Written again while Redis does not take it (down or restarting when the
// provider answered) and the message is not done: the record may wait on the
// store for long, and the marker is what keeps a takeover from sending it again.
void Delivery::mark_taken(JobPtr job) {
    const QueueEntry &e = job->entry;
    contract::RecipientsDone taken;
    taken.sent = job->taken_now;
    mark_sent(job, std::to_string(e.gen) + " " + job->last_provider + " " + std::to_string(job->last_code) + " " +
                       std::to_string(job->last_at) + " " + contract::done_format(taken));
}

void Delivery::mark_sent(JobPtr job, const std::string &marker) {
    queue_->mark_sent(job->entry, marker, [this, job, marker](bool ok) {
        if (ok || job->released) return;
        later(0.5, [this, job, marker] {
            if (!job->released) mark_sent(job, marker);
        });
    });
}

// The lease runs claim_idle from when it was last granted, renewed every
// claim_idle/4 while this instance runs and reaches Redis. A step taken long
// after that (a send, or the outcome of a provider that took its time to
// fail, after the process was stopped with SIGSTOP or starved, or Redis was
// out of reach) first asks whether the lease is still this consumer's: if
// another instance took the message over meanwhile, it may be sending it,
// and this one leaves it to that one, without a send or a record.
void Delivery::held(JobPtr job, std::function<void()> next) {
    // a lease granted less than 3/4 of claim_idle ago has a margin left for the clocks of instances
    if (steady_s() - job->leased_at < cfg_.claim_idle * 0.75) {
        next();
        return;
    }
    double asked = steady_s();
    queue_->renew(job->entry, [this, job, next, asked](bool ok, bool still) {
        if (!ok) {
            later(0.5, [this, job, next] { held(job, next); });
            return;
        }
        if (!still) {
            // its entry is the new holder's now (or gone with its ack): nothing to do to it
            log_warn("lost the lease on a message while it waited: left to the instance that took it over",
                     {{"id", job->entry.id}});
            release(job);
            return;
        }
        job->leased_at = asked;
        next();
    });
}

// Providers in order: a transient failure moves on to the next at once; the
// retry comes later only when every one of them failed. Each provider is
// asked only while the lease is still this consumer's.
void Delivery::send(JobPtr job, size_t index) {
    held(job, [this, job, index] { ask(job, index); });
}

void Delivery::observe(JobPtr job, Provider *p, const SendOutcome &out, int64_t started) {
    log_info(out.result == SendResult::sent ? "sent" : "send failed",
             {{"id", job->entry.id}, {"tenant", job->entry.tenant}, {"provider", p->name()},
              {"code", std::to_string(out.code)}, {"ms", std::to_string(wall_ms() - started)},
              {"attempt", std::to_string(job->entry.attempt + 1)}, {"reason", out.reason}});
    job->tried |= !out.skipped;
    job->capable |= !out.unsupported;
    if (!out.skipped) metrics_.observe(static_cast<double>(wall_ms() - started) / 1000.0);
    metrics_.count(p->name(), out.skipped                             ? "skipped"
                              : out.result == SendResult::sent      ? "sent"
                              : out.result == SendResult::permanent ? "rejected"
                                                                    : "transient");
}

void Delivery::ask(JobPtr job, size_t index) {
    Provider *p = job->plan[index];
    int64_t started = wall_ms();
    job->req.id = job->entry.id;
    job->req.tenant = job->entry.tenant;
    job->req.msg = &job->msg;
    job->req.rcpts.clear();
    if (mailapi::links::personal(job->msg)) {
        auto each = std::make_shared<Personal>();
        each->left = job->pending;
        ask_each(job, index, each);
        return;
    }
    if (job->pending.size() < job->recipients) job->req.rcpts = job->pending;
    p->send(job->req, [this, job, index, p, started](SendOutcome out) {
        observe(job, p, out, started);
        bool took = out.result == SendResult::sent ||
                    std::any_of(out.recipients.begin(), out.recipients.end(),
                                [](const SendOutcome::Recipient &r) { return r.result == SendResult::sent; });
        if (took) {
            answered(job, index, p->name(), out);  // sent it was, whoever holds the lease now: recorded
            return;
        }
        held(job, [this, job, index, name = p->name(), out] { answered(job, index, name, out); });
    });
}

void Delivery::ask_each(JobPtr job, size_t index, std::shared_ptr<Personal> each) {
    if (each->next == each->left.size()) {
        asked_each(job, index, each);
        return;
    }
    Provider *p = job->plan[index];
    size_t i = each->left[each->next++];
    each->copy = mailapi::links::personalize(keyring_, job->msg, job->entry.tenant, job->entry.id,
                                             static_cast<int>(i), wall_ms() / 1000);
    job->req.msg = &each->copy;
    job->req.rcpts = {i};
    int64_t started = wall_ms();
    p->send(job->req, [this, job, index, p, started, each, i](SendOutcome out) {
        observe(job, p, out, started);
        SendOutcome::Recipient r{i, out.result, out.code, out.reason};
        if (!out.recipients.empty()) {
            r = out.recipients.front();
            each->each_alike = false;
        }
        if (r.result == SendResult::sent) {
            accept(job, i, p->name(), r.code, wall_ms());
            mark_taken(job);
            each->each_alike = false;
        } else {
            if (!each->refused.empty() && each->refused.back().result != r.result) each->each_alike = false;
            each->refused.push_back(r);
            each->last = out;
        }
        held(job, [this, job, index, each] { ask_each(job, index, each); });
    });
}

void Delivery::asked_each(JobPtr job, size_t index, std::shared_ptr<Personal> each) {
    std::string().swap(each->copy.text);
    std::string().swap(each->copy.html);
    each->copy = mailapi::Message();
    const std::string &provider = job->plan[index]->name();
    if (each->refused.empty()) {
        terminal(job);
        return;
    }
    if (each->each_alike) {  // nobody taken, nothing said per recipient: the provider's answer to all
        each->last.recipients.clear();
        answered(job, index, provider, each->last);
        return;
    }
    SendOutcome out = each->last;
    out.result = SendResult::transient;
    out.recipients = each->refused;
    each_recipient(job, index, provider, out);
}

// What a provider answered (and, unless it took the message for someone,
// the lease is still this consumer's).
void Delivery::answered(JobPtr job, size_t index, const std::string &provider, const SendOutcome &out) {
    {
        if (!out.recipients.empty()) {
            each_recipient(job, index, provider, out);
            return;
        }
        if (out.result == SendResult::sent) {
            for (size_t i : std::vector<size_t>(job->pending)) accept(job, i, provider, out.code, wall_ms());
            mark_taken(job);
            terminal(job);
            return;
        }
        if (out.result == SendResult::transient && index + 1 < job->plan.size()) {
            next_provider(job, index, provider, out);
            return;
        }
        if (out.policy && out.result == SendResult::transient) {
            // every route refused by policy: waiting will not change it
            give_up(job, "refused by the relay's policy: " + out.reason, out.code);
            return;
        }
        if (out.unsupported && !job->capable) {
            // no route can carry it: replay it once one can
            give_up(job, "no route can carry this message: " + out.reason, out.code);
            return;
        }
        if (!job->tried) {
            // every circuit is open: wait for a cooldown, without spending an attempt
            wait_for_circuits(job);
            return;
        }
        if (out.result == SendResult::permanent) {
            refuse_all(job, provider, out.code, out.reason);
            return;
        }
        for (size_t i : job->pending) job->deferred[i] = {out.code, out.reason};
        retry(job, provider, out);
    }
}

void Delivery::next_provider(JobPtr job, size_t index, const std::string &provider, const SendOutcome &out) {
    event(job, contract::event_id_provider_failed(job->entry.gen, job->entry.attempt, static_cast<int>(index)),
          contract::event::PROVIDER_FAILED, provider, out.code, out.reason);
    send(job, index + 1);
}

// A relay answered each recipient: those it took are done, those it refused
// for good fail alone, and those it refused for now are retried with the
// message (or, when it took none, tried through the next provider at once).
void Delivery::each_recipient(JobPtr job, size_t index, const std::string &provider, const SendOutcome &out) {
    bool took = false;
    for (const SendOutcome::Recipient &r : out.recipients) {
        if (r.result == SendResult::sent) {
            accept(job, r.index, provider, r.code, wall_ms());
            took = true;
        } else if (r.result == SendResult::permanent) {
            refuse(job, r.index, r.code, r.reason, false);
        } else {
            job->deferred[r.index] = {r.code, r.reason};
        }
    }
    if (took) mark_taken(job);
    if (job->pending.empty()) {
        terminal(job);
        return;
    }
    if (!took && index + 1 < job->plan.size()) {
        next_provider(job, index, provider, out);
        return;
    }
    retry(job, provider, out);
}

void Delivery::refuse_all(JobPtr job, const std::string &provider, int code, const std::string &reason) {
    if (job->done.sent.empty()) {  // nobody got it: the message failed, one event says why
        for (size_t i : job->pending) suppress_bounced(job, i, code, reason);
        job->done.refused.insert(job->done.refused.end(), job->pending.begin(), job->pending.end());
        job->pending.clear();
        event(job, contract::event_id_terminal(job->entry.gen), contract::event::FAILED, provider, code, reason);
        record_then(job, [this, job] { ack(job); });
        return;
    }
    for (size_t i : std::vector<size_t>(job->pending)) refuse(job, i, code, reason, false);
    terminal(job);
}

// Every recipient is finished: the message was sent if anyone got it.
void Delivery::terminal(JobPtr job) {
    const QueueEntry &e = job->entry;
    if (!job->taken_now.empty() && (job->taken_now.size() < job->recipients || !job->done.refused.empty())) {
        partly_taken(job);
    }
    if (!job->done.sent.empty()) {
        event(job, contract::event_id_terminal(e.gen), contract::event::SENT, job->last_provider, job->last_code, "");
        if (job->last_at) job->rec->events.back().at_ms = job->last_at;
    } else if (job->suppressed == job->recipients) {
        event(job, contract::event_id_terminal(e.gen), contract::event::SUPPRESSED, "", 0,
              "every recipient is on the suppression list");
    } else {
        event(job, contract::event_id_terminal(e.gen), contract::event::FAILED, "", 0, "every recipient was refused");
    }
    record_then(job, [this, job] { ack(job); });
}

// The recipients of this attempt that a provider took, each named, when the
// message's recipients did not all fare alike.
void Delivery::partly_taken(JobPtr job) {
    for (size_t i : job->taken_now) {
        event(job, contract::event_id_recipient(job->entry.gen, job->entry.attempt, i, 's'),
              contract::event::RECIPIENT_SENT, job->last_provider, job->last_code, "", static_cast<int>(i));
        // when the provider took it, as the message's own sent event says:
        // stamped later, it would sort after the sent that ends the timeline
        if (job->last_at) job->rec->events.back().at_ms = job->last_at;
    }
}

void Delivery::wait_for_circuits(JobPtr job) {
    int64_t due = wall_ms() + static_cast<int64_t>(cfg_.breaker_cooldown) * 1000;
    int attempt = job->entry.attempt;
    if (job->taken_now.empty()) {  // nothing happened: nothing to record
        job->rec->events.clear();
        defer(job, due, attempt);
        return;
    }
    partly_taken(job);  // taken before a crash (the SENT marker): recorded before the marker goes
    record_then(job, [this, job, due, attempt] { defer(job, due, attempt); });
}

// Some recipients are left after every provider of the attempt: the message
// is tried again for them later, or given up.
void Delivery::retry(JobPtr job, const std::string &provider, const SendOutcome &out) {
    const QueueEntry &e = job->entry;
    int attempts = e.attempt + 1;
    if (attempts >= cfg_.max_attempts) {
        give_up(job, "gave up after " + std::to_string(attempts) + " attempts: " + out.reason, out.code);
        return;
    }
    // Exponential backoff with equal jitter: half fixed, half random.
    double delay = std::min<double>(cfg_.retry_max_delay, cfg_.retry_base * std::pow(2.0, attempts - 1));
    delay = delay / 2 + std::uniform_real_distribution<double>(0, delay / 2)(rng_);
    delay = std::max<double>(delay, std::min(out.retry_after, cfg_.retry_max_delay));  // the provider's Retry-After
    int64_t due = wall_ms() + static_cast<int64_t>(delay * 1000);
    int64_t since = std::max(e.since_ms, e.send_at * 1000);
    if (due - since > static_cast<int64_t>(cfg_.max_age) * 1000) {
        give_up(job, "gave up: the next attempt would be past max_age: " + out.reason, out.code);
        return;
    }
    bool partly = job->pending.size() < job->recipients;
    if (partly) {
        partly_taken(job);
        for (size_t i : job->pending) {
            auto d = job->deferred.count(i) ? job->deferred[i] : std::make_pair(out.code, out.reason);
            event(job, contract::event_id_recipient(e.gen, e.attempt, i, 'd'), contract::event::RECIPIENT_DEFERRED,
                  provider, d.first, d.second, static_cast<int>(i));
        }
    }
    event(job, contract::event_id_deferred(e.gen, e.attempt), contract::event::DEFERRED, provider, out.code,
          partly ? std::to_string(job->pending.size()) + " of " + std::to_string(job->recipients) +
                       " recipients left: " + out.reason
                 : out.reason);
    record_then(job, [this, job, due, attempts] { defer(job, due, attempts); });
}

// Given up (attempts, age, policy, no route): the recipients left fail, and
// the message goes to the dead letters, from which a replay sends to them.
void Delivery::give_up(JobPtr job, const std::string &reason, int code) {
    if (!job->done.sent.empty()) {
        partly_taken(job);
        std::vector<size_t> left = job->pending;
        for (size_t i : left) refuse(job, i, code, reason, true);
        // given up, not refused: a replay sends to them again
        auto &refused = job->done.refused;
        for (size_t i : left) refused.erase(std::remove(refused.begin(), refused.end(), i), refused.end());
        event(job, contract::event_id_terminal(job->entry.gen), contract::event::SENT, job->last_provider,
              job->last_code, "");
    } else {
        event(job, contract::event_id_terminal(job->entry.gen), contract::event::FAILED, "", code, reason);
    }
    job->rec->events.back().dead = true;  // a takeover after the record sends it to the dead letters too
    record_then(job, [this, job, reason] { dead_letter(job, reason); });
}

void Delivery::record_then(JobPtr job, std::function<void()> next) {
    if (job->rec->with_message && job->rec->message.envelope.empty()) {
        // a large one, let go while it was sent; Redis keeps it until the ack
        queue_->envelope(job->entry, [this, job, next](bool ok, bool gone, std::string envelope) {
            if (!ok) {
                later(0.5, [this, job, next] { record_then(job, next); });
                return;
            }
            if (gone) {  // another consumer finished it, record and all
                drop(job);
                return;
            }
            job->rec->message.envelope = std::move(envelope);
            record_then(job, next);
        });
        return;
    }
    if (job->recipient_list.empty()) job->recipient_list = mailapi::message_envelope_recipients(job->msg);
    job->msg = mailapi::Message();  // sent: only the record is left to write
    // kept until written: a failed write is written again
    store_.write(job->rec, [this, job, next](bool ok, const std::string &err) {
        if (ok) {
            std::string().swap(job->rec->message.envelope);
            recorded(job, next);
            return;
        }
        log_error("record not written, retrying", {{"id", job->entry.id}, {"error", err}});
        later(1, [this, job, next] { record_then(job, next); });
    });
}

// The record is written: its events go to the tenant's webhooks before the
// entry leaves Redis (a crash in between repeats both: at least once).
void Delivery::recorded(JobPtr job, std::function<void()> next) {
    if (!on_recorded) {
        next();
        return;
    }
    on_recorded(job->entry.tenant, job->entry.id, job->rec->events, job->recipient_list, [this, job, next](bool ok) {
        if (ok) {
            next();
            return;
        }
        later(1, [this, job, next] { recorded(job, next); });
    });
}

void Delivery::ack(JobPtr job) {
    finish(job, [this, job](DeliveryQueue::Done d) { queue_->ack(job->entry, d); });
}

void Delivery::drop(JobPtr job) {
    finish(job, [this, job](DeliveryQueue::Done d) { queue_->drop(job->entry, d); });
}

void Delivery::defer(JobPtr job, int64_t due_ms, int attempt) {
    job->entry.done = contract::done_format(job->done);
    finish(job, [this, job, due_ms, attempt](DeliveryQueue::Done d) { queue_->defer(job->entry, due_ms, attempt, d); });
}

void Delivery::dead_letter(JobPtr job, const std::string &reason) {
    job->entry.done = contract::done_format(job->done);
    finish(job, [this, job, reason](DeliveryQueue::Done d) { queue_->dead_letter(job->entry, reason, d); });
}

void Delivery::finish(JobPtr job, std::function<void(DeliveryQueue::Done)> step) {
    step([this, job, step](bool ok) {
        if (!ok) {
            later(0.5, [this, job, step] { finish(job, step); });
            return;
        }
        release(job);
    });
}

void Delivery::release(JobPtr job) {
    job->released = true;
    if (jobs_.erase(job->entry.stream_id)) messages_.erase(job->entry.id);
    bytes_ -= std::min(bytes_, job->charge);
    job->charge = 0;
    while (!waiting_.empty() && fits(waiting_.front()->entry)) {
        JobPtr next = waiting_.front();
        waiting_.pop_front();
        charge(next);
    }
    if (on_idle) on_idle();
}

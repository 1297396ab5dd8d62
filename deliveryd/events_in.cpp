#include "events_in.h"

#include <openssl/sha.h>

#include <cstring>

#include "clock.h"
#include "contract.h"
#include "json.h"
#include "later.h"
#include "log.h"
#include "message.h"
#include "provider_events.h"
#include "records.h"
#include "redis_reply.h"
#include "suppression.h"

namespace contract = mailapi::contract;
namespace records = mailapi::records;
namespace pevents = mailapi::pevents;

using mailapi::wall_ms;
using mailapi::reply_field;

namespace {

constexpr int BATCH = 64;
constexpr int MAX_WORKING = 512;
constexpr int64_t WAIT_FOR_RECORD_MS = 86400000;  // an event whose message never shows up is dropped after this
constexpr double RECORD_RETRY_S = 5;

// An event id fixed by the provider's: its timeline holds it once.
std::string event_id(const std::string &source, const std::string &provider_id) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    std::string data = source + '\0' + provider_id;
    SHA256(reinterpret_cast<const unsigned char *>(data.data()), data.size(), md);
    static const char hex[] = "0123456789abcdef";
    std::string id = "p";
    for (int i = 0; i < 10; i++) {
        id.push_back(hex[md[i] >> 4]);
        id.push_back(hex[md[i] & 15]);
    }
    return id;
}

}  // namespace

EventsIn::EventsIn(struct ev_loop *loop, const Config &cfg, const mailapi::Keyring &keyring, RecordStore &store)
    : loop_(loop), cfg_(cfg), keyring_(keyring), store_(store), stream_(contract::events_stream(cfg.stream)),
      redis_(loop, "events", cfg.redis, 10.0) {
    ev_timer_init(&poll_, poll_cb, 0.2, 0.2);
    poll_.data = this;
    ev_timer_init(&claim_, claim_cb, 1, std::max(1, cfg.claim_idle / 2));
    claim_.data = this;
    ev_timer_init(&touch_, touch_cb, 1, std::max(1, cfg.claim_idle / 4));
    touch_.data = this;
}

EventsIn::~EventsIn() {
    ev_timer_stop(loop_, &poll_);
    ev_timer_stop(loop_, &claim_);
    ev_timer_stop(loop_, &touch_);
}

void EventsIn::start() {
    redis_.on_connect = [this] {
        reading_ = false;
        redis_.command({"XGROUP", "CREATE", stream_, cfg_.group, "0", "MKSTREAM"}, [this](redisReply *r) {
            group_ready_ = r && (r->type != REDIS_REPLY_ERROR || std::strncmp(r->str, "BUSYGROUP", 9) == 0);
            if (group_ready_) read("0");  // what this consumer's previous life left pending
        });
    };
    redis_.start();
    ev_timer_start(loop_, &poll_);
    ev_timer_start(loop_, &claim_);
    ev_timer_start(loop_, &touch_);
}

void EventsIn::stop() {
    stopping_ = true;
    ev_timer_stop(loop_, &poll_);
    ev_timer_stop(loop_, &claim_);
}

void EventsIn::poll_cb(struct ev_loop *, ev_timer *w, int) noexcept { static_cast<EventsIn *>(w->data)->read(">"); }

// Entries of an instance that died, idle past claim_idle: taken over.
void EventsIn::claim_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<EventsIn *>(w->data);
    if (!self->group_ready_ || self->stopping_ || self->working_.size() >= MAX_WORKING) return;
    self->redis_.command({"XAUTOCLAIM", self->stream_, self->cfg_.group, self->cfg_.consumer,
                          std::to_string(static_cast<int64_t>(self->cfg_.claim_idle) * 1000), self->claim_cursor_,
                          "COUNT", std::to_string(BATCH)},
                         [self](redisReply *r) {
                             if (!r || r->type != REDIS_REPLY_ARRAY || r->elements < 2) return;
                             if (r->element[0]->type == REDIS_REPLY_STRING) self->claim_cursor_ = r->element[0]->str;
                             self->take(r->element[1]);
                         });
}

// Resets the idle time of the entries worked on here (one waiting for its
// record, a slow store): none is taken over by another instance while this
// one lives, which worked on it too and told the webhooks of it twice.
void EventsIn::touch_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    auto *self = static_cast<EventsIn *>(w->data);
    if (!self->group_ready_ || self->working_.empty()) return;
    std::vector<std::string> claim;
    for (auto it = self->working_.begin(); it != self->working_.end(); ++it) {
        if (claim.empty()) claim = {"XCLAIM", self->stream_, self->cfg_.group, self->cfg_.consumer, "0"};
        claim.push_back(it->first);
        if (claim.size() == 505 || std::next(it) == self->working_.end()) {
            claim.push_back("JUSTID");
            self->redis_.command(claim, [](redisReply *r) {
                if (r && r->type == REDIS_REPLY_ERROR) log_error("cannot keep events claimed", {{"error", r->str}});
            });
            claim.clear();
        }
    }
}

// ">": new entries; "0": this consumer's own, pending from before a restart.
void EventsIn::read(const char *from) {
    if (!group_ready_ || reading_ || stopping_ || working_.size() >= MAX_WORKING) return;
    reading_ = true;
    std::string id = from;
    bool sent = redis_.command(
        {"XREADGROUP", "GROUP", cfg_.group, cfg_.consumer, "COUNT", std::to_string(BATCH), "STREAMS", stream_, id},
        [this, id](redisReply *r) {
            reading_ = false;
            if (!r || r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->element[0]->elements != 2) {
                if (r && r->type == REDIS_REPLY_ERROR && std::strncmp(r->str, "NOGROUP", 7) == 0) group_ready_ = false;
                return;
            }
            const redisReply *list = r->element[0]->element[1];
            take(list);
            if (list->elements == static_cast<size_t>(BATCH)) read(id.c_str());  // more are waiting
        });
    if (!sent) reading_ = false;
}

// The entries of a reply (XREADGROUP's or XAUTOCLAIM's), each handled once.
void EventsIn::take(const redisReply *list) {
    if (list == nullptr || list->type != REDIS_REPLY_ARRAY) return;
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *e = list->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[1]->type != REDIS_REPLY_ARRAY) {
            continue;  // an entry deleted meanwhile
        }
        Entry en;
        en.stream_id = e->element[0]->str;
        en.source = reply_field(e->element[1], contract::field::SRC);
        en.message_id = reply_field(e->element[1], contract::field::MID);
        en.sealed = reply_field(e->element[1], contract::field::ENVELOPE);
        en.queued_ms = std::atoll(en.stream_id.c_str());
        if (!working_.count(en.stream_id)) handle(std::move(en));
    }
}

void EventsIn::later(double seconds, std::function<void()> fn) { run_later(loop_, seconds, std::move(fn)); }

// Redis first, then the store: a message's record is written before its
// hash goes, so a hash already gone when the store is asked means the store
// has all there will ever be. An event for an id that is neither (another
// system's mail through the same account, a message erased since, an open
// weeks late) is dropped then: waiting a day for it held a working slot, and
// MAX_WORKING of them stopped every event behind them.
void EventsIn::handle(Entry e) {
    working_[e.stream_id] = e;
    bool sent = redis_.command({"EXISTS", contract::message_key(cfg_.stream, e.message_id)}, [this, e](redisReply *r) {
        if (!r || r->type != REDIS_REPLY_INTEGER) {
            later(1, [this, e] { handle(e); });
            return;
        }
        lookup(e, r->integer == 1);
    });
    if (!sent) later(1, [this, e] { handle(e); });
}

void EventsIn::lookup(const Entry &e, bool pending) {
    store_.lookup("", e.message_id, [this, e, pending](bool ok, const records::Stored &found) {
        if (!ok) {
            later(1, [this, e] { handle(e); });
            return;
        }
        if (found.has_message) return apply(e, found);
        if (!pending) {
            log_info("provider event for a message neither queued nor recorded: dropped",
                     {{"id", e.message_id}, {"source", e.source}});
            return finish(e);
        }
        if (wall_ms() - e.queued_ms > WAIT_FOR_RECORD_MS) {
            log_warn("provider event for a message the store never had: dropped",
                     {{"id", e.message_id}, {"source", e.source}});
            return finish(e);
        }
        later(RECORD_RETRY_S, [this, e] { handle(e); });  // its record is not written yet
    });
}

void EventsIn::apply(const Entry &e, const records::Stored &found) {
    std::string plain;
    pevents::Event ev;
    if (!mailapi::envelope_open(keyring_, contract::event_aad(e.source, e.message_id), e.sealed, plain) ||
        !pevents::event_from_json(plain, ev) || ev.message_id != e.message_id) {
        log_error("provider event cannot be opened: dropped", {{"id", e.message_id}, {"source", e.source}});
        finish(e);
        return;
    }
    bool ours = e.source == contract::LINKS_SOURCE;
    if (ours && ev.tenant != found.tenant) {  // signed for another tenant's message: never ours to record
        log_error("a link's event names another tenant's message: dropped", {{"id", e.message_id}});
        finish(e);
        return;
    }
    auto w = std::make_shared<RecordWrite>();
    w->message.id = found.id;
    w->message.tenant = found.tenant;
    w->message.rk = found.rk;
    w->message.expires_ms = found.expires_ms;  // retention: swept with the message
    records::Event out;
    out.id = event_id(e.source, ev.id);
    out.type = ev.type;
    out.at_ms = ev.at_ms ? ev.at_ms : e.queued_ms;
    out.provider = ours ? "" : e.source;
    out.code = ev.code;
    out.reason = ev.reason;
    out.bounce = ev.bounce;
    out.response = ev.response;
    // which recipient: its index among the message's, from its summary
    mailapi::Json summary(records::summary_open(keyring_, found.tenant, found.id, found.summary));
    std::vector<std::string> rcpts;
    if (summary) {
        rcpts = records::shown_recipients(summary.get());
        std::string want = mailapi::address_normalise(ev.recipient);
        for (size_t i = 0; i < rcpts.size(); i++) {
            if (mailapi::address_normalise(rcpts[i]) == want) out.rcpt = static_cast<int>(i);
        }
        if (ours) out.rcpt = ev.rcpt >= 0 && static_cast<size_t>(ev.rcpt) < rcpts.size() ? ev.rcpt : -1;
    }
    // whom a hard bounce, a complaint or an unsubscribe puts on the tenant's suppression list
    std::string suppress = out.rcpt >= 0 ? rcpts[static_cast<size_t>(out.rcpt)] : ours ? "" : ev.recipient;
    w->events.push_back(std::move(out));
    store_.write(w, [this, e, found, w, rcpts, suppress](bool ok, const std::string &err) {
        if (!ok) {
            log_error("provider event not written, retrying", {{"id", e.message_id}, {"error", err}});
            later(1, [this, e, found] { apply(e, found); });
            return;
        }
        suppress_then(e, w, suppress, [this, e, w, rcpts] { recorded(e, w, rcpts); });
    });
}

// The event is in the timeline; before it goes to the webhooks, its
// recipient is suppressed if it hard-bounced, complained or unsubscribed.
void EventsIn::suppress_then(const Entry &e, std::shared_ptr<RecordWrite> w, const std::string &address,
                             std::function<void()> next) {
    const records::Event &ev = w->events.front();
    const char *reason = ev.type == contract::event::BOUNCED && ev.bounce == "hard" ? contract::reason::BOUNCED
                         : ev.type == contract::event::COMPLAINED                 ? contract::reason::COMPLAINED
                         : ev.type == contract::event::UNSUBSCRIBED               ? contract::reason::UNSUBSCRIBED
                                                                                  : nullptr;
    if (reason == nullptr || address.empty()) return next();
    std::vector<std::string> cmd =
        suppression::add_command(cfg_.stream, keyring_, w->message.tenant, address, reason, ev.at_ms);
    if (cmd.empty()) return next();
    bool sent = redis_.command(cmd, [this, e, w, address, next](redisReply *r) {
        if (!r || r->type == REDIS_REPLY_ERROR) {
            later(1, [this, e, w, address, next] { suppress_then(e, w, address, next); });
            return;
        }
        next();
    });
    if (!sent) later(1, [this, e, w, address, next] { suppress_then(e, w, address, next); });
}

// To the tenant's webhooks, then the entry goes (at least once).
void EventsIn::recorded(const Entry &e, std::shared_ptr<RecordWrite> w, std::vector<std::string> recipients) {
    if (!on_recorded) return finish(e);
    on_recorded(w->message.tenant, w->message.id, w->events, recipients, [this, e, w, recipients](bool ok) {
        if (ok) return finish(e);
        later(1, [this, e, w, recipients] { recorded(e, w, recipients); });
    });
}

void EventsIn::finish(const Entry &e) {
    bool sent = redis_.command({"EVAL", contract::EVENT_DONE_LUA, "1", stream_, cfg_.group, e.stream_id},
                               [this, e](redisReply *r) {
                                   if (!r || r->type == REDIS_REPLY_ERROR) {
                                       later(1, [this, e] { finish(e); });
                                       return;
                                   }
                                   working_.erase(e.stream_id);
                               });
    if (!sent) later(1, [this, e] { finish(e); });
}

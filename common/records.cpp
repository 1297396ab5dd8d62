#include "records.h"

#include <algorithm>
#include <cstring>

#include "contract.h"
#include "message.h"

namespace mailapi::records {

namespace {

void append_event_fields(bson_t *doc, const Event &e) {
    BSON_APPEND_UTF8(doc, field::EID, e.id.c_str());
    BSON_APPEND_UTF8(doc, field::TYPE, e.type.c_str());
    BSON_APPEND_DATE_TIME(doc, field::AT, e.at_ms);
    if (!e.provider.empty()) BSON_APPEND_UTF8(doc, field::PROVIDER, e.provider.c_str());
    if (e.code) BSON_APPEND_INT32(doc, field::CODE, e.code);
    if (!e.reason.empty()) BSON_APPEND_UTF8(doc, field::REASON, e.reason.c_str());
    if (e.dead) BSON_APPEND_BOOL(doc, field::DEAD, true);
    if (e.rcpt >= 0) BSON_APPEND_INT32(doc, field::RCPT, e.rcpt);
    if (!e.bounce.empty()) BSON_APPEND_UTF8(doc, field::BOUNCE, e.bounce.c_str());
    if (!e.response.empty()) BSON_APPEND_UTF8(doc, field::RESPONSE, e.response.c_str());
}

void append_expires(bson_t *doc, const Message &m) {
    if (m.expires_ms > 0) BSON_APPEND_DATE_TIME(doc, field::EXPIRES_AT, m.expires_ms);
}

void append_common(bson_t *doc, const Message &m) {
    BSON_APPEND_UTF8(doc, field::M, m.id.c_str());
    BSON_APPEND_UTF8(doc, field::TENANT, m.tenant.c_str());
    append_expires(doc, m);
    bson_t arr;
    BSON_APPEND_ARRAY_BEGIN(doc, field::RK, &arr);
    char idx[16];
    for (size_t i = 0; i < m.rk.size(); i++) {
        const char *key;
        bson_uint32_to_string(static_cast<uint32_t>(i), &key, idx, sizeof idx);
        bson_append_utf8(&arr, key, -1, m.rk[i].c_str(), static_cast<int>(m.rk[i].size()));
    }
    bson_append_array_end(doc, &arr);
}

std::string utf8(const bson_iter_t *it) {
    uint32_t len = 0;
    const char *s = bson_iter_utf8(it, &len);
    return std::string(s, len);
}

bool read_event(bson_iter_t *it, Event &e) {
    while (bson_iter_next(it)) {
        const char *k = bson_iter_key(it);
        if (BSON_ITER_HOLDS_UTF8(it)) {
            if (!strcmp(k, field::EID)) e.id = utf8(it);
            else if (!strcmp(k, field::TYPE)) e.type = utf8(it);
            else if (!strcmp(k, field::PROVIDER)) e.provider = utf8(it);
            else if (!strcmp(k, field::REASON)) e.reason = utf8(it);
            else if (!strcmp(k, field::BOUNCE)) e.bounce = utf8(it);
            else if (!strcmp(k, field::RESPONSE)) e.response = utf8(it);
        } else if (BSON_ITER_HOLDS_DATE_TIME(it) && !strcmp(k, field::AT)) {
            e.at_ms = bson_iter_date_time(it);
        } else if (BSON_ITER_HOLDS_NUMBER(it) && !strcmp(k, field::CODE)) {
            e.code = static_cast<int>(bson_iter_as_int64(it));
        } else if (BSON_ITER_HOLDS_NUMBER(it) && !strcmp(k, field::RCPT)) {
            int64_t r = bson_iter_as_int64(it);
            e.rcpt = r >= 0 && r < 100000 ? static_cast<int>(r) : -1;
        } else if (BSON_ITER_HOLDS_BOOL(it) && !strcmp(k, field::DEAD)) {
            e.dead = bson_iter_bool(it);
        }
    }
    return !e.id.empty() && !e.type.empty();
}

}  // namespace

std::string event_document_id(const std::string &message_id, const std::string &event_id) {
    return message_id + "." + event_id;
}

std::string body_document_id(const std::string &message_id) { return message_id + ".body"; }

std::string expiry_document_id(const std::string &message_id) { return message_id + ".x"; }

bool append_expiry(bson_t *doc, const Message &m) {
    if (m.expires_ms <= 0) return false;
    BSON_APPEND_UTF8(doc, field::ID, expiry_document_id(m.id).c_str());
    BSON_APPEND_UTF8(doc, field::M, m.id.c_str());
    BSON_APPEND_UTF8(doc, field::TENANT, m.tenant.c_str());
    BSON_APPEND_UTF8(doc, field::X, std::to_string(contract::expiry_day(m.expires_ms)).c_str());
    BSON_APPEND_DATE_TIME(doc, field::EXPIRES_AT, m.expires_ms);
    return true;
}

void append_bytes(bson_t *doc, const char *name, const std::string &bytes) {
    bson_append_binary(doc, name, -1, BSON_SUBTYPE_BINARY, reinterpret_cast<const uint8_t *>(bytes.data()),
                       static_cast<uint32_t>(bytes.size()));
}

bool inline_envelope(const Message &m) { return m.envelope.size() <= contract::INLINE_ENVELOPE_MAX; }

void append_message(bson_t *doc, const Message &m, const std::vector<Event> &events) {
    BSON_APPEND_UTF8(doc, field::ID, m.id.c_str());
    append_common(doc, m);
    BSON_APPEND_DATE_TIME(doc, field::CREATED_AT, m.created_ms);
    if (m.send_at) BSON_APPEND_DATE_TIME(doc, field::SEND_AT, m.send_at * 1000);
    append_bytes(doc, field::SUMMARY, m.summary);
    if (inline_envelope(m)) append_bytes(doc, field::ENVELOPE, m.envelope);
    bson_t arr, ev;
    BSON_APPEND_ARRAY_BEGIN(doc, field::EVENTS, &arr);
    char idx[16];
    for (size_t i = 0; i < events.size(); i++) {
        const char *key;
        bson_uint32_to_string(static_cast<uint32_t>(i), &key, idx, sizeof idx);
        bson_append_document_begin(&arr, key, -1, &ev);
        append_event_fields(&ev, events[i]);
        bson_append_document_end(&arr, &ev);
    }
    bson_append_array_end(doc, &arr);
}

bool append_body(bson_t *doc, const Message &m) {
    if (inline_envelope(m)) return false;
    BSON_APPEND_UTF8(doc, field::ID, body_document_id(m.id).c_str());
    BSON_APPEND_UTF8(doc, field::M, m.id.c_str());
    BSON_APPEND_UTF8(doc, field::TENANT, m.tenant.c_str());
    append_expires(doc, m);
    append_bytes(doc, field::ENVELOPE, m.envelope);
    return true;
}

void append_event(bson_t *doc, const Message &m, const Event &e) {
    BSON_APPEND_UTF8(doc, field::ID, event_document_id(m.id, e.id).c_str());
    append_common(doc, m);
    append_event_fields(doc, e);
}

bool read_bytes(const bson_t *doc, const char *name, std::string &out) {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, name) || !BSON_ITER_HOLDS_BINARY(&it)) return false;
    bson_subtype_t sub;
    uint32_t len = 0;
    const uint8_t *data = nullptr;
    bson_iter_binary(&it, &sub, &len, &data);
    out.assign(reinterpret_cast<const char *>(data), len);
    return true;
}

bool read_document(const bson_t *doc, std::map<std::string, Stored> &out) {
    bson_iter_t it;
    if (!bson_iter_init_find(&it, doc, field::M) || !BSON_ITER_HOLDS_UTF8(&it)) return false;
    bson_iter_t x;
    if (bson_iter_init_find(&x, doc, field::X)) return false;  // an expiry document: nothing a reader shows
    std::string id = utf8(&it);
    Stored &s = out[id];
    s.id = id;
    if (bson_iter_init_find(&it, doc, field::EVENTS) && BSON_ITER_HOLDS_ARRAY(&it)) {  // a message
        std::vector<Event> embedded;
        bson_iter_t arr;
        if (bson_iter_recurse(&it, &arr)) {
            while (bson_iter_next(&arr)) {
                bson_iter_t ev;
                Event e;
                if (BSON_ITER_HOLDS_DOCUMENT(&arr) && bson_iter_recurse(&arr, &ev) && read_event(&ev, e)) {
                    embedded.push_back(std::move(e));
                }
            }
        }
        // first, so that they win over any event document of the same id
        s.events.insert(s.events.begin(), std::make_move_iterator(embedded.begin()),
                        std::make_move_iterator(embedded.end()));
        s.has_message = true;
        read_bytes(doc, field::SUMMARY, s.summary);
        if (bson_iter_init_find(&it, doc, field::TENANT) && BSON_ITER_HOLDS_UTF8(&it)) s.tenant = utf8(&it);
        bson_iter_t rk;
        if (bson_iter_init_find(&it, doc, field::RK) && BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &rk)) {
            s.rk.clear();
            while (bson_iter_next(&rk)) {
                if (BSON_ITER_HOLDS_UTF8(&rk)) s.rk.push_back(utf8(&rk));
            }
        }
        if (bson_iter_init_find(&it, doc, field::CREATED_AT) && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            s.created_ms = bson_iter_date_time(&it);
        }
        if (bson_iter_init_find(&it, doc, field::SEND_AT) && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            s.send_at = bson_iter_date_time(&it) / 1000;
        }
        if (bson_iter_init_find(&it, doc, field::EXPIRES_AT) && BSON_ITER_HOLDS_DATE_TIME(&it)) {
            s.expires_ms = bson_iter_date_time(&it);
        }
        read_bytes(doc, field::ENVELOPE, s.envelope);
        return true;
    }
    if (!bson_iter_init_find(&it, doc, field::EID)) return read_bytes(doc, field::ENVELOPE, s.envelope);  // a body
    if (!bson_iter_init(&it, doc)) return false;
    Event e;
    if (!read_event(&it, e)) return false;
    s.events.push_back(std::move(e));
    return true;
}

bool read_envelope(const bson_t *doc, std::string &out) { return read_bytes(doc, field::ENVELOPE, out); }

void finish(Stored &s) {
    // stable: of two with one id, the first (the message document's) stays
    std::stable_sort(s.events.begin(), s.events.end(), [](const Event &a, const Event &b) {
        return a.id < b.id;
    });
    s.events.erase(std::unique(s.events.begin(), s.events.end(),
                               [](const Event &a, const Event &b) { return a.id == b.id; }),
                   s.events.end());
    // In time; within one millisecond, in the order a delivery goes through.
    auto stage = [](const Event &e) {
        return e.type == contract::event::QUEUED            ? 0
               : e.type == contract::event::PROVIDER_FAILED ? 1
               : e.type == contract::event::RECIPIENT_SENT ? 2
               : e.type == contract::event::RECIPIENT_FAILED ? 2
               : e.type == contract::event::RECIPIENT_DEFERRED ? 3
               : e.type == contract::event::DEFERRED        ? 4
               : contract::is_terminal_type(e.type)         ? 5
                                                            : 6;
    };
    std::stable_sort(s.events.begin(), s.events.end(), [&](const Event &a, const Event &b) {
        return a.at_ms != b.at_ms ? a.at_ms < b.at_ms : stage(a) < stage(b);
    });
}

std::string status_of(const Stored &s, int64_t now_ms) {
    int best_gen = -1;
    std::string status;
    bool tried = false;
    for (const Event &e : s.events) {
        int gen = contract::terminal_generation(e.id);
        if (gen > best_gen && contract::is_terminal_type(e.type)) {
            best_gen = gen;
            status = e.type;
        }
        tried |= e.type != contract::event::QUEUED;
    }
    if (best_gen >= 0) return status;
    if (!tried && s.send_at * 1000 > now_ms) return contract::status::SCHEDULED;
    return contract::status::QUEUED;
}

bool finished(const Stored &s, int gen) { return terminal(s, gen) != nullptr; }

const Event *terminal(const Stored &s, int gen) {
    const Event *best = nullptr;
    for (const Event &e : s.events) {
        int g = contract::terminal_generation(e.id);
        if (g >= gen && contract::is_terminal_type(e.type) && (!best || g > contract::terminal_generation(best->id))) {
            best = &e;
        }
    }
    return best;
}

int64_t updated_ms(const Stored &s) {
    int64_t t = s.created_ms;
    for (const Event &e : s.events) t = std::max(t, e.at_ms);
    return t;
}

namespace {

// How far a recipient's mail got; a state moves only forward.
int rank(const std::string &status) {
    if (status == contract::status::SENT) return 2;
    if (status == contract::status::DELIVERED) return 3;
    if (status == contract::status::BOUNCED || status == contract::status::COMPLAINED ||
        status == contract::status::FAILED || status == contract::status::SUPPRESSED) {
        return 4;
    }
    return status == "deferred" ? 1 : 0;
}

// What a provider's event says of the recipient's state, or "" (opened,
// clicked, delayed, unsubscribed: the timeline only).
const char *provider_state(const std::string &type) {
    if (type == contract::event::DELIVERED) return contract::status::DELIVERED;
    if (type == contract::event::BOUNCED) return contract::status::BOUNCED;
    if (type == contract::event::COMPLAINED) return contract::status::COMPLAINED;
    return nullptr;
}

// Our side (our events: sent, failed, deferred, per recipient), then what the
// providers said after they took it, each recipient as far as its mail got
// (whatever order the events' clocks put them in).
std::vector<RecipientState> states(const Stored &s, size_t count, const std::string &ours) {
    std::vector<RecipientState> out(count, RecipientState{contract::is_terminal_type(ours) ? contract::status::QUEUED
                                                                                           : ours});
    std::vector<RecipientState> told(count);
    for (const Event &e : s.events) {  // in time order
        if (contract::is_recipient_type(e.type)) {
            if (e.rcpt < 0 || static_cast<size_t>(e.rcpt) >= count) continue;
            RecipientState &r = out[static_cast<size_t>(e.rcpt)];
            if (e.type == contract::event::RECIPIENT_DEFERRED) {
                if (!r.own) r = {"deferred", &e, false};
            } else {
                r = {e.type == contract::event::RECIPIENT_SENT         ? contract::status::SENT
                     : e.type == contract::event::RECIPIENT_SUPPRESSED ? contract::status::SUPPRESSED
                                                                       : contract::status::FAILED,
                     &e, true};
            }
        } else if (contract::is_terminal_type(e.type)) {
            // the rest of this generation's recipients fared as the message
            for (RecipientState &r : out) {
                if (!r.own) r = {e.type, &e, false};
            }
        } else if (const char *state = provider_state(e.type)) {
            for (size_t i = 0; i < count; i++) {
                bool this_one = e.rcpt < 0 ? count == 1 : static_cast<size_t>(e.rcpt) == i;
                if (this_one && rank(state) > rank(told[i].status)) told[i] = {state, &e, false};
            }
        }
    }
    for (size_t i = 0; i < count; i++) {
        if (out[i].status == contract::status::SENT && !told[i].status.empty()) out[i] = told[i];
    }
    return out;
}

}  // namespace

std::vector<RecipientState> recipient_states(const Stored &s, size_t count, int64_t now_ms) {
    return states(s, count, status_of(s, now_ms));
}

std::string message_status(const Stored &s, size_t count, int64_t now_ms) {
    std::string ours = status_of(s, now_ms);
    if (ours != contract::status::SENT || count == 0) return ours;
    // sent: then as far as all of its recipients got (delivered once each
    // was delivered, or bounced...), the least far of them
    std::string least;
    for (const RecipientState &r : states(s, count, ours)) {
        if (rank(r.status) < 3) return ours;
        if (least.empty() || rank(r.status) < rank(least)) least = r.status;
    }
    return least.empty() ? ours : least;
}

bool summary_seal(const Keyring &ring, std::string_view tenant, std::string_view id, json_t *message,
                  std::string &out) {
    // what a list shows of a message: every field but its bodies
    json_t *copy = json_deep_copy(message);
    if (copy == nullptr) return false;
    json_object_del(copy, "text");
    json_object_del(copy, "html");
    char *text = json_dumps(copy, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(copy);
    if (text == nullptr) return false;
    bool ok = envelope_seal(ring, contract::summary_aad(tenant, id), text, out);
    free(text);
    return ok;
}

json_t *summary_open(const Keyring &ring, std::string_view tenant, std::string_view id, std::string_view sealed) {
    std::string plain;
    if (!envelope_open(ring, contract::summary_aad(tenant, id), sealed, plain)) return nullptr;
    json_t *j = json_loadb(plain.data(), plain.size(), 0, nullptr);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return nullptr;
    }
    return j;
}

std::vector<std::string> shown_recipients(json_t *item) {
    mailapi::Message m;
    for (auto list : {std::make_pair("to", &m.to), std::make_pair("cc", &m.cc), std::make_pair("bcc", &m.bcc)}) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(item, list.first), i, v) {
            const char *email = json_string_value(json_object_get(v, "email"));
            if (email) list.second->push_back({email, ""});
        }
    }
    return mailapi::message_envelope_recipients(m);
}

}  // namespace mailapi::records

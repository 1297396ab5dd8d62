// The store's documents, built and read in one place (docs/storage.md).
//
// Collection "messages" holds three kinds of documents, all only ever
// inserted (never updated), so that concurrent writers cannot lose each
// other's writes and a write repeated after a failure changes nothing:
//   a message:  {_id: id, m: id, tenant, rk: [...], created_at, send_at?,
//                summary, envelope?, events: [...]}  with its first outcome
//   its body:   {_id: "<id>.body", m: id, tenant, envelope}  when the envelope
//                is larger than INLINE_ENVELOPE_MAX
//   an event:   {_id: "<id>.<eid>", m: id, tenant, rk: [...], eid, type, at,
//                provider?, code?, reason?}  every later event
// All carry `m` (one lookup finds a message, its body and its events);
// messages and events carry `rk` (one lookup finds a bucket's messages and
// events; lists read summaries, never envelopes). The summary is the message
// without its bodies and attachment contents, sealed on its own. A
// message's status is derived from its events, never stored.
// A message of a tenant with a retention carries expires_at on each of its
// documents, and has one more, found by its day bucket by the sweeper:
//   its expiry: {_id: "<id>.x", m: id, tenant, x: "<day of expires_at>", expires_at}
#pragma once
#include <bson/bson.h>
#include <jansson.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "crypto.h"

namespace mailapi::records {

constexpr char MESSAGES[] = "messages";
constexpr char HINTS[] = "hints";

namespace field {
constexpr char ID[] = "_id";
constexpr char M[] = "m";
constexpr char TENANT[] = "tenant";
constexpr char RK[] = "rk";
constexpr char CREATED_AT[] = "created_at";
constexpr char SEND_AT[] = "send_at";
constexpr char ENVELOPE[] = "envelope";
constexpr char SUMMARY[] = "summary";
constexpr char EVENTS[] = "events";
constexpr char EID[] = "eid";
constexpr char TYPE[] = "type";
constexpr char AT[] = "at";
constexpr char PROVIDER[] = "provider";
constexpr char CODE[] = "code";
constexpr char REASON[] = "reason";
constexpr char H[] = "h";  // hints: the parent bucket
constexpr char DEAD[] = "dead";  // a terminal event: the message went to the dead letters
constexpr char RCPT[] = "rcpt";  // a recipient event: which recipient (index into message_envelope_recipients)
constexpr char BOUNCE[] = "bounce";  // a provider's bounced event: "hard" or "soft"
constexpr char RESPONSE[] = "response";  // a responded event: the label the recipient chose
constexpr char EXPIRES_AT[] = "expires_at";  // retention: when the sweeper deletes the message's documents
constexpr char X[] = "x";  // an expiry document: contract::expiry_day of expires_at, decimal (the sweeper's lookup)
}  // namespace field

struct Event {
    std::string id;        // contract::event_id_*
    std::string type;      // contract::event::*
    int64_t at_ms = 0;
    std::string provider;  // may be empty
    int code = 0;          // SMTP reply or HTTP status, 0 = none
    std::string reason;    // short, never personal data
    bool dead = false;     // given up into the dead letters (failed, and replayable)
    int rcpt = -1;         // a recipient event's recipient
    std::string bounce{};  // bounced: hard or soft
    std::string response{};  // responded: the label
};

// What a writer knows of a message.
struct Message {
    std::string id, tenant;
    int64_t created_ms = 0;
    int64_t send_at = 0;          // unix seconds, 0 = none
    std::string envelope;         // sealed bytes
    std::string summary;          // sealed summary (summary_seal)
    std::vector<std::string> rk;  // contract::bucket_keys of every recipient
    int64_t expires_ms = 0;       // retention: contract::expiry_ms, 0 = kept for ever
};

void append_message(bson_t *doc, const Message &m, const std::vector<Event> &events);
// The body document of a message whose envelope is not inline (else false).
bool append_body(bson_t *doc, const Message &m);
void append_event(bson_t *doc, const Message &m, const Event &e);
std::string event_document_id(const std::string &message_id, const std::string &event_id);
std::string body_document_id(const std::string &message_id);  // "<id>.body"
// The expiry document of a message with a retention (else false); written
// before the message's other documents, so none is ever without it.
bool append_expiry(bson_t *doc, const Message &m);
std::string expiry_document_id(const std::string &message_id);  // "<id>.x"

// What a reader assembles from the documents of one or more messages.
struct Stored {
    std::string id;
    std::string tenant;          // from the message document
    std::vector<std::string> rk; // likewise: what an event of it carries, to be found with it
    int64_t created_ms = 0;
    int64_t send_at = 0;        // unix seconds
    int64_t expires_ms = 0;     // retention (from the message document), 0 = none
    std::string envelope;       // from the message or its body document (not read by lists)
    std::string summary;
    bool has_message = false;   // the message document was among them
    std::vector<Event> events;  // unique by id, in time order once finished
};

// Adds one document (a message or an event) to `out`, keyed by message id;
// false when it is neither.
bool read_document(const bson_t *doc, std::map<std::string, Stored> &out);
// Sorts each message's events by time and drops repeats of an event id (the
// message document's own copy wins: it was written first).
void finish(Stored &s);
// The envelope of a message or body document (read with envelopes).
bool read_envelope(const bson_t *doc, std::string &out);

// The status events give: the newest generation's terminal event if any,
// else scheduled (a future send_at, nothing tried yet) or queued.
std::string status_of(const Stored &s, int64_t now_ms);
// True when a terminal event of generation `gen` or later exists.
bool finished(const Stored &s, int gen);
// The terminal event of the newest generation, `gen` or later; NULL if none.
const Event *terminal(const Stored &s, int gen);
// Time of the newest event (created_at when none).
int64_t updated_ms(const Stored &s);

// One recipient's state: sent, failed, deferred, or the message's own
// status while nothing happened to it yet; `event` says why (may be NULL).
struct RecipientState {
    std::string status;
    const Event *event = nullptr;
    bool own = false;  // decided by an event of its own (recipient_sent, recipient_failed)
};
// The states of a message's `count` recipients (finished events first): our
// own outcome, then (once a provider took it) what the provider's events say:
// delivered, bounced, complained, each only ever moving forward.
std::vector<RecipientState> recipient_states(const Stored &s, size_t count, int64_t now_ms);
// The message's status shown with its `count` recipients: status_of, and
// once it is sent, as far as all its recipients got (delivered, bounced,
// complained).
std::string message_status(const Stored &s, size_t count, int64_t now_ms);

// The sealed summary of a message: what lists show, without text, html and
// attachment contents. `message_json` is the message as the API shows it.
bool summary_seal(const Keyring &ring, std::string_view tenant, std::string_view id, json_t *message_json,
                  std::string &out);
// The summary as a JSON object (caller owns it), or NULL.
json_t *summary_open(const Keyring &ring, std::string_view tenant, std::string_view id, std::string_view sealed);
// A message's envelope recipients from its to, cc and bcc as the API shows
// them (a summary, or the whole message): what recipient events name by index.
std::vector<std::string> shown_recipients(json_t *message);

}  // namespace mailapi::records

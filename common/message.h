// The message model of the public API: parsing and validation of a send
// request, and the canonical JSON that is encrypted into the envelope.
#pragma once
#include <cstdint>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct json_t;  // jansson

namespace mailapi {

struct Address {
    std::string email;
    std::string name;  // display name, may be empty
};

struct Attachment {
    std::string filename;
    std::string content_type;
    std::string content_base64;
    size_t size = 0;             // decoded bytes
    bool content_omitted = false;  // parsed without contents (stored_summary)
};

struct Message {
    Address from;
    std::vector<Address> to, cc, bcc;
    bool has_reply_to = false;
    Address reply_to;
    std::string subject, text, html;
    std::vector<std::pair<std::string, std::string>> headers;
    std::vector<Attachment> attachments;
    std::vector<std::string> tags;
    std::vector<std::pair<std::string, std::string>> metadata;
    int64_t send_at = 0;  // unix seconds, 0 = now
    // Links for each recipient (links.h): a one-click unsubscribe, and
    // response links. `link_base` (the module's public URL) and
    // `link_expires` (unix s) are stamped by the module, never the caller's.
    bool unsubscribe = false;
    std::vector<std::string> responses;
    std::string link_base;
    int64_t link_expires = 0;
};

struct MessageLimits {
    size_t max_recipients = 50;          // to + cc + bcc
    size_t max_subject_bytes = 998;
    size_t max_body_bytes = 1 << 20;     // text and html each
    size_t max_headers = 50;
    size_t max_attachments = 10;
    size_t max_attachment_bytes = 5 << 20;   // decoded, each
    size_t max_attachments_total = 10 << 20; // decoded, all together
    size_t max_tags = 10;
    size_t max_metadata = 20;
    int64_t max_send_at_horizon = 72 * 3600;
    size_t max_placeholders = 20;        // link placeholders in text and html each (links::PLACEHOLDERS_MAX)
    bool attachment_contents = true;  // false: sizes only, the contents are not copied
    bool stamped_fields = false;      // what the module stamps (`links`) is read too


    // For envelopes that were validated when accepted, under whatever limits
    // the edge had then: read them back whatever the limits are now.
    static MessageLimits stored() {
        MessageLimits l;
        l.max_recipients = l.max_headers = l.max_attachments = l.max_tags = l.max_metadata = SIZE_MAX;
        l.max_subject_bytes = l.max_body_bytes = l.max_attachment_bytes = l.max_attachments_total = SIZE_MAX;
        l.max_placeholders = SIZE_MAX;
        l.stamped_fields = true;
        return l;
    }
    // The same for a reader that shows attachments by name, type and size.
    static MessageLimits stored_summary() {
        MessageLimits l = stored();
        l.attachment_contents = false;
        return l;
    }
};

struct FieldError {
    int status = 0;        // 400 or 422
    std::string code;      // snake_case
    std::string message;   // for a human, never echoes personal data
    std::string field;     // JSON path, e.g. "to[1]"
};

// `now` (unix seconds) bounds send_at; pass 0 for a stored envelope whose
// send_at was checked when it was accepted.
bool message_parse(std::string_view json, const MessageLimits &limits, int64_t now, Message &msg,
                   FieldError &err);
// The same, without copying `json` when it has room for the parser's padding
// (64 bytes of capacity after it: envelope_open leaves them).
bool message_parse(const std::string &json, const MessageLimits &limits, int64_t now, Message &msg,
                   FieldError &err);

std::string message_to_json(const Message &msg);
// The same canonical form as a jansson object (caller owns the reference);
// attachments parsed without contents, or all of them when
// `attachment_contents` is false, show their size instead.
// `stamped`: with what the module stamped (the envelope's form), else what
// the caller sent (what reads show).
json_t *message_json(const Message &msg, bool attachment_contents = true, bool stamped = false);

bool address_valid(std::string_view addr);
std::string address_normalise(std::string_view addr);  // lookup form: lowercase
// Normalised addresses of every recipient (to, cc, bcc), each once.
std::vector<std::string> message_recipients(const Message &msg);
// The same recipients as they were written (the first spelling of each):
// the SMTP envelope. A recipient's index in this list is how events and the
// queue name it (never its address, which stays sealed).
std::vector<std::string> message_envelope_recipients(const Message &msg);

bool rfc3339_parse(std::string_view s, int64_t &unix_seconds);
std::string rfc3339_format_ms(int64_t unix_ms);  // "2026-11-23T19:32:31.123Z"

}  // namespace mailapi

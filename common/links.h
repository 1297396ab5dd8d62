// Signed, expiring links in a message, one set per recipient: one-click
// unsubscribe (RFC 8058) and response links ("Approve / Reject").
//
// A link is <base>/u/<token> or <base>/r/<token>, where token is
//   base64url(payload) "." base64url(first 16 bytes of HMAC-SHA256(link key, payload))
//   payload = "1|<key id>|<kind>|<tenant>|<message id>|<recipient>|<response label>|<expires unix s>"
// and the link key is HMAC-SHA256(the keyring key <key id>, "mailapi-v1 links"):
// deliveryd signs with the active key, the module verifies with whichever
// key the link names, so links outlive a rotation while their key is kept.
// The recipient is its index among the message's envelope recipients (the
// address is never in the link).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "crypto.h"

namespace mailapi {

struct Message;

namespace links {

constexpr char UNSUBSCRIBE = 'u';
constexpr char RESPONSE = 'r';
constexpr size_t TOKEN_MAX = 400;        // a longer path is not one of ours
constexpr size_t RESPONSES_MAX = 5;      // per message
constexpr size_t RESPONSE_MAX_BYTES = 32;
constexpr int64_t TTL_MIN_S = 3600;
constexpr int64_t TTL_MAX_S = 400LL * 86400;
// Placeholders a part (text, html) may hold: each becomes a URL of ~150
// bytes in every recipient's copy, so a body of nothing but placeholders
// would make copies many times the size the API allows.
constexpr size_t PLACEHOLDERS_MAX = 20;
constexpr char UNSUBSCRIBE_PLACEHOLDER[] = "{{unsubscribe_url}}";
constexpr char RESPONSE_PLACEHOLDER[] = "{{response_url:";  // then the label, then "}}"

struct Link {
    char kind = 0;
    std::string key_id, tenant, message_id;
    int rcpt = -1;
    std::string response;  // the label (response_valid); empty for unsubscribe
    int64_t expires = 0;
};

std::string token_make(const Keyring &ring, const Link &l);

enum class Verdict { ok, malformed, bad_signature, unknown_key, expired };
Verdict token_verify(const Keyring &ring, std::string_view token, int64_t now_s, Link &out);

// Whether a response label is acceptable: 1-32 bytes of ASCII letters,
// digits, space and _ - . , ! ? ' (not starting or ending with a space).
bool response_valid(std::string_view r);

// The copy of `m` that recipient `rcpt` gets: its List-Unsubscribe headers
// (when the message asked for them) and its response links, put where the
// text and HTML name them ({{unsubscribe_url}}, {{response_url:<label>}}),
// (at most PLACEHOLDERS_MAX a part, the rest left as they are), or, for
// responses named nowhere, as a block of links at the end. The links live
// as long from `now_s` (when the copy goes out) as the module's stamp gave
// them from when it took the message.
Message personalize(const Keyring &ring, const Message &m, const std::string &tenant, const std::string &id,
                    int rcpt, int64_t now_s);

// Text for HTML (element content and quoted attributes): & < > " ' escaped.
// The copies' link labels and the module's pages both use it.
std::string html_escape(std::string_view s);

// How many placeholders (of any label) a part holds.
size_t placeholders(std::string_view part);
std::string response_placeholder(std::string_view label);

// Whether `m` needs a copy per recipient.
bool personal(const Message &m);

}  // namespace links
}  // namespace mailapi

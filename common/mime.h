// Outgoing mail as bytes: RFC 5322 header fields folded (at most 78
// characters a line where whitespace allows, never over 998), RFC 2047
// encoded words only where a word cannot travel as it is, RFC 2231
// parameters for file names, and RFC 2045 bodies with CRLF line breaks and a
// transfer encoding chosen per part, so that the result is 7-bit clean
// (a DKIM signature survives every relay) except for UTF-8 addresses in a
// message that travels with SMTPUTF8 (RFC 6531/6532).
#pragma once
#include <ctime>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "message.h"

namespace mailapi {

constexpr size_t MIME_LINE_SOFT = 78;   // RFC 5322 2.1.1: SHOULD
constexpr size_t MIME_LINE_HARD = 998;  // MUST (without the CRLF)

// ---------------------------------------------------------------- header fields

// "Name: value" + CRLF for an unstructured field (Subject, custom headers),
// folded; a word with a byte outside printable ASCII (or that could be read
// as an encoded word) goes as encoded words, and so does one too long for a
// line of 998 when `encode_long_words`.
std::string mime_field_unstructured(std::string_view name, std::string_view value, bool encode_long_words = true);
// "Name: a, b" + CRLF for an address list, folded between addresses and
// inside display names. Domains go as A-labels; a UTF-8 local part only when
// `utf8` (the message travels with SMTPUTF8, RFC 6532).
std::string mime_field_addresses(std::string_view name, const std::vector<Address> &list, bool utf8);

// The same value unfolded on one line, for APIs that take header values
// (the hosted providers): encoded words where needed.
std::string mime_header_text(std::string_view text);
// "Name" <a@b>, =?UTF-8?Q?...?= <a@b>, or <a@b> alone, unfolded; the domain
// as A-labels.
std::string mime_address(const Address &a);

// Whether the message needs SMTPUTF8: an address with a UTF-8 local part in
// from, to, cc, bcc or reply_to.
bool message_needs_smtputf8(const Message &m);

// ---------------------------------------------------------------- the message

struct ComposeOptions {
    std::string message_id;  // "<id@domain>"
    time_t date = 0;
    bool utf8 = false;       // SMTPUTF8: UTF-8 local parts in header fields as they are
    // Fields added after the caller's own headers (e.g. X-Mailapi-Id), as
    // name and unfolded value.
    std::vector<std::pair<std::string, std::string>> extra_headers;
    std::string boundary_seed;  // makes the MIME boundaries (the message id will do); never in a part's text
};

// The whole message (header and body, CRLF line breaks) as it goes after
// DATA, before dot-stuffing. Attachments are not decoded: their base64 is
// only laid out in lines of 76.
std::string mime_compose(const Message &m, const ComposeOptions &o);

// Text with any line break (CRLF, LF, CR) as CRLF.
std::string mime_crlf(std::string_view text);
// RFC 2045 quoted-printable of text whose line breaks are already CRLF:
// hard breaks kept, lines of at most 76, trailing whitespace and a leading
// "From " or "." encoded.
std::string mime_quoted_printable(std::string_view crlf_text);

// `t` in UTC through strftime's `format` (at most 63 characters out).
std::string utc_strftime(time_t t, const char *format);
// "Mon, 23 Nov 2026 19:32:31 +0000"
std::string rfc5322_date(time_t t);

}  // namespace mailapi

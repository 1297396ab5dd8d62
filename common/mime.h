// Header encoding for outgoing mail (RFC 5322, RFC 2047).
#pragma once
#include <ctime>
#include <string>
#include <string_view>

#include "message.h"

namespace mailapi {

// Printable ASCII is kept as is; anything else becomes UTF-8 "B" encoded
// words, folded so that no line grows past 76 characters.
std::string mime_header_text(std::string_view text);
// "Name" <a@b>, =?UTF-8?B?...?= <a@b>, or <a@b> alone.
std::string mime_address(const Address &a);
// `t` in UTC through strftime's `format` (at most 63 characters out).
std::string utc_strftime(time_t t, const char *format);
// "Mon, 23 Nov 2026 19:32:31 +0000"
std::string rfc5322_date(time_t t);

}  // namespace mailapi

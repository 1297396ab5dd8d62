// Texts from outside (a relay's reply, a provider's error, an event's
// diagnostic) made fit to keep: valid UTF-8, no control characters, no
// e-mail address, short.
#pragma once
#include <string>
#include <string_view>

namespace mailapi {

// A byte that does not begin a whole, valid UTF-8 character becomes '?', a
// control character a space.
std::string valid_utf8(std::string_view in);
// The reason text for a provider's error message: e-mail addresses become
// "<address>", control characters spaces, at most ~200 bytes (cut on a UTF-8
// boundary, "..." added), always valid UTF-8.
std::string safe_reason(std::string_view text);

}  // namespace mailapi

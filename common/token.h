// Time-limited API tokens: v1.<key_id>.<expires_unix>.<scopes>.<sig>, where sig
// is unpadded base64url of HMAC-SHA256(secret, "v1.<key_id>.<expires_unix>.<scopes>").
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace mailapi {

// webhooks: manage the tenant's outbound webhook endpoints (/v1/webhooks)
enum Scope : unsigned { SCOPE_SEND = 1, SCOPE_READ = 2, SCOPE_WEBHOOKS = 4, SCOPE_ERASE = 8 };
constexpr unsigned SCOPE_ALL = SCOPE_SEND | SCOPE_READ | SCOPE_WEBHOOKS | SCOPE_ERASE;

// Parses "+"-joined scopes ("send", "read+send", "send+read+webhooks"), each
// once, in any order; 0 when invalid.
unsigned scopes_parse(std::string_view s);
const char *scopes_name(unsigned scopes);  // canonical form

enum class TokenStatus {
    ok,
    malformed,          // not five dot-separated parts of the right shape
    bad_version,        // not "v1"
    unknown_key,        // no such key id (decided by the caller)
    bad_signature,
    expired,
    lifetime_exceeded,  // expires further in the future than the maximum lifetime
};

struct TokenParts {
    std::string_view key_id;
    int64_t expires = 0;
    unsigned scopes = 0;
    std::string_view signed_part;  // "v1.<key_id>.<expires>.<scopes>"
    std::string_view signature;    // base64url, 43 characters
};

constexpr size_t TOKEN_MAX_LEN = 512;
constexpr size_t KEY_ID_MAX_LEN = 64;

bool key_id_valid(std::string_view id);

// Shape only: no key, no clock.
TokenStatus token_parse(std::string_view token, TokenParts &parts);

// Constant-time signature check, then the clock. `skew` widens the window for
// clocks that disagree a little; `max_lifetime` bounds how far ahead a token
// may expire.
TokenStatus token_verify(const TokenParts &parts, std::string_view secret, int64_t now,
                         int64_t skew, int64_t max_lifetime);

std::string token_mint(std::string_view key_id, std::string_view secret, int64_t expires,
                       unsigned scopes);

}  // namespace mailapi

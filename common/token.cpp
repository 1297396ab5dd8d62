#include "token.h"

#include <openssl/crypto.h>

#include "base64.h"
#include "ossl.h"

namespace mailapi {

namespace {

const char *const SCOPE_NAMES[] = {"send", "read", "webhooks", "erase"};  // in the canonical order, bit by bit

}  // namespace

unsigned scopes_parse(std::string_view s) {
    unsigned out = 0;
    size_t start = 0;
    while (start <= s.size()) {
        size_t plus = s.find('+', start);
        std::string_view one = s.substr(start, plus == std::string_view::npos ? std::string_view::npos : plus - start);
        unsigned bit = 0;
        for (unsigned i = 0; i < 4; i++) {
            if (one == SCOPE_NAMES[i]) bit = 1u << i;
        }
        if (bit == 0 || (out & bit)) return 0;  // unknown, empty, or given twice
        out |= bit;
        if (plus == std::string_view::npos) break;
        start = plus + 1;
    }
    return out;
}

const char *scopes_name(unsigned scopes) {
    static const char *const names[16] = {"",
                                          "send",
                                          "read",
                                          "send+read",
                                          "webhooks",
                                          "send+webhooks",
                                          "read+webhooks",
                                          "send+read+webhooks",
                                          "erase",
                                          "send+erase",
                                          "read+erase",
                                          "send+read+erase",
                                          "webhooks+erase",
                                          "send+webhooks+erase",
                                          "read+webhooks+erase",
                                          "send+read+webhooks+erase"};
    return scopes < 16 ? names[scopes] : "";
}

bool key_id_valid(std::string_view id) {
    if (id.empty() || id.size() > KEY_ID_MAX_LEN) return false;
    for (char c : id) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-';
        if (!ok) return false;
    }
    return true;
}

static bool parse_unix(std::string_view s, int64_t &out) {
    if (s.empty() || s.size() > 12 || s[0] == '0') return false;
    int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        v = v * 10 + (c - '0');
    }
    out = v;
    return true;
}

TokenStatus token_parse(std::string_view token, TokenParts &p) {
    if (token.empty() || token.size() > TOKEN_MAX_LEN) return TokenStatus::malformed;
    std::string_view part[5];
    size_t start = 0;
    for (int i = 0; i < 5; i++) {
        size_t dot = (i == 4) ? std::string_view::npos : token.find('.', start);
        if (i < 4 && dot == std::string_view::npos) return TokenStatus::malformed;
        part[i] = token.substr(start, dot == std::string_view::npos ? std::string_view::npos
                                                                    : dot - start);
        start = dot + 1;
    }
    if (part[0] != "v1") {
        return part[0].size() == 2 && part[0][0] == 'v' ? TokenStatus::bad_version
                                                         : TokenStatus::malformed;
    }
    if (!key_id_valid(part[1]) || !parse_unix(part[2], p.expires)) return TokenStatus::malformed;
    p.scopes = scopes_parse(part[3]);
    if (p.scopes == 0) return TokenStatus::malformed;
    if (part[4].size() != 43) return TokenStatus::malformed;  // 32 bytes, unpadded
    p.key_id = part[1];
    p.signed_part = token.substr(0, token.size() - part[4].size() - 1);
    p.signature = part[4];
    return TokenStatus::ok;
}

static std::string signature(std::string_view key, std::string_view data) {
    unsigned char md[32];
    if (!hmac_sha256(key, data, md)) return "";
    return base64url_encode(std::string_view(reinterpret_cast<char *>(md), sizeof md));
}

TokenStatus token_verify(const TokenParts &p, std::string_view secret, int64_t now,
                         int64_t skew, int64_t max_lifetime) {
    std::string expected = signature(secret, p.signed_part);
    if (expected.size() != p.signature.size() ||
        CRYPTO_memcmp(expected.data(), p.signature.data(), expected.size()) != 0) {
        return TokenStatus::bad_signature;
    }
    if (p.expires + skew <= now) return TokenStatus::expired;
    if (p.expires - now > max_lifetime + skew) return TokenStatus::lifetime_exceeded;
    return TokenStatus::ok;
}

std::string token_mint(std::string_view key_id, std::string_view secret, int64_t expires,
                       unsigned scopes) {
    std::string signed_part = "v1.";
    signed_part.append(key_id);
    signed_part += "." + std::to_string(expires) + "." + scopes_name(scopes);
    return signed_part + "." + signature(secret, signed_part);
}

}  // namespace mailapi

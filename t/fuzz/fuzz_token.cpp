// Tokens and base64url: no input crashes the parser, and what parses behaves.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "base64.h"
#include "token.h"

using namespace mailapi;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string in(reinterpret_cast<const char *>(data), size);
    const std::string secret = "0123456789abcdef0123456789abcdef";

    TokenParts p;
    if (token_parse(in, p) == TokenStatus::ok) {
        if (p.key_id.empty() || p.signature.size() != 43 || (p.scopes & ~SCOPE_ALL) || !p.scopes) abort();
        if (scopes_parse(scopes_name(p.scopes)) != p.scopes) abort();  // one canonical name per set
        TokenStatus v = token_verify(p, secret, 1800000000, 30, 86400);
        // a token minted for these claims verifies, the fuzzed one only if it is that token
        std::string minted = token_mint(p.key_id, secret, p.expires, p.scopes);
        TokenParts q;
        if (token_parse(minted, q) != TokenStatus::ok) abort();
        if (v != TokenStatus::bad_signature && minted != in && std::string(p.signed_part) == std::string(q.signed_part)) {
            abort();  // a signature other than the real one was accepted
        }
    }
    std::string out;
    if (base64url_decode(in, out) && base64url_encode(out) != in) abort();  // one form per value
    if (base64_decode(in, out) && base64_encode(out) != in) abort();
    return 0;
}

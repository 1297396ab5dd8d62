// What the module reads from a request, as pure functions (no nginx types),
// so that the fuzzers (t/fuzz/fuzz_request.cpp) can reach them:
//   HTTP Basic credentials (POST /v1/tokens)        ngx_mail_api_auth.cpp
//   the search body and its cursor                  ngx_mail_api_recover.cpp
//   the Idempotency-Key header's value              ngx_mail_api_send.cpp
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace mailapi::request {

// A refusal, as the module answers it (ngx_mail_api_send_error).
struct RequestError {
    int status = 0;
    const char *code = "";
    std::string message;
    std::string field;
};

// An Authorization header's value of the form "Basic <base64 of key_id:secret>"
// ("Basic" in any case), the secret itself base64 as the keys file holds it.
// True with the key id and the secret's bytes; the caller cleanses `secret`.
bool basic_credentials(std::string_view authorization, std::string &key_id, std::string &secret,
                       bool base64_secret = true);

// POST /v1/messages/search: {"recipient": ..., "limit": ..., "cursor": ...}.
struct SearchQuery {
    std::string recipient;  // as sent (the caller normalises it)
    unsigned long limit = 20;
    std::string cursor;     // the message id it stands for, "" for the first page
};
// False with `e` set as the module answers it, in the order it checks.
bool search_query_parse(std::string_view body, unsigned long max_page_size, SearchQuery &q, RequestError &e);

// The cursor is the last message id a page showed, wrapped so that callers
// treat it as opaque.
bool cursor_decode(const std::string &cursor, std::string &id);

// An Idempotency-Key header's value: 1-255 visible ASCII characters.
constexpr size_t IDEMPOTENCY_KEY_MAX = 255;
bool idempotency_key_valid(std::string_view value);

}  // namespace mailapi::request

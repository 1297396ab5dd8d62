// What the module reads from a request (ngx_mail_api_parse.h): HTTP Basic
// credentials, the search body and its cursor, the Idempotency-Key; and the
// Bearer token and message id as the module takes them from the request
// (common/'s token_parse and message_id_valid). No input crashes them, a
// refusal says why as the module answers it, and what is accepted is
// well-formed and reads back the same.
#include <jansson.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "base64.h"
#include "crypto.h"
#include "message.h"
#include "ngx_mail_api_parse.h"
#include "token.h"

using namespace mailapi;
using namespace mailapi::request;

namespace {

constexpr unsigned long MAX_PAGE = 100;  // mail_api_max_page_size's default

bool nocase_prefix(const std::string &s, const char *p) {
    for (size_t i = 0; p[i]; i++) {
        if (i >= s.size() || std::tolower(static_cast<unsigned char>(s[i])) != p[i]) return false;
    }
    return true;
}

void basic(const std::string &in) {
    std::string id, secret;
    if (!basic_credentials(in, id, secret)) return;
    if (in.size() <= 6 || !nocase_prefix(in, "basic ") || id.find(':') != std::string::npos) abort();
    // the same credentials sent again read the same
    std::string again = "Basic " + base64_encode(id + ":" + base64_encode(secret)), id2, secret2;
    if (!basic_credentials(again, id2, secret2) || id2 != id || secret2 != secret) abort();
}

void search(const std::string &in) {
    SearchQuery q;
    RequestError e;
    if (!search_query_parse(in, MAX_PAGE, q, e)) {
        if (e.status != 400 && e.status != 422) abort();
        if (e.code == nullptr || *e.code == '\0' || e.message.empty()) abort();
        if ((e.status == 400) != (std::string(e.code) == "invalid_json")) abort();
        return;
    }
    if (!address_valid(q.recipient) || q.limit < 1 || q.limit > MAX_PAGE) abort();
    if (!q.cursor.empty() && !message_id_valid(q.cursor)) abort();
    // the query written out as a caller would reads back the same
    json_t *o = json_object();
    json_object_set_new(o, "recipient", json_stringn(q.recipient.data(), q.recipient.size()));
    json_object_set_new(o, "limit", json_integer(static_cast<json_int_t>(q.limit)));
    if (!q.cursor.empty()) json_object_set_new(o, "cursor", json_string(base64url_encode(q.cursor).c_str()));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s == nullptr) abort();
    std::string canon = s;
    free(s);
    SearchQuery q2;
    if (!search_query_parse(canon, MAX_PAGE, q2, e)) abort();
    if (q2.recipient != q.recipient || q2.limit != q.limit || q2.cursor != q.cursor) abort();
}

void cursor(const std::string &in) {
    std::string id;
    if (!cursor_decode(in, id)) return;
    if (!message_id_valid(id) || base64url_encode(id) != in) abort();  // one cursor per id
}

void idempotency(const std::string &in) {
    if (!idempotency_key_valid(in)) return;
    if (in.empty() || in.size() > IDEMPOTENCY_KEY_MAX) abort();
    for (unsigned char c : in) {
        if (c <= ' ' || c >= 0x7f) abort();
    }
}

void bearer(const std::string &in) {
    // as ngx_mail_api_auth.cpp takes the token from "Authorization: Bearer <token>"
    if (in.size() < 7 || !nocase_prefix(in, "bearer ")) return;
    TokenParts p;
    token_parse(std::string_view(in).substr(7), p);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    json_object_seed(1);  // jansson's hash seed, fixed so that runs repeat
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string in(reinterpret_cast<const char *>(data), size);
    basic(in);
    search(in);
    cursor(in);
    idempotency(in);
    bearer(in);
    message_id_valid(in);  // GET /v1/messages/{id}
    return 0;
}

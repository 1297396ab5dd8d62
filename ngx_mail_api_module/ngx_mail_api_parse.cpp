#include "ngx_mail_api_parse.h"

#include <jansson.h>
#include <openssl/crypto.h>

#include <cstring>
#include <memory>

#include "base64.h"
#include "crypto.h"
#include "json.h"
#include "message.h"

namespace mailapi::request {

namespace {

// ASCII only, as ngx_strncasecmp.
bool prefix_nocase(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); i++) {
        unsigned char a = static_cast<unsigned char>(s[i]), b = static_cast<unsigned char>(prefix[i]);
        if (a >= 'A' && a <= 'Z') a |= 0x20;
        if (b >= 'A' && b <= 'Z') b |= 0x20;
        if (a != b) return false;
    }
    return true;
}

bool fail(RequestError &e, int status, const char *code, std::string message, std::string field = "") {
    e.status = status;
    e.code = code;
    e.message = std::move(message);
    e.field = std::move(field);
    return false;
}

}  // namespace

bool basic_credentials(std::string_view authorization, std::string &key_id, std::string &secret, bool base64_secret) {
    std::string decoded;
    bool ok = false;
    if (authorization.size() > 6 && prefix_nocase(authorization, "Basic ") &&
        mailapi::base64_decode(authorization.substr(6), decoded)) {
        size_t colon = decoded.find(':');
        if (colon != std::string::npos) {
            ok = base64_secret ? mailapi::base64_decode(decoded.substr(colon + 1), secret)
                               : (secret.assign(decoded, colon + 1), true);
            if (ok) key_id = decoded.substr(0, colon);
        }
        OPENSSL_cleanse(decoded.data(), decoded.size());
    }
    return ok;
}

bool cursor_decode(const std::string &cursor, std::string &id) {
    return mailapi::base64url_decode(cursor, id) && mailapi::message_id_valid(id);
}

bool search_query_parse(std::string_view body, unsigned long max_page_size, SearchQuery &q, RequestError &e) {
    json_error_t jerr;
    // numbers as reals, so that a limit too large for an integer is a 422 on
    // limit, not malformed JSON
    mailapi::Json root(
        json_loadb(body.data(), body.size(), JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL, &jerr));
    if (!root) {
        bool dup = json_error_code(&jerr) == json_error_duplicate_key;
        return fail(e, 400, "invalid_json", dup ? "malformed JSON: a key appears twice" : "malformed JSON");
    }
    if (!json_is_object(root.get())) {
        return fail(e, 422, "invalid_type", "the request body must be a JSON object");
    }
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        if (strcmp(k, "recipient") != 0 && strcmp(k, "limit") != 0 && strcmp(k, "cursor") != 0) {
            return fail(e, 422, "unknown_field", "unknown field", k);
        }
    }
    json_t *rcpt = json_object_get(root.get(), "recipient");
    if (rcpt == nullptr) return fail(e, 422, "required", "recipient is required", "recipient");
    if (!json_is_string(rcpt) ||
        !mailapi::address_valid(std::string_view(json_string_value(rcpt), json_string_length(rcpt)))) {
        return fail(e, 422, "invalid_address", "recipient must be one e-mail address", "recipient");
    }
    double limit = 20;
    if (json_t *l = json_object_get(root.get(), "limit")) {
        if (!json_is_number(l)) {
            return fail(e, 422, "invalid_type", "limit is a whole number", "limit");
        }
        limit = json_number_value(l);
        // the range first: converting a double beyond long long's is undefined
        if (!(limit >= 1 && limit <= static_cast<double>(max_page_size)) ||
            limit != static_cast<double>(static_cast<long long>(limit))) {
            return fail(e, 422, "invalid_value", "limit must be 1.." + std::to_string(max_page_size), "limit");
        }
    }
    std::string cursor;
    if (json_t *c = json_object_get(root.get(), "cursor")) {
        if (!json_is_null(c) &&
            (!json_is_string(c) || !cursor_decode(std::string(json_string_value(c), json_string_length(c)), cursor))) {
            return fail(e, 422, "invalid_value", "cursor is not one this API returned", "cursor");
        }
    }
    q.recipient.assign(json_string_value(rcpt), json_string_length(rcpt));
    q.limit = static_cast<unsigned long>(limit);
    q.cursor = std::move(cursor);
    return true;
}

bool idempotency_key_valid(std::string_view value) {
    if (value.empty() || value.size() > IDEMPOTENCY_KEY_MAX) return false;
    for (char ch : value) {
        unsigned char c = static_cast<unsigned char>(ch);
        if (c < 0x21 || c > 0x7e) return false;
    }
    return true;
}

}  // namespace mailapi::request

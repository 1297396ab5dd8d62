// Bearer tokens on every endpoint but one, and POST /v1/tokens, which
// exchanges an API key (HTTP Basic) for a token.
#include "ngx_mail_api.h"

#include <jansson.h>
#include <openssl/crypto.h>

#include <memory>

#include "base64.h"
#include "ngx_mail_api_parse.h"
#include "token.h"

namespace {

using mailapi::TokenStatus;

// ---------------------------------------------------------------- auth


// True with `auth` set; otherwise the request was answered and `rc` is what
// answering returned (which may itself be NGX_OK).
ngx_int_t authenticate_or_answer(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need, ngx_mail_api_auth_t &auth) {
    ngx_table_elt_t *h = r->headers_in.authorization;
    if (h == nullptr || h->value.len < 7 || ngx_strncasecmp(h->value.data, (u_char *)"Bearer ", 7) != 0) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_missing",
                                       "send \"Authorization: Bearer <token>\"");
    }
    std::string_view token(reinterpret_cast<char *>(h->value.data) + 7, h->value.len - 7);
    mailapi::TokenParts parts;
    TokenStatus st = mailapi::token_parse(token, parts);
    const mailapi::ApiKey *key = nullptr;
    if (st == TokenStatus::ok) {
        key = mailapi::apikeys_find(*mcf->keys, parts.key_id);
        st = key ? mailapi::token_verify(parts, key->secret, ngx_time(), mcf->token_clock_skew,
                                         mcf->token_max_ttl)
                 : TokenStatus::unknown_key;
    }
    switch (st) {
    case TokenStatus::ok: break;
    case TokenStatus::malformed:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_malformed",
                                       "the token is not of the form v1.<key_id>.<expires>.<scopes>.<signature>");
    case TokenStatus::bad_version:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_version_unsupported",
                                       "only v1 tokens are accepted");
    case TokenStatus::unknown_key:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_unknown_key",
                                       "the token names an unknown key");
    case TokenStatus::bad_signature:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_signature_invalid",
                                       "the token's signature does not match");
    case TokenStatus::expired:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_expired",
                                       "the token has expired: mint a new one");
    case TokenStatus::lifetime_exceeded:
        return ngx_mail_api_send_error(r, NGX_HTTP_UNAUTHORIZED, "token_lifetime_exceeded",
                                       "the token expires further ahead than the maximum lifetime of " +
                                           std::to_string(mcf->token_max_ttl) + " seconds");
    }
    // A token never carries more than its key has now: scopes taken away from a
    // key stop working on reload.
    unsigned scopes = parts.scopes & key->scopes;
    if ((scopes & need) != need) {
        return ngx_mail_api_send_error(r, NGX_HTTP_FORBIDDEN, "insufficient_scope",
                                       std::string("this endpoint needs the \"") + mailapi::scopes_name(need) +
                                           "\" scope");
    }
    auth.key = key;
    auth.scopes = scopes;
    return NGX_OK;
}

}  // namespace

bool ngx_mail_api_authenticate(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, unsigned need, ngx_mail_api_auth_t &auth, ngx_int_t &rc) {
    rc = authenticate_or_answer(r, mcf, need, auth);
    return auth.key != nullptr;
}

namespace {

// ---------------------------------------------------------------- tokens

ngx_int_t handle_tokens_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                             const std::string &body) {
    json_error_t jerr;
    std::string_view json = body.empty() ? std::string_view("{}") : std::string_view(body);  // all defaults
    std::unique_ptr<json_t, void (*)(json_t *)> root(
        json_loadb(json.data(), json.size(), JSON_REJECT_DUPLICATES, &jerr), [](json_t *j) { json_decref(j); });
    if (!root) return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json", "malformed JSON");
    if (!json_is_object(root.get())) {
        return ngx_mail_api_send_error(r, 422, "invalid_type", "the request body must be a JSON object");
    }
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        if (ngx_strcmp(k, "ttl") != 0 && ngx_strcmp(k, "scopes") != 0) {
            return ngx_mail_api_send_error(r, 422, "unknown_field", "unknown field", k);
        }
    }
    json_int_t ttl = 3600;
    if (json_t *t = json_object_get(root.get(), "ttl")) {
        if (!json_is_integer(t)) return ngx_mail_api_send_error(r, 422, "invalid_type", "ttl is whole seconds", "ttl");
        ttl = json_integer_value(t);
        if (ttl < 1 || ttl > mcf->token_max_ttl) {
            return ngx_mail_api_send_error(r, 422, "invalid_value",
                                           "ttl must be 1.." + std::to_string(mcf->token_max_ttl), "ttl");
        }
    }
    unsigned scopes = key->scopes;
    if (json_t *s = json_object_get(root.get(), "scopes")) {
        if (!json_is_array(s) || json_array_size(s) == 0 || json_array_size(s) > 2) {
            return ngx_mail_api_send_error(r, 422, "invalid_type", "scopes is an array such as [\"send\"]",
                                           "scopes");
        }
        scopes = 0;
        size_t i;
        json_t *e;
        json_array_foreach(s, i, e) {
            unsigned one = json_is_string(e) ? mailapi::scopes_parse(json_string_value(e)) : 0;
            std::string field = "scopes[" + std::to_string(i) + "]";
            if (one != mailapi::SCOPE_SEND && one != mailapi::SCOPE_READ) {
                return ngx_mail_api_send_error(r, 422, "invalid_value", "a scope is \"send\" or \"read\"", field);
            }
            if ((one & key->scopes) != one) {
                return ngx_mail_api_send_error(r, NGX_HTTP_FORBIDDEN, "scope_not_allowed",
                                               "this key does not have that scope", field);
            }
            scopes |= one;
        }
    }
    int64_t expires = ngx_time() + ttl;
    std::string token = mailapi::token_mint(key->id, key->secret, expires, scopes);
    json_t *out = json_object();
    json_object_set_new(out, "token", json_string(token.c_str()));
    json_object_set_new(out, "expires_at", json_string(mailapi::rfc3339_format_ms(expires * 1000).c_str()));
    json_object_set_new(out, "scopes", json_string(mailapi::scopes_name(scopes)));
    char *s = json_dumps(out, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(out);
    std::string resp = s ? s : "";
    free(s);
    return ngx_mail_api_send_json(r, NGX_HTTP_CREATED, resp);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_tokens(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    // HTTP Basic: key_id as the user, the key's base64 secret as the password.
    ngx_table_elt_t *h = r->headers_in.authorization;
    const mailapi::ApiKey *key = nullptr;
    bool ok = false;
    std::string key_id, secret;
    if (h && mailapi::request::basic_credentials(
                 std::string_view(reinterpret_cast<char *>(h->value.data), h->value.len), key_id, secret)) {
        if ((key = mailapi::apikeys_find(*mcf->keys, key_id)) && secret.size() == key->secret.size()) {
            ok = CRYPTO_memcmp(secret.data(), key->secret.data(), secret.size()) == 0;
        }
    }
    OPENSSL_cleanse(secret.data(), secret.size());
    if (!ok) {
        ngx_mail_api_add_header(r, "WWW-Authenticate", "Basic realm=\"mail_api\"");
        return ngx_mail_api_send_json(
            r, NGX_HTTP_UNAUTHORIZED,
            ngx_mail_api_error_json("invalid_credentials", "send HTTP Basic with the key id and its secret", ""));
    }
    if (r->headers_in.content_length_n > 0 && !ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, key, 4096, handle_tokens_body);
}


// A tenant's suppression list (contract: suppression_key), the addresses
// deliveryd does not send to. Hard bounces, complaints and unsubscribes add
// to it on their own; through the API:
//   GET    /v1/suppressions?limit=&cursor=     newest first (scope read)
//   POST   /v1/suppressions {"emails": [...], "reason"?}   added (scope send)
//   DELETE /v1/suppressions {"emails": [...]}               removed (scope send)
// Addresses travel in bodies, never URLs (logs). Redis holds each address
// only as its recipient key and sealed (contract::suppression_aad).
#include "ngx_mail_api.h"

#include <jansson.h>

#include <algorithm>

#include "base64.h"
#include "contract.h"
#include "json.h"
#include "token.h"

namespace contract = mailapi::contract;

namespace {

constexpr size_t EMAILS_MAX = 1000;  // a request's
constexpr size_t BODY_MAX = EMAILS_MAX * 330;
constexpr ngx_uint_t DEFAULT_LIMIT = 50;

std::string stream_of(ngx_mail_api_main_conf_t *mcf) {
    return std::string(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
}

std::string dump(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "{}";
    free(s);
    return out;
}

struct Call {
    const mailapi::ApiKey *key;
    ngx_mail_api_main_conf_t *mcf;
    ngx_uint_t limit;
};

Call *new_call(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key) {
    Call *c = ngx_mail_api_pool_new<Call>(r->pool);
    if (c) *c = {key, mcf, 0};
    return c;
}

ngx_int_t unavailable(ngx_http_request_t *r) {
    return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                   "the queue is unavailable, retry later");
}

// ---------------------------------------------------------------- list

// "<at ms>:<recipient key>", base64url: where the next page starts.
std::string cursor_make(const std::string &at, const std::string &rkey) {
    return mailapi::base64url_encode(at + ":" + rkey);
}

bool cursor_parse(std::string_view c, std::string &at, std::string &rkey) {
    std::string text;
    if (c.size() > 80 || !mailapi::base64url_decode(c, text)) return false;
    size_t colon = text.find(':');
    if (colon == std::string::npos || colon == 0 || colon > 15 || text.size() - colon - 1 != 22) return false;
    at = text.substr(0, colon);
    rkey = text.substr(colon + 1);
    return at.find_first_not_of("0123456789") == std::string::npos &&
           rkey.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
               std::string::npos;
}

// One entry as the list shows it; its address opened (or null once erased).
json_t *entry_json(ngx_mail_api_main_conf_t *mcf, const std::string &tenant, const std::string &rkey,
                   const std::string &value, std::string &at) {
    size_t a = value.find(' '), b = a == std::string::npos ? a : value.find(' ', a + 1);
    at = value.substr(0, a);
    std::string reason = a == std::string::npos ? "" : value.substr(a + 1, b == std::string::npos ? b : b - a - 1);
    std::string sealed, email;
    bool opened = b != std::string::npos && mailapi::base64_decode(value.substr(b + 1), sealed) &&
                  mailapi::envelope_open(*mcf->keyring, contract::suppression_aad(tenant, rkey), sealed, email);
    json_t *o = json_object();
    json_object_set_new(o, "email", opened ? json_stringn(email.data(), email.size()) : json_null());
    json_object_set_new(o, "reason", json_string(reason.c_str()));
    json_object_set_new(o, "created_at",
                        json_string(mailapi::rfc3339_format_ms(std::atoll(at.c_str())).c_str()));
    return o;
}

ngx_int_t listed(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *c = static_cast<Call *>(data);
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY) return unavailable(r);
    mailapi::Json out(json_object());
    json_t *items = json_array();
    json_object_set_new(out.get(), "suppressions", items);
    std::string at, last;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        if (reply->element[i]->type != REDIS_REPLY_STRING || reply->element[i + 1]->type != REDIS_REPLY_STRING) continue;
        std::string rkey(reply->element[i]->str, reply->element[i]->len);
        json_array_append_new(items, entry_json(c->mcf, c->key->tenant, rkey,
                                                std::string(reply->element[i + 1]->str, reply->element[i + 1]->len),
                                                at));
        last = rkey;
    }
    bool more = json_array_size(items) == c->limit && !last.empty();
    json_object_set_new(out.get(), "next_cursor", more ? json_string(cursor_make(at, last).c_str()) : json_null());
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, dump(out.get()));
}

ngx_int_t list(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key) {
    ngx_str_t v;
    ngx_uint_t limit = DEFAULT_LIMIT;
    if (ngx_http_arg(r, (u_char *)"limit", 5, &v) == NGX_OK) {
        ngx_int_t n = ngx_atoi(v.data, v.len);
        if (n < 1 || static_cast<ngx_uint_t>(n) > mcf->max_page_size) {
            return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_value",
                                           "limit must be 1.." + std::to_string(mcf->max_page_size), "limit");
        }
        limit = static_cast<ngx_uint_t>(n);
    }
    std::string at = "+inf", rkey;
    if (ngx_http_arg(r, (u_char *)"cursor", 6, &v) == NGX_OK &&
        !cursor_parse(std::string_view(reinterpret_cast<char *>(v.data), v.len), at, rkey)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_value", "not a cursor of this list",
                                       "cursor");
    }
    Call *c = new_call(r, mcf, key);
    if (c == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    c->limit = limit;
    std::string stream = stream_of(mcf);
    ngx_int_t rc = ngx_mail_api_redis_request(
        r, mcf,
        {"EVAL", contract::SUPP_LIST_LUA, "2", contract::suppression_key(stream, key->tenant),
         contract::suppression_time_key(stream, key->tenant), at, rkey, std::to_string(limit)},
        listed, c);
    if (rc == NGX_DONE) r->main->count++;  // the reply's answer gives it back
    return rc;
}

// ---------------------------------------------------------------- add, remove

// {"emails": [...]} (or {"email": "..."}), each a valid address, at most
// EMAILS_MAX; their normalised forms, each once.
bool emails_of(json_t *root, std::vector<std::string> &out, mailapi::FieldError &err) {
    json_t *one = json_object_get(root, "email"), *many = json_object_get(root, "emails");
    if ((one == nullptr) == (many == nullptr)) {
        err = {400, "required", "give \"emails\": [...] (or one \"email\")", "emails"};
        return false;
    }
    if (many && (!json_is_array(many) || json_array_size(many) == 0 || json_array_size(many) > EMAILS_MAX)) {
        err = {400, "invalid_value", "emails is an array of 1 to " + std::to_string(EMAILS_MAX) + " addresses", "emails"};
        return false;
    }
    size_t n = many ? json_array_size(many) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *e = many ? json_array_get(many, i) : one;
        std::string field = many ? "emails[" + std::to_string(i) + "]" : "email";
        if (!json_is_string(e) || !mailapi::address_valid(json_string_value(e))) {
            err = {422, "invalid_address", "not a valid e-mail address", field};
            return false;
        }
        std::string a = mailapi::address_normalise(json_string_value(e));
        if (std::find(out.begin(), out.end(), a) == out.end()) out.push_back(a);
    }
    return true;
}

ngx_int_t added(ngx_http_request_t *r, redisReply *reply, void *) {
    if (reply == nullptr || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3) return unavailable(r);
    long long add = reply->element[0]->integer, kept = reply->element[1]->integer, full = reply->element[2]->integer;
    if (full > 0) {
        return ngx_mail_api_send_error(r, NGX_HTTP_CONFLICT, "too_many",
                                       "the suppression list holds at most " +
                                           std::to_string(contract::SUPPRESSIONS_MAX) + " addresses; " +
                                           std::to_string(add) + " added, " + std::to_string(full) + " not");
    }
    return ngx_mail_api_send_json(r, NGX_HTTP_OK,
                                  "{\"added\":" + std::to_string(add) + ",\"existing\":" + std::to_string(kept) + "}");
}

ngx_int_t removed(ngx_http_request_t *r, redisReply *reply, void *) {
    if (reply == nullptr || reply->type != REDIS_REPLY_INTEGER) return unavailable(r);
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, "{\"removed\":" + std::to_string(reply->integer) + "}");
}

ngx_int_t changed(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                  const std::string &body) {
    json_error_t jerr;
    mailapi::Json root(json_loadb(body.data(), body.size(), JSON_REJECT_DUPLICATES, &jerr));
    if (!root || !json_is_object(root.get())) {
        return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json", "the body must be a JSON object");
    }
    bool add = r->method == NGX_HTTP_POST;
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        std::string_view name(k);
        if (name != "emails" && name != "email" && !(add && name == "reason")) {
            return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "unknown_field", "unknown field", k);
        }
    }
    std::vector<std::string> emails;
    mailapi::FieldError err;
    if (!emails_of(root.get(), emails, err)) {
        return ngx_mail_api_send_error(r, static_cast<ngx_uint_t>(err.status), err.code.c_str(), err.message,
                                       err.field);
    }
    const char *reason = contract::reason::MANUAL;
    json_t *why = json_object_get(root.get(), "reason");
    if (why) {
        const char *w = json_string_value(why);
        if (!w || !contract::suppression_reason_valid(w) || std::string_view(w) == contract::reason::ERASED) {
            return ngx_mail_api_send_error(r, 422, "invalid_value",
                                           "reason is bounced, complained, unsubscribed or manual",
                                           "reason");
        }
        reason = w;
    }
    std::string stream = stream_of(mcf);
    const std::string &tenant = key->tenant;
    std::vector<std::string> args = {"EVAL", add ? contract::SUPP_ADD_LUA : contract::SUPP_DEL_LUA, "2",
                                     contract::suppression_key(stream, tenant),
                                     contract::suppression_time_key(stream, tenant)};
    if (add) {
        args.insert(args.end(), {std::to_string(ngx_mail_api_now_ms()), reason,
                                 std::to_string(contract::SUPPRESSIONS_MAX), "0"});
    }
    for (const std::string &a : emails) {
        std::string rkey = contract::recipient_key(*mcf->keyring, tenant, a);
        args.push_back(rkey);
        if (!add) continue;
        std::string sealed;
        if (!mailapi::envelope_seal(*mcf->keyring, contract::suppression_aad(tenant, rkey), a, sealed)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        args.push_back(mailapi::base64_encode(sealed));
    }
    return ngx_mail_api_redis_request(r, mcf, args, add ? added : removed, nullptr);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_suppressions(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf) {
    bool get = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    bool change = r->method == NGX_HTTP_POST || r->method == NGX_HTTP_DELETE;
    if (!get && !change) {
        ngx_mail_api_add_header(r, "Allow", "GET, POST, DELETE");
        return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed", "allowed: GET, POST, DELETE");
    }
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, get ? mailapi::SCOPE_READ : mailapi::SCOPE_SEND, auth, rc)) return rc;
    if (get) return list(r, mcf, auth.key);
    if (!ngx_mail_api_content_type_json(r)) {
        return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                       "send Content-Type: application/json");
    }
    return ngx_mail_api_read_body(r, auth.key, BODY_MAX, changed);
}

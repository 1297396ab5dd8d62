// A tenant's outbound webhook endpoints (scope "webhooks"), kept in Redis
// (contract: webhook_set_key, webhook_key) where deliveryd reads them:
//   POST   /v1/webhooks               {url, types?}  -> 201 with its secret
//   GET    /v1/webhooks               the tenant's endpoints
//   GET    /v1/webhooks/{id}          one, with its latest deliveries
//   DELETE /v1/webhooks/{id}
//   POST   /v1/webhooks/{id}/rotate   a new secret; the old one signs too for 24 h
//   POST   /v1/webhooks/{id}/enable   after deliveryd disabled it
// Secrets are sealed in Redis (contract::webhook_aad) and shown only when
// made.
#include "ngx_mail_api.h"

#include <jansson.h>

#include <cstring>
#include <sstream>

#include "contract.h"
#include "json.h"
#include "token.h"
#include "webhooks.h"

namespace contract = mailapi::contract;

namespace {

constexpr int64_t ROTATION_OVERLAP_MS = 86400000;  // the old secret signs this long after a rotation
constexpr size_t LOG_SHOWN = 50;

std::string stream_of(ngx_mail_api_main_conf_t *mcf) {
    return std::string(reinterpret_cast<char *>(mcf->redis_stream.data), mcf->redis_stream.len);
}

std::string dump(json_t *o) {
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "{}";
    free(s);
    return out;
}

std::string str(const redisReply *r) {
    return r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : std::string();
}

// "secret expires_ms" lines, sealed for the tenant and endpoint.
bool seal_secrets(ngx_mail_api_main_conf_t *mcf, const std::string &tenant, const std::string &id,
                  const std::vector<std::pair<std::string, int64_t>> &secrets, std::string &out) {
    std::string text;
    for (const auto &s : secrets) text += s.first + " " + std::to_string(s.second) + "\n";
    return mailapi::envelope_seal(*mcf->keyring, contract::webhook_aad(tenant, id), text, out);
}

std::vector<std::pair<std::string, int64_t>> open_secrets(ngx_mail_api_main_conf_t *mcf, const std::string &tenant,
                                                          const std::string &id, const std::string &sealed) {
    std::vector<std::pair<std::string, int64_t>> out;
    std::string text;
    if (!mailapi::envelope_open(*mcf->keyring, contract::webhook_aad(tenant, id), sealed, text)) return out;
    std::istringstream in(text);
    std::string secret;
    long long expires;
    while (in >> secret >> expires) out.emplace_back(secret, expires);
    return out;
}

json_t *types_json(const std::string &types) {
    json_t *arr = json_array();
    size_t start = 0;
    while (start <= types.size()) {
        size_t comma = types.find(',', start);
        json_array_append_new(arr, json_string(types.substr(start, comma == std::string::npos ? std::string::npos
                                                                                             : comma - start).c_str()));
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return arr;
}

json_t *endpoint_json(const std::string &id, const std::string &url, const std::string &types,
                      const std::string &created, const std::string &disabled, const std::string &failing) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id.c_str()));
    json_object_set_new(o, "url", json_string(url.c_str()));
    json_object_set_new(o, "types", types_json(types));
    json_object_set_new(o, "status", json_string(disabled.empty() ? "enabled" : "disabled"));
    if (!disabled.empty()) json_object_set_new(o, "disabled_reason", json_string(disabled.c_str()));
    if (!failing.empty()) {
        json_object_set_new(o, "failing_since",
                            json_string(mailapi::rfc3339_format_ms(std::atoll(failing.c_str())).c_str()));
    }
    json_object_set_new(o, "created_at", json_string(mailapi::rfc3339_format_ms(std::atoll(created.c_str())).c_str()));
    return o;
}

ngx_int_t unavailable(ngx_http_request_t *r) {
    return ngx_mail_api_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE, "queue_unavailable",
                                   "the queue is unavailable, retry later");
}

ngx_int_t not_found(ngx_http_request_t *r) {
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_FOUND, "not_found", "no such webhook endpoint");
}

bool array_reply(redisReply *reply) { return reply && reply->type == REDIS_REPLY_ARRAY; }

// The tenant of the request (set once authenticated), kept in the pool.
struct Call {
    std::string tenant, id;
    std::string secret;  // a new one, to show
    std::string url, types, created;
};

Call *new_call(ngx_http_request_t *r, const mailapi::ApiKey *key, std::string id = "") {
    Call *c = ngx_mail_api_pool_new<Call>(r->pool);
    if (c) {
        c->tenant = key->tenant;
        c->id = std::move(id);
    }
    return c;
}

// ---------------------------------------------------------------- create

ngx_int_t created(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *c = static_cast<Call *>(data);
    if (!array_reply(reply) || reply->elements != 1 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
        return unavailable(r);
    }
    if (reply->element[0]->integer == 0) {
        return ngx_mail_api_send_error(r, NGX_HTTP_CONFLICT, "too_many",
                                       "a tenant has at most " + std::to_string(mailapi::WEBHOOKS_PER_TENANT) +
                                           " webhook endpoints");
    }
    mailapi::Json o(endpoint_json(c->id, c->url, c->types, c->created, "", ""));
    json_object_set_new(o.get(), "secret", json_string(c->secret.c_str()));
    return ngx_mail_api_send_json(r, NGX_HTTP_CREATED, dump(o.get()));
}

ngx_int_t create_body(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, const mailapi::ApiKey *key,
                      const std::string &body) {
    json_error_t jerr;
    mailapi::Json root(json_loadb(body.data(), body.size(), JSON_REJECT_DUPLICATES, &jerr));
    if (!root) return ngx_mail_api_send_error(r, NGX_HTTP_BAD_REQUEST, "invalid_json", std::string("malformed JSON: ") + jerr.text);
    if (!json_is_object(root.get())) {
        return ngx_mail_api_send_error(r, 422, "invalid_type", "the body is an object {\"url\", \"types\"}");
    }
    const char *k;
    json_t *v;
    json_object_foreach(root.get(), k, v) {
        if (std::strcmp(k, "url") != 0 && std::strcmp(k, "types") != 0) {
            return ngx_mail_api_send_error(r, 422, "unknown_field", "unknown field", k);
        }
    }
    json_t *url = json_object_get(root.get(), "url");
    if (!json_is_string(url)) return ngx_mail_api_send_error(r, 422, "required", "url is required", "url");
    std::string error;
    if (!mailapi::webhook_url_valid(json_string_value(url), error)) {
        return ngx_mail_api_send_error(r, 422, "invalid_value", error, "url");
    }
    std::string types = "*";
    if (json_t *t = json_object_get(root.get(), "types")) {
        if (!json_is_array(t) || json_array_size(t) == 0 || json_array_size(t) > 32) {
            return ngx_mail_api_send_error(r, 422, "invalid_type", "types is an array of event types", "types");
        }
        types.clear();
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            if (!json_is_string(e)) return ngx_mail_api_send_error(r, 422, "invalid_type", "an event type is a string", "types");
            types += (types.empty() ? "" : ",") + std::string(json_string_value(e));
        }
        if (types.find('*') != std::string::npos) types = "*";
        if (!mailapi::webhook_types_valid(types, error)) return ngx_mail_api_send_error(r, 422, "invalid_value", error, "types");
    }
    Call *c = new_call(r, key);
    unsigned char raw[10];
    if (c == nullptr || !mailapi::random_bytes(raw, sizeof raw)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    static const char hex[] = "0123456789abcdef";
    c->id = "wh_";
    for (unsigned char b : raw) {
        c->id.push_back(hex[b >> 4]);
        c->id.push_back(hex[b & 15]);
    }
    c->secret = mailapi::webhook_secret_new();
    c->url = json_string_value(url);
    c->types = types;
    c->created = std::to_string(ngx_mail_api_now_ms());
    std::string sealed;
    if (c->secret.empty() || !seal_secrets(mcf, c->tenant, c->id, {{c->secret, 0}}, sealed)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    std::string stream = stream_of(mcf);
    return ngx_mail_api_redis_request(
        r, mcf,
        {"EVAL", contract::WH_CREATE_LUA, "2", contract::webhook_set_key(stream, c->tenant),
         contract::webhook_key(stream, c->id), c->tenant, c->id, c->url, c->types, sealed, c->created,
         std::to_string(mailapi::WEBHOOKS_PER_TENANT)},
        created, c);
}

// ---------------------------------------------------------------- list, get

ngx_int_t listed(ngx_http_request_t *r, redisReply *reply, void *) {
    if (!array_reply(reply)) return unavailable(r);
    mailapi::Json arr(json_array());
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 6) continue;
        json_array_append_new(arr.get(), endpoint_json(str(e->element[0]), str(e->element[1]), str(e->element[2]),
                                                       str(e->element[3]), str(e->element[4]), str(e->element[5])));
    }
    mailapi::Json o(json_object());
    json_object_set(o.get(), "webhooks", arr.get());
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, dump(o.get()));
}

ngx_int_t got(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *c = static_cast<Call *>(data);
    if (!array_reply(reply)) return unavailable(r);
    if (reply->elements != 7) return not_found(r);
    mailapi::Json o(endpoint_json(c->id, str(reply->element[0]), str(reply->element[1]), str(reply->element[2]),
                                  str(reply->element[3]), str(reply->element[4])));
    json_t *log = json_array();
    const redisReply *lines = reply->element[6];
    for (size_t i = 0; lines->type == REDIS_REPLY_ARRAY && i < lines->elements; i++) {
        json_t *line = json_loadb(lines->element[i]->str, lines->element[i]->len, 0, nullptr);
        if (line) json_array_append_new(log, line);
    }
    json_object_set_new(o.get(), "deliveries", log);
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, dump(o.get()));
}

// ---------------------------------------------------------------- rotate, enable, delete

ngx_int_t changed(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *c = static_cast<Call *>(data);
    if (!array_reply(reply) || reply->elements != 1 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
        return unavailable(r);
    }
    if (reply->element[0]->integer == 0) return not_found(r);
    if (reply->element[0]->integer == 2) {
        return ngx_mail_api_send_error(r, NGX_HTTP_CONFLICT, "conflict",
                                       "rotated by another request at the same time: rotate again");
    }
    std::string body = "{\"id\":\"" + c->id + "\"";
    if (!c->secret.empty()) body += ",\"secret\":\"" + c->secret + "\"";
    return ngx_mail_api_send_json(r, NGX_HTTP_OK, body + "}");
}

// Rotation: what Redis holds is read first, a new secret added in front, the
// old ones kept until a day from now.
ngx_int_t rotate_read(ngx_http_request_t *r, redisReply *reply, void *data) {
    auto *c = static_cast<Call *>(data);
    if (!array_reply(reply)) return unavailable(r);
    if (reply->elements != 7) return not_found(r);
    auto *mcf = static_cast<ngx_mail_api_main_conf_t *>(ngx_http_get_module_main_conf(r, ngx_mail_api_module));
    int64_t now = ngx_mail_api_now_ms();
    std::vector<std::pair<std::string, int64_t>> secrets;
    c->secret = mailapi::webhook_secret_new();
    secrets.emplace_back(c->secret, 0);
    for (auto &s : open_secrets(mcf, c->tenant, c->id, str(reply->element[5]))) {
        if (s.second == 0) s.second = now + ROTATION_OVERLAP_MS;
        if (s.second > now && secrets.size() < 3) secrets.push_back(s);
    }
    std::string sealed;
    if (!seal_secrets(mcf, c->tenant, c->id, secrets, sealed)) return NGX_HTTP_INTERNAL_SERVER_ERROR;
    return ngx_mail_api_redis_request(r, mcf,
                                      {"EVAL", contract::WH_ROTATE_LUA, "1", contract::webhook_key(stream_of(mcf), c->id),
                                       c->tenant, str(reply->element[5]), sealed},
                                      changed, c);
}

}  // namespace

ngx_int_t ngx_mail_api_handle_webhooks(ngx_http_request_t *r, ngx_mail_api_main_conf_t *mcf, std::string_view rest) {
    ngx_mail_api_auth_t auth;
    ngx_int_t rc;
    if (!ngx_mail_api_authenticate(r, mcf, mailapi::SCOPE_WEBHOOKS, auth, rc)) return rc;
    bool post = r->method == NGX_HTTP_POST, get = r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD);
    std::string stream = stream_of(mcf);
    auto request = [&](Call *c, std::vector<std::string> args, ngx_mail_api_reply_pt on_reply) -> ngx_int_t {
        if (c == nullptr) return NGX_HTTP_INTERNAL_SERVER_ERROR;
        ngx_int_t out = ngx_mail_api_redis_request(r, mcf, args, on_reply, c);
        if (out == NGX_DONE) r->main->count++;  // the reply's answer gives it back
        return out;
    };
    if (rest.empty()) {
        if (post) {
            if (!ngx_mail_api_content_type_json(r)) {
                return ngx_mail_api_send_error(r, NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                                               "send Content-Type: application/json");
            }
            return ngx_mail_api_read_body(r, auth.key, 4096, create_body);
        }
        if (get) {
            return request(new_call(r, auth.key),
                           {"EVAL", contract::WH_LIST_LUA, "1", contract::webhook_set_key(stream, auth.key->tenant),
                            stream + ":whe:"},
                           listed);
        }
        ngx_mail_api_add_header(r, "Allow", "GET, POST");
        return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed", "allowed: GET, POST");
    }
    std::string_view id = rest.substr(0, rest.find('/'));
    std::string_view action = id.size() < rest.size() ? rest.substr(id.size() + 1) : "";
    bool id_ok = id.size() == 23 && id.substr(0, 3) == "wh_" &&
                 id.substr(3).find_first_not_of("0123456789abcdef") == std::string_view::npos;
    if (!id_ok || (action != "" && action != "rotate" && action != "enable")) return not_found(r);
    Call *c = new_call(r, auth.key, std::string(id));
    std::string key = contract::webhook_key(stream, id);
    if (action.empty() && get) {
        return request(c, {"EVAL", contract::WH_GET_LUA, "2", key, contract::webhook_log_key(stream, id),
                           auth.key->tenant, std::to_string(LOG_SHOWN)},
                       got);
    }
    if (action.empty() && r->method == NGX_HTTP_DELETE) {
        return request(c, {"EVAL", contract::WH_DELETE_LUA, "3", contract::webhook_set_key(stream, auth.key->tenant),
                           key, contract::webhook_log_key(stream, id), auth.key->tenant, std::string(id)},
                       changed);
    }
    if (action == "enable" && post) {
        return request(c, {"EVAL", contract::WH_SET_LUA, "1", key, auth.key->tenant, contract::field::DISABLED, "",
                           contract::field::FAILING_SINCE, ""},
                       changed);
    }
    if (action == "rotate" && post) {
        return request(c, {"EVAL", contract::WH_GET_LUA, "2", key, contract::webhook_log_key(stream, id),
                           auth.key->tenant, "0"},
                       rotate_read);
    }
    const char *allow = action.empty() ? "GET, DELETE" : "POST";
    ngx_mail_api_add_header(r, "Allow", allow);
    return ngx_mail_api_send_error(r, NGX_HTTP_NOT_ALLOWED, "method_not_allowed", std::string("allowed: ") + allow);
}

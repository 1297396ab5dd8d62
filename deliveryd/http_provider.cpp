#include "http_provider.h"

#include <jansson.h>

#include <algorithm>
#include <memory>

namespace {

struct JsonFree {
    void operator()(json_t *j) const { json_decref(j); }
};

json_t *address(const mailapi::Address &a) {
    json_t *o = json_object();
    json_object_set_new(o, "email", json_string(a.email.c_str()));
    if (!a.name.empty()) json_object_set_new(o, "name", json_string(a.name.c_str()));
    return o;
}

json_t *addresses(const std::vector<mailapi::Address> &list) {
    json_t *arr = json_array();
    for (const auto &a : list) json_array_append_new(arr, address(a));
    return arr;
}

// SendGrid v3 /mail/send: one personalization with every recipient; our id in
// custom_args so its event webhooks can be matched.
json_t *sendgrid_body(const std::string &id, const mailapi::Message &m) {
    json_t *root = json_object();
    json_t *p = json_object();
    json_object_set_new(p, "to", addresses(m.to));
    if (!m.cc.empty()) json_object_set_new(p, "cc", addresses(m.cc));
    if (!m.bcc.empty()) json_object_set_new(p, "bcc", addresses(m.bcc));
    json_t *args = json_object();
    json_object_set_new(args, "mailapi_id", json_string(id.c_str()));
    for (const auto &kv : m.metadata) json_object_set_new(args, kv.first.c_str(), json_string(kv.second.c_str()));
    json_object_set_new(p, "custom_args", args);
    json_t *pers = json_array();
    json_array_append_new(pers, p);
    json_object_set_new(root, "personalizations", pers);
    json_object_set_new(root, "from", address(m.from));
    if (m.has_reply_to) json_object_set_new(root, "reply_to", address(m.reply_to));
    json_object_set_new(root, "subject", json_string(m.subject.c_str()));
    json_t *content = json_array();
    for (auto [type, value] : {std::pair{"text/plain", &m.text}, std::pair{"text/html", &m.html}}) {
        if (value->empty()) continue;
        json_t *c = json_object();
        json_object_set_new(c, "type", json_string(type));
        json_object_set_new(c, "value", json_stringn(value->data(), value->size()));
        json_array_append_new(content, c);
    }
    json_object_set_new(root, "content", content);
    if (!m.headers.empty()) {
        json_t *h = json_object();
        for (const auto &kv : m.headers) json_object_set_new(h, kv.first.c_str(), json_string(kv.second.c_str()));
        json_object_set_new(root, "headers", h);
    }
    if (!m.attachments.empty()) {
        json_t *arr = json_array();
        for (const auto &a : m.attachments) {
            json_t *o = json_object();
            json_object_set_new(o, "content", json_string(a.content_base64.c_str()));
            json_object_set_new(o, "filename", json_string(a.filename.c_str()));
            json_object_set_new(o, "type", json_string(a.content_type.c_str()));
            json_object_set_new(o, "disposition", json_string("attachment"));
            json_array_append_new(arr, o);
        }
        json_object_set_new(root, "attachments", arr);
    }
    if (!m.tags.empty()) {
        json_t *arr = json_array();
        for (const auto &t : m.tags) json_array_append_new(arr, json_string(t.c_str()));
        json_object_set_new(root, "categories", arr);
    }
    return root;
}

struct HttpSend {
    CURL *easy = curl_easy_init();
    curl_slist *headers = nullptr;
    std::string body, response;
    ~HttpSend() {
        curl_slist_free_all(headers);
        if (easy) curl_easy_cleanup(easy);
    }
};

size_t collect(char *data, size_t size, size_t n, void *userp) {
    auto *out = static_cast<std::string *>(userp);
    if (out->size() < 65536) out->append(data, size * n);  // enough to read an error
    return size * n;
}

}  // namespace

SendOutcome classify_http(int curl_code, long status) {
    if (curl_code != CURLE_OK) {
        return {SendResult::transient, 0, curl_easy_strerror(static_cast<CURLcode>(curl_code)), true};
    }
    int code = static_cast<int>(status);
    if (status >= 200 && status < 300) return {SendResult::sent, code, ""};
    std::string reason = "http " + std::to_string(status);
    if (status == 429 || status >= 500) return {SendResult::transient, code, reason, true};
    if (status == 401 || status == 403) {
        return {SendResult::transient, code, reason + ": our credentials were refused", true};
    }
    return {SendResult::permanent, code, reason};
}

HttpProvider::HttpProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : kind_(spec.type == "sendgrid" ? Kind::sendgrid : Kind::http), name_(spec.name), url_(spec.get("url")),
      secret_(spec.get(spec.type == "sendgrid" ? "api_key" : "token")), cfg_(cfg),
      multi_(multi) {
    if (kind_ == Kind::sendgrid) url_ += "/v3/mail/send";
}

std::string HttpProvider::body(const std::string &id, const std::string &tenant, const mailapi::Message &msg) const {
    std::unique_ptr<json_t, JsonFree> root;
    if (kind_ == Kind::sendgrid) {
        root.reset(sendgrid_body(id, msg));
    } else {
        root.reset(json_object());
        json_object_set_new(root.get(), "id", json_string(id.c_str()));
        json_object_set_new(root.get(), "tenant", json_string(tenant.c_str()));
        json_object_set_new(root.get(), "message", mailapi::message_json(msg));
    }
    char *s = json_dumps(root.get(), JSON_COMPACT);
    std::string out = s ? s : "";
    free(s);
    return out;
}

void HttpProvider::send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
                        std::function<void(SendOutcome)> done) {
    auto job = std::make_shared<HttpSend>();
    if (job->easy == nullptr) {
        done({SendResult::transient, 0, "no curl handle"});
        return;
    }
    job->body = body(message_id, tenant, msg);
    job->headers = curl_slist_append(job->headers, "Content-Type: application/json");
    if (!secret_.empty()) {
        job->headers = curl_slist_append(job->headers, ("Authorization: Bearer " + secret_).c_str());
    }
    job->headers = curl_slist_append(job->headers, ("X-Mailapi-Id: " + message_id).c_str());
    CURL *c = job->easy;
    curl_easy_setopt(c, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, job->body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(job->body.size()));
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, job->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &job->response);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(cfg_.send_timeout * 1000));
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    bool added = multi_.add(c, [job, done](CURLcode rc) {
        long status = 0;
        curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
        SendOutcome out = classify_http(rc, status);
        curl_off_t wait = 0;
        if (curl_easy_getinfo(job->easy, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0) {
            out.retry_after = static_cast<int>(std::min<curl_off_t>(wait, 86400));
        }
        done(out);
    });
    if (!added) done({SendResult::transient, 0, "cannot start transfer"});
}

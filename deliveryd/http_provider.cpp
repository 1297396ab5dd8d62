#include "http_provider.h"

#include <jansson.h>

#include <algorithm>
#include <memory>

namespace {

// One transfer: the easy handle and everything it points into.
struct HttpSend {
    CURL *easy = curl_easy_init();
    curl_slist *headers = nullptr;
    curl_mime *mime = nullptr;
    HttpRequest req;
    HttpAnswer answer;
    ~HttpSend() {
        if (easy) curl_easy_cleanup(easy);
        curl_mime_free(mime);
        curl_slist_free_all(headers);
    }
};

size_t collect(char *data, size_t size, size_t n, void *userp) noexcept {
    auto *out = static_cast<std::string *>(userp);
    if (out->size() < 65536) out->append(data, std::min<size_t>(size * n, 65536 - out->size()));
    return size * n;
}

}  // namespace

void HttpApi::perform(HttpRequest req, std::function<SendOutcome(const HttpAnswer &)> read,
                      std::function<void(SendOutcome)> done) {
    auto job = std::make_shared<HttpSend>();
    if (job->easy == nullptr) {
        done({SendResult::transient, 0, "no curl handle"});
        return;
    }
    job->req = std::move(req);
    CURL *c = job->easy;
    for (const std::string &h : job->req.headers) {
        curl_slist *l = curl_slist_append(job->headers, h.c_str());
        if (l == nullptr) {
            done({SendResult::transient, 0, "out of memory"});
            return;
        }
        job->headers = l;
    }
    if (!job->req.form.empty()) {
        job->mime = curl_mime_init(c);
        for (const FormField &f : job->req.form) {
            curl_mimepart *part = curl_mime_addpart(job->mime);
            curl_mime_name(part, f.name.c_str());
            curl_mime_data(part, f.value.data(), f.value.size());
            if (!f.filename.empty()) curl_mime_filename(part, f.filename.c_str());
            if (!f.content_type.empty()) curl_mime_type(part, f.content_type.c_str());
        }
        curl_easy_setopt(c, CURLOPT_MIMEPOST, job->mime);
    } else {
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, job->req.body.data());
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(job->req.body.size()));
    }
    if (!job->req.username.empty()) {
        curl_easy_setopt(c, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(c, CURLOPT_USERNAME, job->req.username.c_str());
        curl_easy_setopt(c, CURLOPT_PASSWORD, job->req.password.c_str());
    }
    curl_easy_setopt(c, CURLOPT_URL, job->req.url.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, job->headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &job->answer.body);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(cfg_.send_timeout) * 1000);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (!cacert_.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, cacert_.c_str());
    bool added = multi_.add(c, [job, read, done](CURLcode rc) {
        HttpAnswer &a = job->answer;
        a.curl_code = rc;
        curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &a.status);
        curl_header *h = nullptr;
        if (curl_easy_header(job->easy, "x-amzn-ErrorType", 0, CURLH_HEADER, -1, &h) == CURLHE_OK) {
            a.error_type = h->value;
        }
        curl_off_t wait = 0;
        if (curl_easy_getinfo(job->easy, CURLINFO_RETRY_AFTER, &wait) == CURLE_OK && wait > 0) {
            a.retry_after = static_cast<int>(std::min<curl_off_t>(wait, 86400));
        }
        SendOutcome out = read(a);
        out.retry_after = a.retry_after;
        done(out);
    });
    if (!added) done({SendResult::transient, 0, "cannot start transfer"});
}

SendgridProvider::SendgridProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), auth_("Authorization: Bearer " + spec.get("api_key")) {
    url_ += "/v3/mail/send";
}

void SendgridProvider::send(const std::string &id, const std::string &, const mailapi::Message &msg,
                            std::function<void(SendOutcome)> done) {
    HttpRequest req{url_, {"Content-Type: application/json", auth_}, sendgrid_body(id, msg), {}, "", ""};
    perform(std::move(req), [](const HttpAnswer &a) { return sendgrid_outcome(a.curl_code, a.status, a.body); },
            std::move(done));
}

MailgunProvider::MailgunProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), api_key_(spec.get("api_key")) {
    url_ += "/v3/" + spec.get("domain") + "/messages";
}

void MailgunProvider::send(const std::string &id, const std::string &, const mailapi::Message &msg,
                           std::function<void(SendOutcome)> done) {
    HttpRequest req{url_, {}, "", mailgun_form(id, msg), "api", api_key_};
    perform(std::move(req), [](const HttpAnswer &a) { return mailgun_outcome(a.curl_code, a.status, a.body); },
            std::move(done));
}

PostmarkProvider::PostmarkProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), token_header_("X-Postmark-Server-Token: " + spec.get("server_token")),
      message_stream_(spec.get("message_stream")) {
    url_ += "/email";
}

void PostmarkProvider::send(const std::string &id, const std::string &, const mailapi::Message &msg,
                            std::function<void(SendOutcome)> done) {
    HttpRequest req{url_,
                    {"Accept: application/json", "Content-Type: application/json", token_header_},
                    postmark_body(id, msg, message_stream_),
                    {},
                    "",
                    ""};
    perform(std::move(req), [](const HttpAnswer &a) { return postmark_outcome(a.curl_code, a.status, a.body); },
            std::move(done));
}

SesProvider::SesProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi),
      credentials_{spec.get("region"), "ses", spec.get("access_key_id"), spec.get("secret_access_key"),
                   spec.get("session_token")},
      configuration_set_(spec.get("configuration_set")) {}

void SesProvider::send(const std::string &id, const std::string &, const mailapi::Message &msg,
                       std::function<void(SendOutcome)> done) {
    HttpRequest req;
    std::string error;
    if (!ses_body(id, msg, configuration_set_, req.body, error)) {
        done({SendResult::transient, 0, error});  // SES cannot carry it; another provider may
        return;
    }
    SigV4Request signing;
    if (!ses_signing_request(url_, req.body, signing)) {
        done({SendResult::transient, 0, "ses: url does not parse", true});
        return;
    }
    req.url = url_ + "/v2/email/outbound-emails";
    req.headers = {"Content-Type: application/json"};
    for (std::string &h : sigv4_headers(signing, credentials_, std::time(nullptr))) req.headers.push_back(std::move(h));
    if (req.headers.size() == 1) {
        done({SendResult::transient, 0, "ses: signing failed", true});
        return;
    }
    perform(std::move(req),
            [](const HttpAnswer &a) { return ses_outcome(a.curl_code, a.status, a.error_type, a.body); },
            std::move(done));
}

HookProvider::HookProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), auth_(spec.get("token").empty() ? "" : "Authorization: Bearer " + spec.get("token")) {}

void HookProvider::send(const std::string &id, const std::string &tenant, const mailapi::Message &msg,
                        std::function<void(SendOutcome)> done) {
    json_t *root = json_object();
    json_object_set_new(root, "id", json_string(id.c_str()));
    json_object_set_new(root, "tenant", json_string(tenant.c_str()));
    json_object_set_new(root, "message", mailapi::message_json(msg));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    HttpRequest req{url_, {"Content-Type: application/json", "X-Mailapi-Id: " + id}, s ? s : "", {}, "", ""};
    free(s);
    if (!auth_.empty()) req.headers.push_back(auth_);
    perform(std::move(req), [](const HttpAnswer &a) { return http_outcome(a.curl_code, a.status); },
            std::move(done));
}

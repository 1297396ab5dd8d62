#include "http_provider.h"

#include <jansson.h>

#include <algorithm>
#include <memory>

#include "mime.h"

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

const mailapi::Message *HttpApi::message_for(const SendRequest &req, mailapi::Message &subset,
                                             std::function<void(SendOutcome)> &done) const {
    const mailapi::Message &m = *req.msg;
    if (!smtputf8_ && mailapi::message_needs_smtputf8(m)) {
        SendOutcome out;
        out.reason = name_ + " is not set to take addresses with UTF-8 local parts (smtputf8=yes), which this message has";
        out.unsupported = true;
        done(out);
        return nullptr;
    }
    if (req.all()) return &m;
    // A retry for some of the recipients: the API sends to whom its lists
    // name, so the lists hold only those (the SMTP path keeps the headers).
    std::vector<std::string> rcpts = mailapi::message_envelope_recipients(m);
    std::vector<std::string> keep;
    for (size_t i : req.rcpts) {
        if (i < rcpts.size()) keep.push_back(mailapi::address_normalise(rcpts[i]));
    }
    auto filter = [&keep](const std::vector<mailapi::Address> &in) {
        std::vector<mailapi::Address> out;
        for (const mailapi::Address &a : in) {
            std::string n = mailapi::address_normalise(a.email);
            auto it = std::find(keep.begin(), keep.end(), n);
            if (it == keep.end()) continue;
            keep.erase(it);  // once, as the envelope has it
            out.push_back(a);
        }
        return out;
    };
    subset = m;
    subset.to = filter(m.to);
    subset.cc = filter(m.cc);
    subset.bcc = filter(m.bcc);
    if (subset.to.empty() && !subset.cc.empty()) subset.to.swap(subset.cc);  // the APIs want someone in to
    if (subset.to.empty() && !subset.bcc.empty()) subset.to.swap(subset.bcc);
    return &subset;
}

SendgridProvider::SendgridProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), auth_("Authorization: Bearer " + spec.get("api_key")) {
    url_ += "/v3/mail/send";
}

void SendgridProvider::send(const SendRequest &r, std::function<void(SendOutcome)> done) {
    mailapi::Message subset;
    const mailapi::Message *msg = message_for(r, subset, done);
    if (!msg) return;
    HttpRequest req{url_, {"Content-Type: application/json", auth_}, sendgrid_body(r.id, *msg), {}, "", ""};
    perform(std::move(req), [](const HttpAnswer &a) { return sendgrid_outcome(a.curl_code, a.status, a.body); },
            std::move(done));
}

MailgunProvider::MailgunProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), api_key_(spec.get("api_key")) {
    url_ += "/v3/" + spec.get("domain") + "/messages";
}

void MailgunProvider::send(const SendRequest &r, std::function<void(SendOutcome)> done) {
    mailapi::Message subset;
    const mailapi::Message *msg = message_for(r, subset, done);
    if (!msg) return;
    HttpRequest req{url_, {}, "", mailgun_form(r.id, *msg), "api", api_key_};
    perform(std::move(req), [](const HttpAnswer &a) { return mailgun_outcome(a.curl_code, a.status, a.body); },
            std::move(done));
}

PostmarkProvider::PostmarkProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
    : HttpApi(spec, cfg, multi), token_header_("X-Postmark-Server-Token: " + spec.get("server_token")),
      message_stream_(spec.get("message_stream")) {
    url_ += "/email";
}

void PostmarkProvider::send(const SendRequest &r, std::function<void(SendOutcome)> done) {
    mailapi::Message subset;
    const mailapi::Message *msg = message_for(r, subset, done);
    if (!msg) return;
    HttpRequest req{url_,
                    {"Accept: application/json", "Content-Type: application/json", token_header_},
                    postmark_body(r.id, *msg, message_stream_),
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

void SesProvider::send(const SendRequest &r, std::function<void(SendOutcome)> done) {
    mailapi::Message subset;
    const mailapi::Message *msg = message_for(r, subset, done);
    if (!msg) return;
    HttpRequest req;
    std::string error;
    if (!ses_body(r.id, *msg, configuration_set_, req.body, error)) {
        // SES cannot carry it, now or later: another provider may, and
        // when none can the message waits in the dead letters (not retried
        // for max_attempts)
        SendOutcome out(SendResult::transient, 0, error);
        out.unsupported = true;
        done(out);
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

void HookProvider::send(const SendRequest &r, std::function<void(SendOutcome)> done) {
    mailapi::Message subset;
    const mailapi::Message *msg = message_for(r, subset, done);
    if (!msg) return;
    const std::string &id = r.id;
    json_t *root = json_object();
    json_object_set_new(root, "id", json_string(id.c_str()));
    json_object_set_new(root, "tenant", json_string(r.tenant.c_str()));
    json_object_set_new(root, "message", mailapi::message_json(*msg));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    HttpRequest req{url_, {"Content-Type: application/json", "X-Mailapi-Id: " + id}, s ? s : "", {}, "", ""};
    free(s);
    if (!auth_.empty()) req.headers.push_back(auth_);
    perform(std::move(req), [](const HttpAnswer &a) { return http_outcome(a.curl_code, a.status); },
            std::move(done));
}

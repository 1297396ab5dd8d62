#include "smtp.h"

#include <ctime>
#include <memory>
#include <new>

#include "base64.h"
#include "mime.h"

namespace {

struct SlistFree {
    void operator()(curl_slist *l) const { curl_slist_free_all(l); }
};
using Slist = std::unique_ptr<curl_slist, SlistFree>;

struct MimeFree {
    void operator()(curl_mime *m) const { curl_mime_free(m); }
};
using Mime = std::unique_ptr<curl_mime, MimeFree>;

void append(Slist &list, const std::string &line) {
    curl_slist *l = curl_slist_append(list.get(), line.c_str());
    if (l == nullptr) throw std::bad_alloc();
    list.release();
    list.reset(l);
}

std::string address_list(const std::vector<mailapi::Address> &list) {
    std::string out;
    for (const mailapi::Address &a : list) {
        if (!out.empty()) out += ",\r\n ";
        out += mailapi::mime_address(a);
    }
    return out;
}

void add_body_part(curl_mime *mime, const std::string &body, const char *type) {
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_data(part, body.data(), body.size());
    curl_mime_type(part, type);
    curl_mime_encoder(part, "quoted-printable");
}

// What one transfer points into, alive until it ends.
struct SmtpSend {
    Slist rcpt, headers, inline_disposition;
    Mime mime;
    std::string from;
};

int abort_when_stopping(void *stopping, curl_off_t, curl_off_t, curl_off_t, curl_off_t) noexcept {
    return static_cast<const std::atomic<bool> *>(stopping)->load() ? 1 : 0;
}

SendOutcome classify(CURLcode rc, CURL *easy) {
    SendOutcome out;
    long code = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
    out.code = static_cast<int>(code);
    // 530 (STARTTLS or AUTH required), 534, 535 (credentials), 538: the relay
    // refuses us, not the message
    bool refuses_us = code == 530 || code == 534 || code == 535 || code == 538 || rc == CURLE_LOGIN_DENIED ||
                      rc == CURLE_USE_SSL_FAILED;
    if (rc == CURLE_OK) {
        out.result = SendResult::sent;
    } else if (code >= 500 && code < 600 && !refuses_us) {
        out.result = SendResult::permanent;  // the server refused this message for good
        out.reason = curl_easy_strerror(rc);
    } else {
        out.result = SendResult::transient;  // 4xx, network, timeouts, our own credentials
        out.reason = curl_easy_strerror(rc);
        // no reply, 421 (service unavailable) or our login refused: the server's
        // trouble; other 4xx (greylisting, a full mailbox) are the recipient's
        out.provider_fault = code == 0 || code == 421 || refuses_us;
    }
    return out;
}

}  // namespace

SmtpProvider::SmtpProvider(const ProviderSpec &spec, const Config &cfg, struct ev_loop *loop, int threads)
    : name_(spec.name), url_(spec.get("url")), username_(spec.get("username")), password_(spec.get("password")),
      starttls_(spec.get("starttls") == "yes"), cacert_(spec.get("cacert")), cfg_(cfg), pool_(loop, threads) {}

void SmtpProvider::send(const std::string &message_id, const std::string &, const mailapi::Message &msg,
                        std::function<void(SendOutcome)> done) {
    // copied here: cfg_ may be replaced on the loop thread by a reload
    std::string message_id_header = "Message-ID: <" + message_id + "@" + cfg_.message_id_domain + ">";
    long timeout_ms = static_cast<long>(cfg_.send_timeout) * 1000;
    // msg lives in the delivery job until done runs, and nobody changes it
    pool_.run([this, message_id_header, timeout_ms, &msg](CURL *c, const std::atomic<bool> &stopping) {
        try {
            return perform(c, stopping, message_id_header, timeout_ms, msg);
        } catch (const std::exception &e) {  // e.g. bad_alloc: this message, later
            return SendOutcome{SendResult::transient, 0, e.what()};
        }
    }, std::move(done));
}

SendOutcome SmtpProvider::perform(CURL *c, const std::atomic<bool> &stopping, const std::string &message_id_header,
                                  long timeout_ms, const mailapi::Message &msg) const {
    SmtpSend job;
    for (const auto *list : {&msg.to, &msg.cc, &msg.bcc}) {
        for (const mailapi::Address &a : *list) append(job.rcpt, "<" + a.email + ">");
    }
    Slist &headers = job.headers;
    append(headers, "Date: " + mailapi::rfc5322_date(std::time(nullptr)));
    append(headers, message_id_header);
    append(headers, "From: " + mailapi::mime_address(msg.from));
    append(headers, "To: " + address_list(msg.to));
    if (!msg.cc.empty()) append(headers, "Cc: " + address_list(msg.cc));
    if (msg.has_reply_to) append(headers, "Reply-To: " + mailapi::mime_address(msg.reply_to));
    append(headers, "Subject: " + mailapi::mime_header_text(msg.subject));
    for (const auto &h : msg.headers) append(headers, h.first + ": " + mailapi::mime_header_text(h.second));

    job.mime.reset(curl_mime_init(c));
    curl_mime *mime = job.mime.get();
    if (!msg.text.empty() && !msg.html.empty()) {
        curl_mime *alt = curl_mime_init(c);
        add_body_part(alt, msg.text, "text/plain; charset=utf-8");
        add_body_part(alt, msg.html, "text/html; charset=utf-8");
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_subparts(part, alt);  // owned by part from here on
        curl_mime_type(part, "multipart/alternative");
        append(job.inline_disposition, "Content-Disposition: inline");
        curl_mime_headers(part, job.inline_disposition.release(), 1);
    } else if (!msg.text.empty()) {
        add_body_part(mime, msg.text, "text/plain; charset=utf-8");
    } else {
        add_body_part(mime, msg.html, "text/html; charset=utf-8");
    }
    for (const mailapi::Attachment &a : msg.attachments) {
        std::string data;
        mailapi::base64_decode(a.content_base64, data);  // validated on accept
        curl_mimepart *part = curl_mime_addpart(mime);
        curl_mime_data(part, data.data(), data.size());
        curl_mime_filename(part, a.filename.c_str());
        curl_mime_type(part, a.content_type.c_str());
        curl_mime_encoder(part, "base64");
    }

    job.from = "<" + msg.from.email + ">";
    curl_easy_setopt(c, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(c, CURLOPT_MAIL_FROM, job.from.c_str());
    curl_easy_setopt(c, CURLOPT_MAIL_RCPT, job.rcpt.get());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, job.headers.get());
    curl_easy_setopt(c, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, abort_when_stopping);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &stopping);
    if (!username_.empty()) {
        curl_easy_setopt(c, CURLOPT_USERNAME, username_.c_str());
        curl_easy_setopt(c, CURLOPT_PASSWORD, password_.c_str());
    }
    if (starttls_) curl_easy_setopt(c, CURLOPT_USE_SSL, static_cast<long>(CURLUSESSL_ALL));
    if (!cacert_.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, cacert_.c_str());
    CURLcode rc = curl_easy_perform(c);
    SendOutcome out = classify(rc, c);
    curl_easy_setopt(c, CURLOPT_MIMEPOST, nullptr);  // job.mime goes before the handle's next use
    return out;
}

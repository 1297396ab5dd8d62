#include "provider_formats.h"

#include <curl/curl.h>
#include <jansson.h>

#include <algorithm>
#include <cctype>
#include <memory>

#include "base64.h"
#include "idna.h"
#include "json.h"
#include "mime.h"

namespace {

using mailapi::Json;

std::string dump(json_t *root) {
    char *s = json_dumps(root, JSON_COMPACT);
    std::string out = s ? s : "";
    free(s);
    return out;
}

json_t *str(const std::string &s) { return json_stringn(s.data(), s.size()); }

// A top-level string field of a JSON object body, "" when the body is not
// JSON, not an object or has no such string.
std::string json_field(const std::string &body, const char *key) {
    Json root(json_loadb(body.data(), body.size(), 0, nullptr));
    const char *s = json_string_value(json_object_get(root.get(), key));
    return s ? s : "";
}

// The APIs take header values on one line, without folding.
std::string unfolded(std::string folded) {
    for (size_t pos; (pos = folded.find("\r\n")) != std::string::npos;) folded.erase(pos, 2);
    return folded;
}

// "Name" <a@b>, or =?UTF-8?B?...?= <a@b>
std::string rfc5322(const mailapi::Address &a) { return unfolded(mailapi::mime_address(a)); }

// Any header text as printable ASCII (RFC 2047 when needed).
std::string header_value(const std::string &v) { return unfolded(mailapi::mime_header_text(v)); }

std::string joined(const std::vector<mailapi::Address> &list) {
    std::string out;
    for (const auto &a : list) {
        if (!out.empty()) out += ", ";
        out += rfc5322(a);
    }
    return out;
}

bool iequal(const std::string &a, const std::string &b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](unsigned char x, unsigned char y) {
               return std::tolower(x) == std::tolower(y);
           });
}

// Metadata with our id first; a user key that repeats ours or an earlier one
// in another case is left out (Postmark refuses keys differing only in case).
std::vector<std::pair<std::string, std::string>> metadata_with_id(const std::string &id, const mailapi::Message &m) {
    std::vector<std::pair<std::string, std::string>> out{{"mailapi_id", id}};
    for (const auto &kv : m.metadata) {
        bool taken = std::any_of(out.begin(), out.end(), [&kv](const auto &o) { return iequal(o.first, kv.first); });
        if (!taken) out.push_back(kv);
    }
    return out;
}

// What SES allows in a message tag's name and value.
bool ses_tag_text(const std::string &s) {
    if (s.empty() || s.size() > 256) return false;
    return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isalnum(c) || c == '_' || c == '-'; });
}

SendOutcome transport_failure(int curl_code) {
    return {SendResult::transient, 0, curl_easy_strerror(static_cast<CURLcode>(curl_code)), true};
}

SendOutcome outcome(SendResult result, long status, const std::string &reason, bool provider_fault) {
    return {result, static_cast<int>(status), reason, provider_fault};
}

// "http 422", then ", <provider's error code>" and ": <provider's message>"
// when the answer had them.
std::string status_reason(long status, const std::string &code = "", const std::string &message = "") {
    std::string reason = "http " + std::to_string(status);
    if (!code.empty()) reason += ", " + safe_reason(code);
    if (!message.empty()) reason += ": " + safe_reason(message);
    return reason;
}

json_t *name_value(const std::string &name, const std::string &value) {
    return json_pack("{s:s%,s:s%}", "Name", name.data(), name.size(), "Value", value.data(), value.size());
}

}  // namespace

SendOutcome http_outcome(int curl_code, long status) {
    if (curl_code != CURLE_OK) return transport_failure(curl_code);
    if (status >= 200 && status < 300) return outcome(SendResult::sent, status, "", false);
    std::string reason = status_reason(status);
    if (status == 429 || status >= 500) return outcome(SendResult::transient, status, reason, true);
    if (status == 401 || status == 403) {
        return outcome(SendResult::transient, status, reason + ": our credentials were refused", true);
    }
    return outcome(SendResult::permanent, status, reason, false);
}

// --- SendGrid ------------------------------------------------------------

namespace {

json_t *sendgrid_address(const mailapi::Address &a) {
    json_t *o = json_object();
    std::string email;
    if (!mailapi::address_to_ascii_domain(a.email, email)) email = a.email;  // validated: does not happen
    json_object_set_new(o, "email", str(email));
    if (!a.name.empty()) json_object_set_new(o, "name", str(a.name));
    return o;
}

json_t *sendgrid_addresses(const std::vector<mailapi::Address> &list) {
    json_t *arr = json_array();
    for (const auto &a : list) json_array_append_new(arr, sendgrid_address(a));
    return arr;
}

}  // namespace

std::string sendgrid_body(const std::string &id, const mailapi::Message &m) {
    Json root(json_object());
    json_t *p = json_object();
    json_object_set_new(p, "to", sendgrid_addresses(m.to));
    if (!m.cc.empty()) json_object_set_new(p, "cc", sendgrid_addresses(m.cc));
    if (!m.bcc.empty()) json_object_set_new(p, "bcc", sendgrid_addresses(m.bcc));
    json_t *args = json_object();
    for (const auto &kv : metadata_with_id(id, m)) json_object_set_new(args, kv.first.c_str(), str(kv.second));
    json_object_set_new(p, "custom_args", args);
    json_t *pers = json_array();
    json_array_append_new(pers, p);
    json_object_set_new(root.get(), "personalizations", pers);
    json_object_set_new(root.get(), "from", sendgrid_address(m.from));
    if (m.has_reply_to) json_object_set_new(root.get(), "reply_to", sendgrid_address(m.reply_to));
    json_object_set_new(root.get(), "subject", str(m.subject));
    json_t *content = json_array();
    for (auto [type, value] : {std::pair{"text/plain", &m.text}, std::pair{"text/html", &m.html}}) {
        if (value->empty()) continue;
        json_t *c = json_object();
        json_object_set_new(c, "type", json_string(type));
        json_object_set_new(c, "value", str(*value));
        json_array_append_new(content, c);
    }
    json_object_set_new(root.get(), "content", content);
    if (!m.headers.empty()) {
        json_t *h = json_object();
        for (const auto &kv : m.headers) json_object_set_new(h, kv.first.c_str(), str(kv.second));
        json_object_set_new(root.get(), "headers", h);
    }
    if (!m.attachments.empty()) {
        json_t *arr = json_array();
        for (const auto &a : m.attachments) {
            json_t *o = json_object();
            json_object_set_new(o, "content", str(a.content_base64));
            json_object_set_new(o, "filename", str(a.filename));
            json_object_set_new(o, "type", str(a.content_type));
            json_object_set_new(o, "disposition", json_string("attachment"));
            json_array_append_new(arr, o);
        }
        json_object_set_new(root.get(), "attachments", arr);
    }
    if (!m.tags.empty()) {
        json_t *arr = json_array();
        for (const auto &t : m.tags) json_array_append_new(arr, str(t));
        json_object_set_new(root.get(), "categories", arr);
    }
    return dump(root.get());
}

SendOutcome sendgrid_outcome(int curl_code, long status, const std::string &body) {
    SendOutcome out = http_outcome(curl_code, status);
    if (out.result == SendResult::sent || curl_code != CURLE_OK) return out;
    Json root(json_loadb(body.data(), body.size(), 0, nullptr));
    const char *message = json_string_value(json_object_get(json_array_get(json_object_get(root.get(), "errors"), 0),
                                                            "message"));
    if (message) out.reason = status_reason(status, "", message);
    return out;
}

// --- Mailgun -------------------------------------------------------------

std::vector<FormField> mailgun_form(const std::string &id, const mailapi::Message &m) {
    std::vector<FormField> form;
    auto add = [&form](std::string name, std::string value) { form.push_back({std::move(name), std::move(value), "", ""}); };
    add("from", rfc5322(m.from));
    for (auto [field, list] : {std::pair{"to", &m.to}, std::pair{"cc", &m.cc}, std::pair{"bcc", &m.bcc}}) {
        for (const auto &a : *list) add(field, rfc5322(a));
    }
    add("subject", m.subject);
    if (!m.text.empty()) add("text", m.text);
    if (!m.html.empty()) add("html", m.html);
    if (m.has_reply_to) add("h:Reply-To", rfc5322(m.reply_to));
    for (const auto &h : m.headers) add("h:" + h.first, header_value(h.second));
    add("h:X-Mailapi-Id", id);
    // User variables come back in Mailgun's events and webhooks.
    for (const auto &kv : metadata_with_id(id, m)) add("v:" + kv.first, kv.second);
    // Mailgun takes up to 3 tags a message, ASCII, 128 characters each.
    size_t tags = 0;
    for (const auto &t : m.tags) {
        bool ascii = std::all_of(t.begin(), t.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; });
        if (tags < 3 && ascii && !t.empty() && t.size() <= 128) {
            add("o:tag", t);
            tags++;
        }
    }
    for (const auto &a : m.attachments) {
        std::string bytes;
        mailapi::base64_decode(a.content_base64, bytes);  // checked when the message was accepted
        form.push_back({"attachment", std::move(bytes), a.filename, a.content_type});
    }
    return form;
}

SendOutcome mailgun_outcome(int curl_code, long status, const std::string &body) {
    if (curl_code != CURLE_OK) return transport_failure(curl_code);
    if (status >= 200 && status < 300) return outcome(SendResult::sent, status, "", false);
    std::string reason = status_reason(status, "", json_field(body, "message"));
    switch (status) {
    case 400:  // {"message": "'to' parameter is not a valid address..."}: this message's fault
        return outcome(SendResult::permanent, status, reason, false);
    case 401:  // "Forbidden": our API key
    case 403:  // key without access to this domain
        return outcome(SendResult::transient, status, reason + ": our credentials were refused", true);
    case 402:  // request failed: the account's plan or payment
    case 404:  // the sending domain is not (or not yet) on the account
        return outcome(SendResult::transient, status, reason, true);
    case 413:  // over Mailgun's 25 MB: another provider may take it
        return outcome(SendResult::transient, status, reason, false);
    default:
        break;
    }
    SendOutcome out = http_outcome(curl_code, status);
    if (out.result != SendResult::sent) out.reason = reason;
    return out;
}

// --- Postmark ------------------------------------------------------------

std::string postmark_body(const std::string &id, const mailapi::Message &m, const std::string &message_stream) {
    Json root(json_object());
    json_t *o = root.get();
    json_object_set_new(o, "From", str(rfc5322(m.from)));
    json_object_set_new(o, "To", str(joined(m.to)));
    if (!m.cc.empty()) json_object_set_new(o, "Cc", str(joined(m.cc)));
    if (!m.bcc.empty()) json_object_set_new(o, "Bcc", str(joined(m.bcc)));
    json_object_set_new(o, "Subject", str(m.subject));
    if (!m.text.empty()) json_object_set_new(o, "TextBody", str(m.text));
    if (!m.html.empty()) json_object_set_new(o, "HtmlBody", str(m.html));
    if (m.has_reply_to) json_object_set_new(o, "ReplyTo", str(rfc5322(m.reply_to)));
    json_t *headers = json_array();
    for (const auto &h : m.headers) {
        json_array_append_new(headers, name_value(h.first, header_value(h.second)));
    }
    json_array_append_new(headers, name_value("X-Mailapi-Id", id));
    json_object_set_new(o, "Headers", headers);
    if (!m.attachments.empty()) {
        json_t *arr = json_array();
        for (const auto &a : m.attachments) {
            json_array_append_new(arr, json_pack("{s:s%,s:s%,s:s%}", "Name", a.filename.data(), a.filename.size(),
                                                 "Content", a.content_base64.data(), a.content_base64.size(),
                                                 "ContentType", a.content_type.data(), a.content_type.size()));
        }
        json_object_set_new(o, "Attachments", arr);
    }
    if (!m.tags.empty()) json_object_set_new(o, "Tag", str(m.tags.front()));  // Postmark takes one tag
    json_t *meta = json_object();
    for (const auto &kv : metadata_with_id(id, m)) json_object_set_new(meta, kv.first.c_str(), str(kv.second));
    json_object_set_new(o, "Metadata", meta);
    if (!message_stream.empty()) json_object_set_new(o, "MessageStream", str(message_stream));
    return dump(o);
}

SendOutcome postmark_outcome(int curl_code, long status, const std::string &body) {
    if (curl_code != CURLE_OK) return transport_failure(curl_code);
    Json root(json_loadb(body.data(), body.size(), 0, nullptr));
    json_t *code_json = json_object_get(root.get(), "ErrorCode");
    long long code = json_is_integer(code_json) ? json_integer_value(code_json) : -1;
    const char *message = json_string_value(json_object_get(root.get(), "Message"));
    if (status == 200 && code <= 0) return outcome(SendResult::sent, status, "", false);

    std::string reason = status_reason(status, code >= 0 ? "ErrorCode " + std::to_string(code) : "",
                                       message ? message : "");
    switch (code) {
    case 300:  // invalid email request: addresses, missing body, over 50 recipients
    case 406:  // inactive recipient: hard bounced or complained on Postmark before
    case 411:  // forbidden attachment type
        return outcome(SendResult::permanent, status, reason, false);
    case 10:   // bad or missing server token
    case 100:  // maintenance
    case 405:  // not allowed to send: out of credits
    case 412:  // account pending approval
    case 413:  // account may not send
    case 429:  // rate limit exceeded
        return outcome(SendResult::transient, status, reason, true);
    case 400:  // sender signature not found: that From is not set up on this account,
    case 401:  // sender signature not confirmed: another provider may take the sender;
               // not a fault of the account as a whole, so the breaker is left alone
    case 402:  // invalid JSON, incompatible JSON, JSON required: our request's form;
    case 403:  // another provider may take this message
    case 409:
        return outcome(SendResult::transient, status, reason, false);
    default:
        break;
    }
    // No known ErrorCode (404, 413 payload too large, 5xx, an HTML 403 from a
    // firewall in front of the API): by HTTP status.
    if (status == 413) return outcome(SendResult::transient, status, reason, false);  // over 10 MB: another may
    SendOutcome out = http_outcome(curl_code, status);
    if (status == 200) out = outcome(SendResult::permanent, status, reason, false);  // 200 with an error code
    out.reason = reason;
    return out;
}

// --- Amazon SES v2 ---------------------------------------------------------

namespace {

json_t *ses_content(const std::string &data) {
    return json_pack("{s:s%,s:s}", "Data", data.data(), data.size(), "Charset", "UTF-8");
}

json_t *ses_addresses(const std::vector<mailapi::Address> &list) {
    json_t *arr = json_array();
    for (const auto &a : list) json_array_append_new(arr, str(rfc5322(a)));
    return arr;
}

// "MessageRejected:http://internal.amazon.com/coral/..." or
// "com.amazon.coral.service#MessageRejected" -> "MessageRejected".
std::string ses_type_name(std::string type) {
    size_t colon = type.find(':');
    if (colon != std::string::npos) type.erase(colon);
    size_t hash = type.rfind('#');
    if (hash != std::string::npos) type.erase(0, hash + 1);
    return type;
}

}  // namespace

std::string ses_default_url(const std::string &region) { return "https://email." + region + ".amazonaws.com"; }

bool ses_signing_request(const std::string &url, const std::string &body, SigV4Request &req) {
    struct UrlFree {
        void operator()(CURLU *u) const { curl_url_cleanup(u); }
    };
    struct PartFree {
        void operator()(char *p) const { curl_free(p); }
    };
    std::unique_ptr<CURLU, UrlFree> u(curl_url());
    if (!u || curl_url_set(u.get(), CURLUPART_URL, url.c_str(), 0) != CURLUE_OK) return false;
    auto part = [&u](CURLUPart which) {
        char *p = nullptr;
        std::unique_ptr<char, PartFree> owned(curl_url_get(u.get(), which, &p, 0) == CURLUE_OK ? p : nullptr);
        return std::string(owned ? owned.get() : "");
    };
    std::string scheme = part(CURLUPART_SCHEME), host = part(CURLUPART_HOST), port = part(CURLUPART_PORT);
    std::string path = part(CURLUPART_PATH);
    if (host.empty()) return false;
    bool default_port = port.empty() || (scheme == "https" && port == "443") || (scheme == "http" && port == "80");
    while (!path.empty() && path.back() == '/') path.pop_back();
    req = SigV4Request();
    req.method = "POST";
    req.host = default_port ? host : host + ":" + port;
    req.path = path + "/v2/email/outbound-emails";
    req.headers = {{"Content-Type", "application/json"}};
    req.payload = body;
    return true;
}

bool ses_body(const std::string &id, const mailapi::Message &m, const std::string &configuration_set,
              std::string &body, std::string &error) {
    if (m.headers.size() > SES_MAX_CUSTOM_HEADERS) {
        error = "more headers than SES takes (" + std::to_string(SES_MAX_CUSTOM_HEADERS) + ")";
        return false;
    }
    json_t *headers = json_array();
    Json headers_owner(headers);
    for (const auto &h : m.headers) {
        std::string value = header_value(h.second);
        if (value.size() > 870) {  // SES's limit for a header value
            error = "a header value longer than SES takes (870)";
            return false;
        }
        json_array_append_new(headers, name_value(h.first, value));
    }
    json_array_append_new(headers, name_value("X-Mailapi-Id", id));

    Json root(json_object());
    json_t *o = root.get();
    json_object_set_new(o, "FromEmailAddress", str(rfc5322(m.from)));
    json_t *dest = json_object();
    json_object_set_new(dest, "ToAddresses", ses_addresses(m.to));
    if (!m.cc.empty()) json_object_set_new(dest, "CcAddresses", ses_addresses(m.cc));
    if (!m.bcc.empty()) json_object_set_new(dest, "BccAddresses", ses_addresses(m.bcc));
    json_object_set_new(o, "Destination", dest);
    if (m.has_reply_to) json_object_set_new(o, "ReplyToAddresses", ses_addresses({m.reply_to}));

    json_t *simple = json_object();
    json_object_set_new(simple, "Subject", ses_content(m.subject));
    json_t *b = json_object();
    if (!m.text.empty()) json_object_set_new(b, "Text", ses_content(m.text));
    if (!m.html.empty()) json_object_set_new(b, "Html", ses_content(m.html));
    json_object_set_new(simple, "Body", b);
    json_object_set(simple, "Headers", headers);
    if (!m.attachments.empty()) {
        json_t *arr = json_array();
        for (const auto &a : m.attachments) {
            // RawContent is base64 on the wire, which is what we hold.
            json_array_append_new(arr, json_pack("{s:s%,s:s%,s:s%,s:s,s:s}", "FileName", a.filename.data(),
                                                 a.filename.size(), "ContentType", a.content_type.data(),
                                                 a.content_type.size(), "RawContent", a.content_base64.data(),
                                                 a.content_base64.size(), "ContentDisposition", "ATTACHMENT",
                                                 "ContentTransferEncoding", "BASE64"));
        }
        json_object_set_new(simple, "Attachments", arr);
    }
    json_t *content = json_object();
    json_object_set_new(content, "Simple", simple);
    json_object_set_new(o, "Content", content);

    // Tag names and values may hold only [A-Za-z0-9_-], up to 256: metadata
    // that does not fit is left out rather than changed.
    json_t *tags = json_array();
    for (const auto &kv : metadata_with_id(id, m)) {
        if (ses_tag_text(kv.first) && ses_tag_text(kv.second)) json_array_append_new(tags, name_value(kv.first, kv.second));
    }
    json_object_set_new(o, "EmailTags", tags);
    if (!configuration_set.empty()) json_object_set_new(o, "ConfigurationSetName", str(configuration_set));
    body = dump(o);
    return true;
}

SendOutcome ses_outcome(int curl_code, long status, const std::string &error_type, const std::string &body) {
    if (curl_code != CURLE_OK) return transport_failure(curl_code);
    if (status >= 200 && status < 300) return outcome(SendResult::sent, status, "", false);
    std::string type = ses_type_name(error_type.empty() ? json_field(body, "__type") : error_type);
    std::string message = json_field(body, "message");
    if (message.empty()) message = json_field(body, "Message");
    std::string reason = status_reason(status, type, message);

    // The message itself: refused content, a bad address or field.
    for (const char *t : {"MessageRejected", "BadRequestException"}) {
        if (type == t) return outcome(SendResult::permanent, status, reason, false);
    }
    // Our account, credentials or configuration: fail over, count toward
    // the breaker.
    for (const char *t : {"AccountSuspendedException", "SendingPausedException", "MailFromDomainNotVerifiedException",
                          "NotFoundException", "LimitExceededException", "TooManyRequestsException",
                          "InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature",
                          "UnrecognizedClientException", "InvalidClientTokenId", "AccessDeniedException",
                          "ExpiredTokenException", "ExpiredToken", "ThrottlingException",
                          "InternalFailure", "ServiceUnavailable"}) {
        if (type == t) return outcome(SendResult::transient, status, reason, true);
    }
    // Unknown or absent type: by status. 413 is a message too large for SES
    // (40 MB), which another provider may take.
    if (status == 413) return outcome(SendResult::transient, status, reason, false);
    SendOutcome out = http_outcome(curl_code, status);
    out.reason = reason;
    return out;
}

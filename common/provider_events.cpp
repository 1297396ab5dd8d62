#include "provider_events.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "base64.h"
#include "crypto.h"
#include "json.h"
#include "message.h"
#include "reason.h"

namespace mailapi::pevents {

namespace {

constexpr size_t EVENTS_MAX = 10000;  // events one request may carry

std::string str(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    if (json_is_string(v)) return std::string(json_string_value(v), json_string_length(v));
    if (json_is_integer(v)) return std::to_string(json_integer_value(v));
    return "";
}

int64_t num(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v)) return json_integer_value(v);
    if (json_is_real(v)) return static_cast<int64_t>(json_real_value(v));
    if (json_is_string(v)) return std::atoll(json_string_value(v));
    return 0;
}

// RFC 3339 to unix ms, keeping the milliseconds (rfc3339_parse gives seconds).
int64_t ms_of(const std::string &t) {
    int64_t s = 0;
    if (!mailapi::rfc3339_parse(t, s)) return 0;
    int64_t ms = 0;
    size_t dot = t.find('.', 19);
    if (dot == 19) {
        int digits = 0;
        for (size_t i = 20; i < t.size() && digits < 3 && t[i] >= '0' && t[i] <= '9'; i++, digits++) {
            ms = ms * 10 + (t[i] - '0');
        }
        for (; digits < 3; digits++) ms *= 10;
    }
    return s * 1000 + ms;
}

// The reply code at the start of a receiving server's text ("550 5.1.1 ..."), or 0.
int code_of(const std::string &text) {
    if (text.size() >= 3 && text[0] >= '2' && text[0] <= '5' && std::isdigit(static_cast<unsigned char>(text[1])) &&
        std::isdigit(static_cast<unsigned char>(text[2])) && (text.size() == 3 || !std::isdigit(static_cast<unsigned char>(text[3])))) {
        return std::atoi(text.substr(0, 3).c_str());
    }
    return 0;
}

bool ours(const std::string &id) { return mailapi::message_id_valid(id); }

Json load(std::string_view body, std::string &error) {
    json_error_t e;
    Json root(json_loadb(body.data(), body.size(), JSON_REJECT_DUPLICATES, &e));
    if (!root) error = std::string("not JSON: ") + e.text;
    return root;
}

void push(std::vector<Event> &out, Event e) {
    e.reason = mailapi::safe_reason(e.reason);
    if (e.recipient.size() > 254 || e.id.empty() || e.id.size() > 256) return;
    out.push_back(std::move(e));
}

}  // namespace

// ---------------------------------------------------------------- SendGrid

bool parse_sendgrid(std::string_view body, std::vector<Event> &out, std::string &error) {
    Json root = load(body, error);
    if (!root) return false;
    if (!json_is_array(root.get()) || json_array_size(root.get()) > EVENTS_MAX) {
        error = "a SendGrid event webhook posts an array of at most 10000 events";
        return false;
    }
    size_t i;
    json_t *o;
    json_array_foreach(root.get(), i, o) {
        if (!json_is_object(o)) continue;
        Event e;
        std::string kind = str(o, "event");
        e.message_id = str(o, "mailapi_id");  // our custom_args come back at the top level
        e.id = str(o, "sg_event_id");
        e.recipient = str(o, "email");
        e.at_ms = num(o, "timestamp") * 1000;
        if (!ours(e.message_id)) continue;
        if (kind == "delivered") {
            e.type = DELIVERED;
            e.code = code_of(str(o, "response"));
        } else if (kind == "deferred") {
            e.type = DEFERRED;
            e.reason = str(o, "response");
            e.code = code_of(e.reason);
        } else if (kind == "bounce" || kind == "dropped") {
            e.type = BOUNCED;
            e.bounce = str(o, "type") == "blocked" ? "soft" : "hard";  // blocked: refused for now
            e.reason = str(o, "reason");
            e.code = code_of(e.reason);
        } else if (kind == "spamreport") {
            e.type = COMPLAINED;
        } else if (kind == "open") {
            e.type = OPENED;
        } else if (kind == "click") {
            e.type = CLICKED;  // the link itself is left out: it may carry the recipient's tokens
        } else if (kind == "unsubscribe" || kind == "group_unsubscribe") {
            e.type = UNSUBSCRIBED;
        } else {
            continue;  // processed, group_resubscribe: nothing a timeline needs
        }
        push(out, std::move(e));
    }
    return true;
}

bool sendgrid_verify(std::string_view public_key_b64, std::string_view timestamp, std::string_view body,
                     std::string_view signature_b64) {
    std::string der, sig;
    if (!mailapi::base64_decode(public_key_b64, der) || !mailapi::base64_decode(signature_b64, sig)) return false;
    const unsigned char *p = reinterpret_cast<const unsigned char *>(der.data());
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())),
                                                            EVP_PKEY_free);
    if (!key || EVP_PKEY_base_id(key.get()) != EVP_PKEY_EC) return false;
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    std::string data(timestamp);
    data.append(body);
    return ctx && EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()) == 1 &&
           EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char *>(sig.data()), sig.size(),
                            reinterpret_cast<const unsigned char *>(data.data()), data.size()) == 1;
}

// ---------------------------------------------------------------- Mailgun

bool parse_mailgun(std::string_view body, std::vector<Event> &out, MailgunSignature &sig, std::string &error) {
    Json root = load(body, error);
    if (!root) return false;
    json_t *s = json_object_get(root.get(), "signature");
    json_t *d = json_object_get(root.get(), "event-data");
    if (!json_is_object(s) || !json_is_object(d)) {
        error = "a Mailgun webhook posts {\"signature\": {...}, \"event-data\": {...}}";
        return false;
    }
    sig.timestamp = str(s, "timestamp");
    sig.token = str(s, "token");
    sig.signature = str(s, "signature");
    Event e;
    std::string kind = str(d, "event");
    e.id = str(d, "id");
    e.recipient = str(d, "recipient");
    json_t *ts = json_object_get(d, "timestamp");
    e.at_ms = json_is_number(ts) ? static_cast<int64_t>(std::llround(json_number_value(ts) * 1000)) : 0;
    json_t *vars = json_object_get(d, "user-variables");
    e.message_id = json_is_object(vars) ? str(vars, "mailapi_id") : "";
    json_t *status = json_object_get(d, "delivery-status");
    if (json_is_object(status)) {
        e.code = static_cast<int>(num(status, "code"));
        e.reason = str(status, "message");
        if (e.reason.empty()) e.reason = str(status, "description");
    }
    if (e.reason.empty()) e.reason = str(d, "reason");
    if (!ours(e.message_id)) return true;
    if (kind == "delivered") {
        e.type = DELIVERED;
        e.reason.clear();
    } else if (kind == "failed") {
        bool permanent = str(d, "severity") == "permanent";
        e.type = permanent ? BOUNCED : DEFERRED;
        if (permanent) e.bounce = "hard";
    } else if (kind == "rejected") {  // Mailgun refused to send it
        e.type = BOUNCED;
        e.bounce = "hard";
    } else if (kind == "complained") {
        e.type = COMPLAINED;
    } else if (kind == "opened") {
        e.type = OPENED;
    } else if (kind == "clicked") {
        e.type = CLICKED;
    } else if (kind == "unsubscribed") {
        e.type = UNSUBSCRIBED;
    } else {
        return true;  // accepted, stored: we know
    }
    push(out, std::move(e));
    return true;
}

bool mailgun_verify(std::string_view signing_key, const MailgunSignature &sig) {
    if (sig.timestamp.empty() || sig.token.empty() || sig.signature.size() != 64) return false;
    std::string data = sig.timestamp + sig.token;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), signing_key.data(), static_cast<int>(signing_key.size()),
              reinterpret_cast<const unsigned char *>(data.data()), data.size(), md, &len) || len != 32) {
        return false;
    }
    char hex[65];
    for (unsigned i = 0; i < 32; i++) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
    std::string given = sig.signature;
    for (char &c : given) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return CRYPTO_memcmp(hex, given.data(), 64) == 0;
}

// ---------------------------------------------------------------- Postmark

namespace {

bool postmark_hard(const std::string &type) {
    static const char *const hard[] = {"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Unsubscribe",
                                       "SpamNotification", "Blocked", "DMARCPolicy"};
    for (const char *h : hard) {
        if (type == h) return true;
    }
    return false;
}

}  // namespace

bool parse_postmark(std::string_view body, std::vector<Event> &out, std::string &error) {
    Json root = load(body, error);
    if (!root) return false;
    json_t *o = root.get();
    if (!json_is_object(o) || str(o, "RecordType").empty()) {
        error = "a Postmark webhook posts one object with a RecordType";
        return false;
    }
    Event e;
    std::string kind = str(o, "RecordType");
    json_t *meta = json_object_get(o, "Metadata");
    e.message_id = json_is_object(meta) ? str(meta, "mailapi_id") : "";
    if (!ours(e.message_id)) return true;
    std::string pm_id = str(o, "MessageID");
    if (kind == "Delivery") {
        e.type = DELIVERED;
        e.recipient = str(o, "Recipient");
        e.at_ms = ms_of(str(o, "DeliveredAt"));
        e.id = "Delivery:" + pm_id + ":" + e.recipient;
    } else if (kind == "Bounce" || kind == "SpamComplaint") {
        std::string type = str(o, "Type");
        e.type = kind == "Bounce" ? BOUNCED : COMPLAINED;
        if (kind == "Bounce") e.bounce = postmark_hard(type) ? "hard" : "soft";
        e.recipient = str(o, "Email");
        e.at_ms = ms_of(str(o, "BouncedAt"));
        e.reason = str(o, "Description");
        e.id = kind + ":" + str(o, "ID");
    } else if (kind == "Open" || kind == "Click") {
        e.type = kind == "Open" ? OPENED : CLICKED;
        e.recipient = str(o, "Recipient");
        e.at_ms = ms_of(str(o, "ReceivedAt"));
        e.id = kind + ":" + pm_id + ":" + e.recipient + ":" + std::to_string(e.at_ms);
    } else if (kind == "SubscriptionChange") {
        json_t *suppress = json_object_get(o, "SuppressSending");
        if (!json_is_true(suppress)) return true;
        e.type = UNSUBSCRIBED;
        e.recipient = str(o, "Recipient");
        e.at_ms = ms_of(str(o, "ChangedAt"));
        e.id = kind + ":" + pm_id + ":" + e.recipient + ":" + std::to_string(e.at_ms);
    } else {
        return true;
    }
    push(out, std::move(e));
    return true;
}

// ---------------------------------------------------------------- SES through SNS

bool parse_sns(std::string_view body, SnsMessage &m, std::string &error) {
    Json root = load(body, error);
    if (!root) return false;
    json_t *o = root.get();
    if (!json_is_object(o)) {
        error = "an SNS message is a JSON object";
        return false;
    }
    m.type = str(o, "Type");
    m.message_id = str(o, "MessageId");
    m.topic_arn = str(o, "TopicArn");
    m.message = str(o, "Message");
    m.timestamp = str(o, "Timestamp");
    m.signature_version = str(o, "SignatureVersion");
    m.signature = str(o, "Signature");
    m.signing_cert_url = str(o, "SigningCertURL");
    m.subscribe_url = str(o, "SubscribeURL");
    m.token = str(o, "Token");
    m.has_subject = json_is_string(json_object_get(o, "Subject"));
    m.subject = str(o, "Subject");
    bool known = m.type == "Notification" || m.type == "SubscriptionConfirmation" || m.type == "UnsubscribeConfirmation";
    if (!known || m.message_id.empty() || m.topic_arn.empty() || m.signature.empty() || m.timestamp.empty()) {
        error = "not an SNS message (Type, MessageId, TopicArn, Timestamp, Signature)";
        return false;
    }
    return true;
}

std::string sns_string_to_sign(const SnsMessage &m) {
    auto kv = [](const char *k, const std::string &v) { return std::string(k) + "\n" + v + "\n"; };
    if (m.type == "Notification") {
        return kv("Message", m.message) + kv("MessageId", m.message_id) +
               (m.has_subject ? kv("Subject", m.subject) : "") + kv("Timestamp", m.timestamp) +
               kv("TopicArn", m.topic_arn) + kv("Type", m.type);
    }
    return kv("Message", m.message) + kv("MessageId", m.message_id) + kv("SubscribeURL", m.subscribe_url) +
           kv("Timestamp", m.timestamp) + kv("Token", m.token) + kv("TopicArn", m.topic_arn) + kv("Type", m.type);
}

bool sns_verify(std::string_view cert_pem, const SnsMessage &m) {
    const EVP_MD *md = m.signature_version == "1" ? EVP_sha1() : m.signature_version == "2" ? EVP_sha256() : nullptr;
    std::string sig;
    if (md == nullptr || !mailapi::base64_decode(m.signature, sig)) return false;
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size())),
                                                  BIO_free);
    std::unique_ptr<X509, decltype(&X509_free)> cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)
                                                         : nullptr,
                                                     X509_free);
    if (!cert) return false;
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(X509_get_pubkey(cert.get()), EVP_PKEY_free);
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    std::string data = sns_string_to_sign(m);
    return key && ctx && EVP_PKEY_base_id(key.get()) == EVP_PKEY_RSA &&
           EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key.get()) == 1 &&
           EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char *>(sig.data()), sig.size(),
                            reinterpret_cast<const unsigned char *>(data.data()), data.size()) == 1;
}

namespace {

// An AWS region's name: two letters, words, a number ("us-gov-west-1").
// Not any label: S3 serves a bucket named "sns" on sns.s3.amazonaws.com,
// sns.s3-us-west-2.amazonaws.com..., with whatever certificate its owner
// puts there, and "sns.*.amazonaws.com" took those.
bool region_label(std::string_view l) {
    auto alpha = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
    auto digit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
    if (l.size() < 4 || !alpha(l[0]) || !alpha(l[1]) || l[2] != '-') return false;
    size_t i = 3, words = 0;
    for (;;) {
        size_t start = i;
        while (i < l.size() && alpha(l[i])) i++;
        if (i == start) break;
        words++;
        if (i == l.size() || l[i] != '-') return false;
        i++;
    }
    size_t start = i;
    while (i < l.size() && digit(l[i])) i++;
    return words > 0 && i > start && i == l.size();
}

}  // namespace

bool sns_url_allowed(std::string_view url, std::string_view pattern) {
    constexpr std::string_view scheme = "https://";
    if (url.size() > 2048 || url.substr(0, scheme.size()) != scheme) return false;
    std::string_view rest = url.substr(scheme.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos) return false;
    std::string_view host = rest.substr(0, slash), path = rest.substr(slash);
    size_t pattern_colon = pattern.rfind(':');
    std::string_view port = "443";
    if (pattern_colon != std::string_view::npos) {
        port = pattern.substr(pattern_colon + 1);
        pattern = pattern.substr(0, pattern_colon);
    }
    size_t colon = host.rfind(':');
    if (colon != std::string_view::npos) {
        if (host.substr(colon + 1) != port) return false;
        host = host.substr(0, colon);
    } else if (port != "443") {
        return false;
    }
    if (host.empty() || host.find_first_of("@:[]%\\") != std::string_view::npos) return false;
    if (path.size() < 5 || path.substr(path.size() - 4) != ".pem" || path.find_first_of("?#") != std::string_view::npos) {
        return false;
    }
    // label by label: "*" matches one label naming an AWS region
    auto label = [](std::string_view s, size_t &pos) {
        size_t dot = s.find('.', pos);
        std::string_view l = s.substr(pos, dot == std::string_view::npos ? std::string_view::npos : dot - pos);
        pos = dot == std::string_view::npos ? s.size() + 1 : dot + 1;
        return l;
    };
    size_t hp = 0, pp = 0;
    while (hp <= host.size() && pp <= pattern.size()) {
        std::string_view h = label(host, hp), p = label(pattern, pp);
        if (h.empty()) return false;
        if (p == "*") {
            if (!region_label(h)) return false;
        } else if (h.size() != p.size() || !std::equal(h.begin(), h.end(), p.begin(), [](char a, char b) {
                       return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
                   })) {
            return false;
        }
    }
    return hp > host.size() && pp > pattern.size();
}

namespace {

void ses_recipients(json_t *list, const char *field, std::vector<std::string> &out) {
    size_t i;
    json_t *r;
    json_array_foreach(list, i, r) {
        if (json_is_string(r)) out.emplace_back(json_string_value(r));
        else if (json_is_object(r)) out.push_back(str(r, field));
    }
}

}  // namespace

bool parse_ses(std::string_view message, const std::string &sns_message_id, std::vector<Event> &out,
               std::string &error) {
    Json root = load(message, error);
    if (!root || !json_is_object(root.get())) {
        if (error.empty()) error = "the SES event is not a JSON object";
        return false;
    }
    json_t *o = root.get();
    std::string kind = str(o, "eventType");
    if (kind.empty()) kind = str(o, "notificationType");
    json_t *mail = json_object_get(o, "mail");
    json_t *tags = json_is_object(mail) ? json_object_get(mail, "tags") : nullptr;
    json_t *ids = json_is_object(tags) ? json_object_get(tags, "mailapi_id") : nullptr;
    std::string mid = json_is_array(ids) && json_array_size(ids) > 0 && json_is_string(json_array_get(ids, 0))
                          ? json_string_value(json_array_get(ids, 0))
                          : "";
    if (!ours(mid)) return true;
    std::vector<std::string> rcpts;
    Event e;
    e.message_id = mid;
    json_t *detail = nullptr;
    if (kind == "Delivery") {
        detail = json_object_get(o, "delivery");
        e.type = DELIVERED;
        ses_recipients(json_object_get(detail, "recipients"), "", rcpts);
        e.code = code_of(str(detail, "smtpResponse"));
    } else if (kind == "Bounce") {
        detail = json_object_get(o, "bounce");
        e.type = BOUNCED;
        e.bounce = str(detail, "bounceType") == "Permanent" ? "hard" : "soft";
        json_t *list = json_object_get(detail, "bouncedRecipients");
        ses_recipients(list, "emailAddress", rcpts);
        if (json_array_size(list) > 0) e.reason = str(json_array_get(list, 0), "diagnosticCode");
        e.code = code_of(e.reason.substr(e.reason.find(';') == std::string::npos ? 0 : e.reason.find(';') + 2));
    } else if (kind == "Complaint") {
        detail = json_object_get(o, "complaint");
        e.type = COMPLAINED;
        ses_recipients(json_object_get(detail, "complainedRecipients"), "emailAddress", rcpts);
    } else if (kind == "DeliveryDelay") {
        detail = json_object_get(o, "deliveryDelay");
        e.type = DEFERRED;
        ses_recipients(json_object_get(detail, "delayedRecipients"), "emailAddress", rcpts);
        e.reason = str(detail, "delayType");
    } else if (kind == "Reject") {
        detail = json_object_get(o, "reject");
        e.type = BOUNCED;
        e.bounce = "hard";
        e.reason = str(detail, "reason");
        ses_recipients(json_object_get(mail, "destination"), "", rcpts);
    } else if (kind == "Open" || kind == "Click") {
        detail = json_object_get(o, kind == "Open" ? "open" : "click");
        e.type = kind == "Open" ? OPENED : CLICKED;
        ses_recipients(json_object_get(mail, "destination"), "", rcpts);
        if (rcpts.size() > 1) rcpts.resize(1);  // SES does not say which of them
    } else {
        return true;
    }
    e.at_ms = ms_of(str(detail, "timestamp"));
    for (size_t i = 0; i < rcpts.size() && i < EVENTS_MAX; i++) {
        Event each = e;
        each.recipient = rcpts[i];
        each.id = sns_message_id + ":" + std::to_string(i);
        push(out, std::move(each));
    }
    return true;
}

std::string event_to_json(const Event &e) {
    Json o(json_pack("{s:s%,s:s%,s:s%,s:s%,s:s%,s:I,s:i,s:s%}", "id", e.id.data(), e.id.size(), "mid",
                     e.message_id.data(), e.message_id.size(), "type", e.type.data(), e.type.size(), "bounce",
                     e.bounce.data(), e.bounce.size(), "rcpt", e.recipient.data(), e.recipient.size(), "at",
                     static_cast<json_int_t>(e.at_ms), "code", e.code, "reason", e.reason.data(), e.reason.size()));
    if (o && !e.tenant.empty()) {
        json_object_set_new(o.get(), "tenant", json_stringn(e.tenant.data(), e.tenant.size()));
        json_object_set_new(o.get(), "ri", json_integer(e.rcpt));
        json_object_set_new(o.get(), "response", json_stringn(e.response.data(), e.response.size()));
    }
    char *text = o ? json_dumps(o.get(), JSON_COMPACT) : nullptr;
    std::string out = text ? text : "";
    free(text);
    return out;
}

bool event_from_json(std::string_view json, Event &e) {
    std::string error;
    Json o = load(json, error);
    if (!o || !json_is_object(o.get())) return false;
    e.id = str(o.get(), "id");
    e.message_id = str(o.get(), "mid");
    e.type = str(o.get(), "type");
    e.bounce = str(o.get(), "bounce");
    e.recipient = str(o.get(), "rcpt");
    e.at_ms = num(o.get(), "at");
    e.code = static_cast<int>(num(o.get(), "code"));
    e.reason = str(o.get(), "reason");
    e.tenant = str(o.get(), "tenant");
    json_t *ri = json_object_get(o.get(), "ri");
    e.rcpt = json_is_integer(ri) ? static_cast<int>(json_integer_value(ri)) : -1;
    e.response = str(o.get(), "response");
    return !e.id.empty() && ours(e.message_id) && !e.type.empty();
}

bool fresh(std::string_view timestamp, int64_t now_s, int64_t tolerance_s) {
    int64_t t = 0;
    if (!timestamp.empty() && timestamp.size() <= 12 &&
        timestamp.find_first_not_of("0123456789") == std::string_view::npos) {
        t = std::atoll(std::string(timestamp).c_str());
    } else if (!mailapi::rfc3339_parse(timestamp, t)) {
        return false;
    }
    return t >= now_s - tolerance_s && t <= now_s + tolerance_s;
}

}  // namespace mailapi::pevents

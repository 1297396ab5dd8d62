// What the hosted providers tell us after they took a message: their event
// webhooks, verified as each documents it and read into one normalised
// event. Pure functions (no I/O), shared by the module (which verifies and
// queues them) and the tests and fuzzers.
//
//   SendGrid   Event Webhook, a JSON array; ECDSA P-256 over timestamp + body
//              (X-Twilio-Email-Event-Webhook-Signature / -Timestamp)
//   Mailgun    one event a request; HMAC-SHA256 of timestamp + token under the
//              webhook signing key (tokens seen are refused: a replay cache)
//   Postmark   one event a request; HTTP Basic credentials set per account
//   SES        through SNS: the SNS message signature (SignatureVersion 1 and
//              2) with the certificate at SigningCertURL, whose host must match
//              the configured pattern; TopicArn checked
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailapi::pevents {

// Normalised types, in the order a recipient's status can move through them.
constexpr char DELIVERED[] = "delivered";
constexpr char DEFERRED[] = "delivery_deferred";  // the receiving server said try later (the provider retries)
constexpr char BOUNCED[] = "bounced";
constexpr char COMPLAINED[] = "complained";
constexpr char OPENED[] = "opened";
constexpr char CLICKED[] = "clicked";
constexpr char UNSUBSCRIBED[] = "unsubscribed";

struct Event {
    std::string id;          // the provider's own id for it: duplicates are dropped by it
    std::string message_id;  // ours (what deliveryd put in the provider's request)
    std::string type;        // one of the above
    std::string bounce;      // bounced: "hard" or "soft"
    std::string recipient;   // the address it is about
    int64_t at_ms = 0;
    int code = 0;            // the receiving server's reply code, when given
    std::string reason;      // short, addresses scrubbed
    // Our own links' events (links.h, contract::LINKS_SOURCE): the tenant the
    // link was signed for, the recipient by index, and the response chosen.
    std::string tenant;
    int rcpt = -1;
    std::string response;
};

// Every event of a verified request that concerns one of our messages (an
// event without our id, or of a type we do not track, is left out); false
// when the body is not the provider's format. `error` says why.
bool parse_sendgrid(std::string_view body, std::vector<Event> &out, std::string &error);
// Mailgun's body also carries its signature fields.
struct MailgunSignature {
    std::string timestamp, token, signature;
};
bool parse_mailgun(std::string_view body, std::vector<Event> &out, MailgunSignature &sig, std::string &error);
bool parse_postmark(std::string_view body, std::vector<Event> &out, std::string &error);

// An SNS HTTP(S) message (notification or subscription confirmation).
struct SnsMessage {
    std::string type, message_id, topic_arn, message, timestamp, signature_version, signature, signing_cert_url,
        subscribe_url, token, subject;
    bool has_subject = false;
};
bool parse_sns(std::string_view body, SnsMessage &out, std::string &error);
// What SNS signed (its documented canonical form for the message's type).
std::string sns_string_to_sign(const SnsMessage &m);
// The SES event inside a notification's Message.
bool parse_ses(std::string_view message, const std::string &sns_message_id, std::vector<Event> &out,
               std::string &error);

// ---------------------------------------------------------------- verification

// base64 DER SubjectPublicKeyInfo (as SendGrid shows the key), base64 DER
// ECDSA signature over timestamp + body.
bool sendgrid_verify(std::string_view public_key_b64, std::string_view timestamp, std::string_view body,
                     std::string_view signature_b64);
// hex HMAC-SHA256(signing key, timestamp + token), compared in constant time.
bool mailgun_verify(std::string_view signing_key, const MailgunSignature &sig);
// The signature of `m` with the certificate's key (PEM): RSA with SHA1
// (SignatureVersion 1) or SHA256 (2).
bool sns_verify(std::string_view cert_pem, const SnsMessage &m);
// https://HOST/....pem with HOST matching `pattern`, where "*" stands for one
// DNS label naming an AWS region ("sns.*.amazonaws.com"); no user; port 443
// unless the pattern names one ("127.0.0.1:8443", for tests).
bool sns_url_allowed(std::string_view url, std::string_view pattern);
// How an event travels from the module to deliveryd (sealed in Redis).
std::string event_to_json(const Event &e);
bool event_from_json(std::string_view json, Event &e);

// A sender's timestamp (unix seconds, or RFC 3339) within `tolerance_s` of now.
bool fresh(std::string_view timestamp, int64_t now_s, int64_t tolerance_s);

}  // namespace mailapi::pevents

// What each hosted provider's HTTP API documents, as pure functions: the
// request built from a message, and the outcome read from the answer. No
// I/O here: the provider classes do the transfer (curl) and call these.
//
//   sendgrid  POST {url}/v3/mail/send, Bearer key, JSON; 202
//   mailgun   POST {url}/v3/{domain}/messages, basic api:{key}, multipart/form-data; 200
//   postmark  POST {url}/email, X-Postmark-Server-Token, JSON; 200 with ErrorCode 0
//   ses       POST {url}/v2/email/outbound-emails, SigV4 (service "ses"), JSON; 200
//   http      POST {url}, Bearer token, {"id","tenant","message"}; any 2xx
//
// Outcomes: permanent when the message itself is refused (no failover);
// transient with provider_fault when the provider or our account with it is
// in trouble (unreachable, 5xx, 429, credentials, suspended, out of credit);
// transient without provider_fault when this provider cannot take this
// message but another may (too large for it, a sender it does not know).
// Reasons are short and never carry an address or a body.
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include "message.h"
#include "reason.h"
#include "provider.h"
#include "sigv4.h"

using mailapi::safe_reason;  // common/reason.h

// By HTTP status alone: 2xx sent; 429, 5xx and our credentials refused (401,
// 403) transient provider faults; any other 4xx permanent. A curl error is a
// transient provider fault.
SendOutcome http_outcome(int curl_code, long status);

// --- SendGrid v3 ---------------------------------------------------------
// One personalization with every recipient; our id in custom_args.
std::string sendgrid_body(const std::string &id, const mailapi::Message &m);
// http_outcome, with the first of {"errors":[{"message"}]} as the reason.
SendOutcome sendgrid_outcome(int curl_code, long status, const std::string &body);

// --- Mailgun v3 ----------------------------------------------------------
// One part of a multipart/form-data body. With a filename it is a file part
// whose value is the decoded bytes.
struct FormField {
    std::string name, value, filename, content_type;
};
std::vector<FormField> mailgun_form(const std::string &id, const mailapi::Message &m);
SendOutcome mailgun_outcome(int curl_code, long status, const std::string &body);

// --- Postmark ------------------------------------------------------------
// message_stream may be empty (Postmark then uses "outbound").
std::string postmark_body(const std::string &id, const mailapi::Message &m, const std::string &message_stream);
SendOutcome postmark_outcome(int curl_code, long status, const std::string &body);

// --- Amazon SES v2 SendEmail -------------------------------------------------
// SES takes at most 15 headers with simple content: one is X-Mailapi-Id.
constexpr size_t SES_MAX_CUSTOM_HEADERS = 14;
// Simple content (subject, text, html, headers, attachments). False, with a
// reason in `error`, when SES's simple content cannot carry the message
// (more than SES_MAX_CUSTOM_HEADERS headers): another provider may.
bool ses_body(const std::string &id, const mailapi::Message &m, const std::string &configuration_set,
              std::string &body, std::string &error);
// The endpoint of a region: https://email.{region}.amazonaws.com
std::string ses_default_url(const std::string &region);
// What SigV4 signs for SendEmail at {url}/v2/email/outbound-emails: POST,
// the host as curl sends it in Host (with the port only when the URL names
// a port other than the scheme's), the path, content-type, the body. False
// when the URL does not parse.
bool ses_signing_request(const std::string &url, const std::string &body, SigV4Request &req);
// error_type: the x-amzn-ErrorType header ("" when absent); the body's
// "__type" is read when it is absent.
SendOutcome ses_outcome(int curl_code, long status, const std::string &error_type, const std::string &body);

// AWS Signature Version 4 for one request: pure (the time is passed in), so
// it can be checked against AWS's published test-suite vectors.
#pragma once
#include <ctime>
#include <string>
#include <utility>
#include <vector>

struct SigV4Request {
    std::string method;  // "POST"
    std::string host;    // "email.eu-west-1.amazonaws.com" (with ":port" when not the default)
    std::string path;    // "/v2/email/outbound-emails", not percent-encoded
    std::vector<std::pair<std::string, std::string>> query;    // not percent-encoded
    std::vector<std::pair<std::string, std::string>> headers;  // more headers to sign, e.g. content-type
    std::string payload;
    // Also sign and send X-Amz-Content-Sha256 (S3 needs it; SES does not).
    bool content_sha256_header = false;
};

struct SigV4Credentials {
    std::string region, service;
    std::string access_key_id, secret_access_key;
    std::string session_token;  // temporary credentials only; empty otherwise
};

// "20150830T123600Z"
std::string sigv4_amz_date(time_t t);

// The canonical request of the specification's first step, for tests and
// for reading a signature mismatch: method, canonical URI, canonical query,
// canonical headers (host, x-amz-date, the token when given, and `headers`),
// signed header names, hex SHA-256 of the payload.
std::string sigv4_canonical_request(const SigV4Request &req, const std::string &amz_date,
                                    const std::string &session_token, std::string *signed_headers = nullptr);

// The header lines to add to the request, "Name: value" each:
// Authorization, X-Amz-Date, X-Amz-Security-Token (with a session token),
// X-Amz-Content-Sha256 (when asked for). Empty if OpenSSL failed.
std::vector<std::string> sigv4_headers(const SigV4Request &req, const SigV4Credentials &cred, time_t now);

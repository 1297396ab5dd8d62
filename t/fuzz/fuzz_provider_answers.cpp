// The hosted providers' answers (deliveryd/provider_formats.h): any status,
// x-amzn-ErrorType header and body read by each provider's classifier. None
// crashes; an outcome is sent only for a 2xx, a provider fault is always
// transient, and a reason is short and carries no address or control
// character (the logs and records must not hold personal data).
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "provider_formats.h"

namespace {

bool address_char(unsigned char c) { return std::isalnum(c) || c >= 0x80; }

void check_reason(const std::string &reason, size_t max) {
    if (reason.size() > max) abort();
    for (size_t i = 0; i < reason.size(); i++) {
        unsigned char c = static_cast<unsigned char>(reason[i]);
        if (c < 0x20 || c == 0x7f) abort();
        // x@y in any form is scrubbed: no '@' touches a letter or digit
        if (c == '@' && ((i > 0 && address_char(reason[i - 1])) ||
                         (i + 1 < reason.size() && address_char(reason[i + 1])))) {
            abort();
        }
    }
}

// "http <status>[, <code>][: <message>]", each part at most ~200 bytes
constexpr size_t REASON_MAX = 32 + 2 * (200 + 3) + 64;

void check(const SendOutcome &o, int curl_code, long status) {
    if (curl_code != 0) {
        if (o.result != SendResult::transient || !o.provider_fault || o.code != 0) abort();
        return;
    }
    if (o.code != static_cast<int>(status)) abort();
    bool ok = status >= 200 && status < 300;
    if (o.result == SendResult::sent && !ok) abort();
    if (o.result == SendResult::sent && o.provider_fault) abort();
    if (o.provider_fault && o.result != SendResult::transient) abort();
    if (o.result != SendResult::sent && o.reason.rfind("http " + std::to_string(status), 0) != 0) abort();
    check_reason(o.reason, REASON_MAX);
}

}  // namespace

// Input: provider (byte 0, mod 5), curl code (byte 1: 0 unless its top bit
// is set), HTTP status (bytes 2-3, big-endian), x-amzn-ErrorType up to the
// first newline, then the body.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    int provider = data[0] % 5;
    int curl_code = (data[1] & 0x80) ? (data[1] & 0x7f) : 0;
    long status = (data[2] << 8) | data[3];
    std::string rest(reinterpret_cast<const char *>(data) + 4, size - 4);
    size_t nl = rest.find('\n');
    std::string error_type = nl == std::string::npos ? "" : rest.substr(0, nl);
    std::string body = nl == std::string::npos ? rest : rest.substr(nl + 1);

    SendOutcome o;
    switch (provider) {
    case 0: o = sendgrid_outcome(curl_code, status, body); break;
    case 1: o = mailgun_outcome(curl_code, status, body); break;
    case 2: o = postmark_outcome(curl_code, status, body); break;
    case 3: o = ses_outcome(curl_code, status, error_type, body); break;
    default: o = http_outcome(curl_code, status); break;  // the generic hook
    }
    check(o, curl_code, status);
    // A 2xx is sent, except from Postmark, which may refuse with an
    // ErrorCode in a 200.
    if (curl_code == 0 && status >= 200 && status < 300 && provider != 2 && o.result != SendResult::sent) abort();
    check_reason(safe_reason(body), 200 + 3);
    return 0;
}

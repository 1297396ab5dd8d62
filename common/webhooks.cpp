#include "webhooks.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "base64.h"
#include "contract.h"
#include "crypto.h"

namespace mailapi {

std::string webhook_secret_new() {
    unsigned char raw[24];
    if (!random_bytes(raw, sizeof raw)) return "";
    return "whsec_" + base64_encode(std::string_view(reinterpret_cast<char *>(raw), sizeof raw));
}

bool webhook_secret_key(std::string_view secret, std::string &key) {
    constexpr std::string_view prefix = "whsec_";
    if (secret.substr(0, prefix.size()) != prefix) return false;
    return base64_decode(secret.substr(prefix.size()), key) && key.size() >= 16;
}

std::string webhook_signature(const std::vector<std::string> &secrets, std::string_view id, int64_t timestamp,
                              std::string_view body) {
    std::string data(id);
    data += '.';
    data += std::to_string(timestamp);
    data += '.';
    data.append(body);
    std::string out;
    for (const std::string &s : secrets) {
        std::string key;
        if (!webhook_secret_key(s, key)) continue;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
                  reinterpret_cast<const unsigned char *>(data.data()), data.size(), md, &len)) {
            continue;
        }
        if (!out.empty()) out += ' ';
        out += "v1," + base64_encode(std::string_view(reinterpret_cast<char *>(md), len));
    }
    return out;
}

bool webhook_url_valid(std::string_view url, std::string &error) {
    size_t scheme = url.rfind("https://", 0) == 0 ? 8 : url.rfind("http://", 0) == 0 ? 7 : 0;
    if (scheme == 0 || url.size() > 2048) {
        error = "url must be http(s)://host/path, at most 2048 characters";
        return false;
    }
    std::string_view rest = url.substr(scheme);
    std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
    if (authority.empty() || authority.find('@') != std::string_view::npos) {
        error = "url must name a host, without user or password";
        return false;
    }
    for (unsigned char c : url) {
        if (c <= 0x20 || c >= 0x7f) {
            error = "url must be printable ASCII without spaces (percent-encode the rest)";
            return false;
        }
    }
    if (url.find('#') != std::string_view::npos) {
        error = "url must not have a fragment";
        return false;
    }
    return true;
}

namespace {

const char *const TYPES[] = {
    contract::event::QUEUED, contract::event::PROVIDER_FAILED, contract::event::DEFERRED, contract::event::SENT,
    contract::event::FAILED, contract::event::CANCELLED, contract::event::RECIPIENT_SENT,
    contract::event::RECIPIENT_FAILED, contract::event::RECIPIENT_DEFERRED, contract::event::DELIVERED,
    contract::event::DELIVERY_DEFERRED, contract::event::BOUNCED, contract::event::COMPLAINED,
    contract::event::OPENED, contract::event::CLICKED, contract::event::UNSUBSCRIBED, contract::event::SUPPRESSED,
    contract::event::RECIPIENT_SUPPRESSED, contract::event::RESPONDED};

}  // namespace

bool webhook_types_valid(std::string_view types, std::string &error) {
    if (types == "*") return true;
    size_t start = 0;
    while (start <= types.size()) {
        size_t comma = types.find(',', start);
        std::string_view t = types.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
        bool known = false;
        for (const char *k : TYPES) known |= t == k;
        if (!known) {
            error = "unknown event type \"" + std::string(t.substr(0, 32)) + "\"";
            return false;
        }
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return true;
}

bool webhook_wants(std::string_view types, std::string_view event_type) {
    if (types == "*") return true;
    size_t start = 0;
    while (start <= types.size()) {
        size_t comma = types.find(',', start);
        if (types.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start) == event_type) {
            return true;
        }
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return false;
}

}  // namespace mailapi

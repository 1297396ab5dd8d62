// API keys file: one key a line,
//   key_id tenant scopes secret_base64 [rate=N/s|N/m|N/h] [burst=N] [quota=N/d]
//   [senders=example.com,*.example.org] [retention=Nd] [responses_url=https://...]
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

struct ApiKey {
    std::string id;
    std::string tenant;
    unsigned scopes = 0;
    std::string secret;  // raw bytes
    double rate = 0;         // sends per second, 0 = unlimited
    unsigned burst = 0;      // sends allowed at once (default: one second's worth)
    uint64_t daily_quota = 0;  // sends per UTC day, 0 = unlimited
    // Domains `from` may have (A-labels, lower case; "*.d" = any subdomain
    // of d); empty = any.
    std::vector<std::string> senders;
    // Where a recipient's response link sends the browser once recorded
    // (?message_id=...&response=... appended); empty: a page of ours.
    std::string responses_url;
    // Days the store keeps this tenant's records (retention=Nd), 0 = for
    // ever. The smallest over the tenant's keys once the file is read, so
    // that every key of a tenant stamps the same on its messages.
    unsigned retention_days = 0;
};

constexpr unsigned RETENTION_DAYS_MAX = 3650;

// Whether `key` may send from `address` (its domain among the key's senders).
bool apikey_sender_allowed(const ApiKey &key, std::string_view address);

constexpr size_t API_SECRET_MIN_BYTES = 16;

// On error, `err` names the line and what is wrong with it.
bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err);
const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id);

bool tenant_valid(std::string_view tenant);

}  // namespace mailapi

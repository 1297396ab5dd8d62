// API keys file: one key a line,
//   key_id tenant scopes secret_base64 [rate=N/s|N/m|N/h] [burst=N] [quota=N/d]
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
};

constexpr size_t API_SECRET_MIN_BYTES = 16;

// On error, `err` names the line and what is wrong with it.
bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err);
const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id);

bool tenant_valid(std::string_view tenant);

}  // namespace mailapi

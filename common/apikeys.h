// API keys file: one key a line, "key_id tenant scopes secret_base64".
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

struct ApiKey {
    std::string id;
    std::string tenant;
    unsigned scopes = 0;
    std::string secret;  // raw bytes
};

constexpr size_t API_SECRET_MIN_BYTES = 16;

// On error, `err` names the line and what is wrong with it.
bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err);
const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id);

bool tenant_valid(std::string_view tenant);

}  // namespace mailapi

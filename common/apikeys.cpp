#include "apikeys.h"

#include <sstream>

#include "base64.h"
#include "token.h"

namespace mailapi {

bool tenant_valid(std::string_view t) {
    // Same alphabet as key ids: tenants travel in logs, Redis fields and AAD.
    return key_id_valid(t);
}

bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err) {
    std::vector<ApiKey> out;
    std::istringstream in{std::string(text)};
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
        lineno++;
        std::istringstream fields(line);
        ApiKey k;
        std::string scopes, secret, extra;
        if (!(fields >> k.id) || k.id[0] == '#') continue;
        std::string where = "line " + std::to_string(lineno) + ": ";
        if (!(fields >> k.tenant >> scopes >> secret)) {
            err = where + "expected \"key_id tenant scopes secret_base64\"";
            return false;
        }
        if (fields >> extra) {
            err = where + "unexpected \"" + extra.substr(0, 32) + "\" after the secret";
            return false;
        }
        if (!key_id_valid(k.id)) {
            err = where + "key id must be 1-64 of [A-Za-z0-9_-]";
            return false;
        }
        if (!tenant_valid(k.tenant)) {
            err = where + "tenant must be 1-64 of [A-Za-z0-9_-]";
            return false;
        }
        k.scopes = scopes_parse(scopes);
        if (!k.scopes) {
            err = where + "scopes must be send, read or send+read";
            return false;
        }
        if (!base64_decode(secret, k.secret) || k.secret.size() < API_SECRET_MIN_BYTES) {
            err = where + "secret must be base64 of at least " + std::to_string(API_SECRET_MIN_BYTES) +
                  " bytes";
            return false;
        }
        if (apikeys_find(out, k.id)) {
            err = where + "duplicate key id \"" + k.id + "\"";
            return false;
        }
        out.push_back(std::move(k));
    }
    keys = std::move(out);
    return true;
}

const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id) {
    for (const ApiKey &k : keys) {
        if (k.id == id) return &k;
    }
    return nullptr;
}

}  // namespace mailapi

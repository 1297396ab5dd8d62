#include "apikeys.h"


#include "base64.h"
#include "lines.h"
#include "token.h"

namespace mailapi {

bool tenant_valid(std::string_view t) {
    // Same alphabet as key ids: tenants travel in logs, Redis fields and AAD.
    return key_id_valid(t);
}

bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err) {
    std::vector<ApiKey> out;
    bool ok = for_each_line(text, [&](int lineno, const std::vector<std::string> &f) {
        std::string where = "line " + std::to_string(lineno) + ": ";
        if (f.size() < 4) {
            err = where + "expected \"key_id tenant scopes secret_base64\"";
            return false;
        }
        if (f.size() > 4) {
            err = where + "unexpected \"" + f[4].substr(0, 32) + "\" after the secret";
            return false;
        }
        ApiKey k;
        k.id = f[0];
        k.tenant = f[1];
        if (!key_id_valid(k.id)) {
            err = where + "key id must be 1-64 of [A-Za-z0-9_-]";
            return false;
        }
        if (!tenant_valid(k.tenant)) {
            err = where + "tenant must be 1-64 of [A-Za-z0-9_-]";
            return false;
        }
        k.scopes = scopes_parse(f[2]);
        if (!k.scopes) {
            err = where + "scopes must be send, read or send+read";
            return false;
        }
        if (!base64_decode(f[3], k.secret) || k.secret.size() < API_SECRET_MIN_BYTES) {
            err = where + "secret must be base64 of at least " + std::to_string(API_SECRET_MIN_BYTES) + " bytes";
            return false;
        }
        if (apikeys_find(out, k.id)) {
            err = where + "duplicate key id \"" + k.id + "\"";
            return false;
        }
        out.push_back(std::move(k));
        return true;
    });
    if (ok) keys = std::move(out);
    return ok;
}

const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id) {
    for (const ApiKey &k : keys) {
        if (k.id == id) return &k;
    }
    return nullptr;
}

}  // namespace mailapi

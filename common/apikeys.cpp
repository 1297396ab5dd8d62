#include "apikeys.h"


#include "base64.h"
#include "lines.h"
#include "token.h"

namespace mailapi {

bool tenant_valid(std::string_view t) {
    // Same alphabet as key ids: tenants travel in logs, Redis fields and AAD.
    return key_id_valid(t);
}

namespace {

bool parse_count(const std::string &s, uint64_t max, uint64_t &out) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string::npos) return false;
    out = std::stoull(s);
    return out >= 1 && out <= max;
}

// One "name=value" option after the secret; returns an error text or "".
std::string apply_option(ApiKey &k, const std::string &opt) {
    size_t eq = opt.find('=');
    std::string name = opt.substr(0, eq == std::string::npos ? opt.size() : eq);
    std::string value = eq == std::string::npos ? "" : opt.substr(eq + 1);
    uint64_t n = 0;
    if (name == "rate") {
        size_t slash = value.find('/');
        std::string unit = slash == std::string::npos ? "" : value.substr(slash + 1);
        double per = unit == "s" ? 1 : unit == "m" ? 60 : unit == "h" ? 3600 : 0;
        if (per == 0 || !parse_count(value.substr(0, slash), 1000000, n)) {
            return "rate must be N/s, N/m or N/h with N 1..1000000";
        }
        k.rate = static_cast<double>(n) / per;
        return "";
    }
    if (name == "burst") {
        if (!parse_count(value, 1000000, n)) return "burst must be 1..1000000";
        k.burst = static_cast<unsigned>(n);
        return "";
    }
    if (name == "quota") {
        if (value.size() < 3 || value.substr(value.size() - 2) != "/d" ||
            !parse_count(value.substr(0, value.size() - 2), 1000000000000ULL, n)) {
            return "quota must be N/d (sends per UTC day)";
        }
        k.daily_quota = n;
        return "";
    }
    return "unknown option \"" + opt.substr(0, 32) + "\" (rate=, burst=, quota=)";
}

}  // namespace

bool apikeys_parse(std::string_view text, std::vector<ApiKey> &keys, std::string &err) {
    std::vector<ApiKey> out;
    bool ok = for_each_line(text, [&](int lineno, const std::vector<std::string> &f) {
        std::string where = "line " + std::to_string(lineno) + ": ";
        if (f.size() < 4) {
            err = where + "expected \"key_id tenant scopes secret_base64\"";
            return false;
        }
        ApiKey k;
        for (size_t i = 4; i < f.size(); i++) {
            std::string e = apply_option(k, f[i]);
            if (!e.empty()) {
                err = where + e;
                return false;
            }
        }
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
        if (k.burst && k.rate == 0) {
            err = where + "burst needs rate";
            return false;
        }
        if (k.rate > 0 && k.burst == 0) k.burst = k.rate < 1 ? 1 : static_cast<unsigned>(k.rate + 0.5);
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

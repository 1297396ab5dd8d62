#include "apikeys.h"


#include "base64.h"
#include "idna.h"
#include "lines.h"
#include "message.h"
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

// senders=example.com,*.example.org: the domains this key may send from.
std::string parse_senders(ApiKey &k, const std::string &value) {
    const std::string how = "senders must be a comma-separated list of domains, e.g. example.com,*.example.org";
    size_t start = 0;
    while (start <= value.size()) {
        size_t comma = value.find(',', start);
        std::string item = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        bool wildcard = item.rfind("*.", 0) == 0;
        std::string domain;
        // a domain as an address would have it: validated by the same rules
        if (item.empty() || !domain_to_ascii(wildcard ? item.substr(2) : item, domain) ||
            !address_valid("postmaster@" + domain) || domain.front() == '[') {
            return how;
        }
        k.senders.push_back(wildcard ? "*." + domain : domain);
        if (k.senders.size() > 256) return "senders lists at most 256 domains";
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return "";
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
    if (name == "senders") return parse_senders(k, value);
    if (name == "responses_url") {
        bool scheme = value.rfind("https://", 0) == 0 || value.rfind("http://", 0) == 0;
        if (!scheme || value.size() > 512 || value.find_first_of(" \"<>\\^`{|}") != std::string::npos ||
            value.find('#') != std::string::npos) {
            return "responses_url must be an http(s) URL of at most 512 characters, without a fragment";
        }
        k.responses_url = value;
        return "";
    }
    if (name == "retention") {
        if (value.size() < 2 || value.back() != 'd' ||
            !parse_count(value.substr(0, value.size() - 1), RETENTION_DAYS_MAX, n)) {
            return "retention must be Nd (days the store keeps the tenant's records), N 1.." +
                   std::to_string(RETENTION_DAYS_MAX);
        }
        k.retention_days = static_cast<unsigned>(n);
        return "";
    }
    return "unknown option \"" + opt.substr(0, 32) + "\" (rate=, burst=, quota=, senders=, retention=, responses_url=)";
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
            err = where + "scopes must be send, read, webhooks, erase or several joined by + (send+read)";
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
    if (!ok) return false;
    // A tenant's retention is the shortest any of its keys asks for.
    for (ApiKey &k : out) {
        for (const ApiKey &other : out) {
            if (other.tenant == k.tenant && other.retention_days &&
                (k.retention_days == 0 || other.retention_days < k.retention_days)) {
                k.retention_days = other.retention_days;
            }
        }
    }
    keys = std::move(out);
    return true;
}

bool apikey_sender_allowed(const ApiKey &key, std::string_view address) {
    if (key.senders.empty()) return true;
    size_t at = address.rfind('@');
    std::string domain;
    if (at == std::string_view::npos || !domain_to_ascii(address.substr(at + 1), domain)) return false;
    for (const std::string &s : key.senders) {
        if (s.rfind("*.", 0) == 0) {
            std::string_view parent = std::string_view(s).substr(1);  // ".example.org"
            if (domain.size() > parent.size() && domain.compare(domain.size() - parent.size(), parent.size(), parent) == 0) {
                return true;
            }
        } else if (domain == s) {
            return true;
        }
    }
    return false;
}

const ApiKey *apikeys_find(const std::vector<ApiKey> &keys, std::string_view id) {
    for (const ApiKey &k : keys) {
        if (k.id == id) return &k;
    }
    return nullptr;
}

}  // namespace mailapi

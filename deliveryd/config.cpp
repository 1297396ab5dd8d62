#include "config.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "apikeys.h"
#include "idna.h"
#include "lines.h"
#include "message.h"
#include "redis_address.h"
#include "smtp_url.h"

namespace {

bool set_int(const std::string &v, int min, int max, int &out) {
    char *end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < min || n > max) return false;
    out = static_cast<int>(n);
    return true;
}

// "512", "64k", "256m", "2g": bytes.
bool set_size(const std::string &v, size_t min, size_t max, size_t &out) {
    char *end = nullptr;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || end == v.c_str()) return false;
    std::string unit(end);
    unsigned long long mult = unit.empty() ? 1 : unit == "k" || unit == "K" ? 1ULL << 10
                                               : unit == "m" || unit == "M" ? 1ULL << 20
                                               : unit == "g" || unit == "G" ? 1ULL << 30
                                                                            : 0;
    if (mult == 0 || n > max / mult || n * mult < min) return false;
    out = static_cast<size_t>(n * mult);
    return true;
}

bool read_secret_file(const std::string &path, std::string &out) {
    std::ifstream f(path);
    return static_cast<bool>(std::getline(f, out));
}

bool name_valid(const std::string &n, size_t max) {
    return !n.empty() && n.size() <= max && std::all_of(n.begin(), n.end(), [](char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
               ch == '-';
    });
}

// What each provider type takes: required keys, defaults, other keys.
struct ProviderType {
    const char *type;
    std::vector<const char *> required;
    std::vector<std::pair<const char *, const char *>> defaults;
    std::vector<const char *> optional;
};

const ProviderType TYPES[] = {
    {"smtp", {}, {{"url", "smtp://127.0.0.1:25"}, {"starttls", "no"}}, {"username", "password"}},
    // smtputf8=yes: the API takes addresses with UTF-8 local parts (SES does not, by its documentation)
    {"sendgrid", {"api_key"}, {{"url", "https://api.sendgrid.com"}, {"smtputf8", "no"}}, {}},
    {"mailgun", {"domain", "api_key"}, {{"url", "https://api.mailgun.net"}, {"smtputf8", "no"}}, {}},
    {"postmark", {"server_token"}, {{"url", "https://api.postmarkapp.com"}, {"message_stream", "outbound"}, {"smtputf8", "no"}}, {}},
    {"ses", {"region", "access_key_id", "secret_access_key"}, {}, {"url", "session_token", "configuration_set"}},
    {"http", {"url"}, {{"smtputf8", "no"}}, {"token"}},
};
const char *const COMMON_KEYS[] = {"rate", "burst", "concurrency", "cacert"};

const ProviderType *provider_type(const std::string &type) {
    for (const ProviderType &t : TYPES) {
        if (type == t.type) return &t;
    }
    return nullptr;
}

// Sets `key` of a provider; "<key>_file" reads the secret from a file.
std::string provider_option(ProviderSpec &spec, std::string key, const std::string &value) {
    const ProviderType *t = provider_type(spec.type);
    bool from_file = key.size() > 5 && key.compare(key.size() - 5, 5, "_file") == 0;
    if (from_file) key.resize(key.size() - 5);
    bool known = std::find_if(std::begin(COMMON_KEYS), std::end(COMMON_KEYS),
                              [&](const char *k) { return key == k; }) != std::end(COMMON_KEYS);
    for (const auto *list : {&t->required, &t->optional}) {
        for (const char *k : *list) known |= key == k;
    }
    for (const auto &d : t->defaults) known |= key == d.first;
    if (!known) return "provider " + spec.name + ": " + spec.type + " has no setting \"" + key + "\"";
    std::string v = value;
    if (from_file && !read_secret_file(value, v)) return "provider " + spec.name + ": cannot read " + value;
    int n = 0;
    if ((key == "rate" || key == "burst") && !set_int(v, 0, 1000000, n)) {
        return "provider " + spec.name + ": " + key + " must be 0 (unlimited)..1000000 per second";
    }
    if (key == "concurrency" && !set_int(v, 0, 100000, n)) {
        return "provider " + spec.name + ": concurrency must be 0 (unlimited)..100000";
    }
    if ((key == "starttls" || key == "smtputf8") && v != "yes" && v != "no") {
        return "provider " + spec.name + ": " + key + " is yes or no";
    }
    if (key == "url") {
        bool smtp = spec.type == "smtp";
        bool ok = smtp ? v.rfind("smtp://", 0) == 0 || v.rfind("smtps://", 0) == 0
                       : v.rfind("http://", 0) == 0 || v.rfind("https://", 0) == 0;
        if (!ok) return "provider " + spec.name + ": url must start with " + (smtp ? "smtp:// or smtps://" : "http(s)://");
    }
    spec.options[key] = v;
    return "";
}

std::string provider_complete(ProviderSpec &spec) {
    const ProviderType *t = provider_type(spec.type);
    for (const auto &d : t->defaults) spec.options.emplace(d.first, d.second);
    if (spec.type == "ses") spec.options.emplace("url", "https://email." + spec.get("region") + ".amazonaws.com");
    for (const char *k : t->required) {
        if (spec.get(k).empty()) {
            return "provider " + spec.name + " (" + spec.type + ") needs " + k + " (or " + k + "_file)";
        }
    }
    return "";
}

// "a:3|b,c" -> steps {a weight 3, b weight 1}, {c}
std::string parse_route(const std::string &text, Route &route) {
    route.clear();
    std::string compact;
    for (char ch : text) {
        if (ch != ' ' && ch != '\t') compact.push_back(ch);
    }
    for (const char *gap : {"||", "|,", ",|"}) {
        if (compact.find(gap) != std::string::npos) return "a pool member is missing in \"" + text + "\"";
    }
    if (!compact.empty() && (compact.front() == '|' || compact.back() == '|')) {
        return "a pool member is missing in \"" + text + "\"";
    }
    std::stringstream steps(compact);
    std::string step;
    while (std::getline(steps, step, ',')) {
        RouteStep rs;
        std::stringstream members(step);
        std::string m;
        while (std::getline(members, m, '|')) {
            int weight = 1;
            size_t colon = m.find(':');
            if (colon != std::string::npos) {
                if (!set_int(m.substr(colon + 1), 1, 1000, weight)) return "weight of " + m + " must be 1..1000";
                m.resize(colon);
            }
            if (!name_valid(m, 32)) return "\"" + m + "\" is not a provider name";
            rs.names.push_back(m);
            rs.weights.push_back(weight);
        }
        if (rs.names.empty()) return "empty step in \"" + text + "\"";
        route.push_back(std::move(rs));
    }
    if (route.empty() || compact.back() == ',') return "a route names at least one provider, e.g. sendgrid,smtp";
    return "";
}

// Every "name value" setting: what it sets and its bounds, read by the file
// parser, the DELIVERYD_<NAME> overrides, --check-config and SIGHUP (which
// refuses the restart-only ones).
struct Setting {
    enum Kind { TEXT, INT, SIZE, REDIS, ROUTE, SHORTHAND } kind;
    const char *name;
    std::string Config::*text = nullptr;
    int Config::*number = nullptr;
    size_t Config::*size = nullptr;
    long long min = 0, max = 0;
    const char *unit = "";
    bool restart_only = false;
    const char *provider = "", *key = "";  // SHORTHAND: a key of an implicit provider
};

Setting text(const char *name, std::string Config::*m, bool restart = false) {
    Setting s{Setting::TEXT, name};
    s.text = m;
    s.restart_only = restart;
    return s;
}

Setting number(const char *name, int Config::*m, long long min, long long max, const char *unit = "",
               bool restart = false) {
    Setting s{Setting::INT, name};
    s.number = m;
    s.min = min;
    s.max = max;
    s.unit = unit;
    s.restart_only = restart;
    return s;
}

Setting shorthand(const char *name, const char *provider, const char *key) {
    Setting s{Setting::SHORTHAND, name};
    s.provider = provider;
    s.key = key;
    return s;
}

const std::vector<Setting> &settings() {
    static const std::vector<Setting> all = [] {
        Setting redis{Setting::REDIS, "redis"};
        redis.text = &Config::redis;
        redis.restart_only = true;
        Setting bytes{Setting::SIZE, "max_in_flight_bytes"};
        bytes.size = &Config::max_in_flight_bytes;
        bytes.min = 1LL << 20;
        bytes.max = 64LL << 30;
        bytes.unit = "1m..64g (bytes, or with k, m or g)";
        return std::vector<Setting>{
            redis,
            text("stream", &Config::stream, true),
            text("group", &Config::group, true),
            text("consumer", &Config::consumer, true),
            text("mongodb", &Config::mongodb, true),
            text("keyring", &Config::keyring),
            text("message_id_domain", &Config::message_id_domain),
            text("admin_listen", &Config::admin_listen, true),
            text("scheduled", &Config::scheduled, true),
            text("dead_letters", &Config::dead_letters, true),
            Setting{Setting::ROUTE, "providers"},
            number("connections_per_host", &Config::connections_per_host, 1, 1000, "", true),
            number("breaker_window", &Config::breaker_window, 1, 10000),
            number("breaker_min_requests", &Config::breaker_min_requests, 1, 10000),
            number("breaker_threshold", &Config::breaker_threshold, 1, 100, "(percent)"),
            number("breaker_cooldown", &Config::breaker_cooldown, 1, 3600, "seconds"),
            number("batch", &Config::batch, 1, 10000),
            // the sweep's timer and the keep-claimed and reap timers follow these
            number("retry_interval", &Config::retry_interval, 1, 3600, "seconds", true),
            number("claim_idle", &Config::claim_idle, 1, 86400, "seconds", true),
            number("max_in_flight", &Config::max_in_flight, 1, 100000),
            bytes,
            number("send_timeout", &Config::send_timeout, 1, 600, "seconds"),
            number("retry_base", &Config::retry_base, 1, 86400, "seconds"),
            number("retry_max_delay", &Config::retry_max_delay, 1, 86400, "seconds"),
            number("max_attempts", &Config::max_attempts, 1, 1000),
            number("max_age", &Config::max_age, 1, 30 * 86400, "seconds"),
            number("shutdown_grace", &Config::shutdown_grace, 0, 600, "seconds"),
            number("dead_letters_max", &Config::dead_letters_max, 1, 100000000),
            number("webhook_timeout", &Config::webhook_timeout, 1, 60, "seconds"),
            // restart-only: connections opened while allowed would be reused after
            number("webhook_allow_private", &Config::webhook_allow_private, 0, 1, "(1: allow)", true),
            number("webhook_disable_after", &Config::webhook_disable_after, 1, 30 * 86400, "seconds"),
            text("webhook_retry_schedule", &Config::webhook_retry_schedule),
            number("webhook_queue_max", &Config::webhook_queue_max, 1, 100000000),
            // the sweeper's thread takes these at start
            number("retention_sweep_every", &Config::retention_sweep_every, 1, 86400, "seconds", true),
            number("retention_batch", &Config::retention_batch, 1, 100000, "(messages a sweep)", true),
            number("retention_clock_offset", &Config::retention_clock_offset, 0,
                   int64_t{mailapi::RETENTION_DAYS_MAX + 1} * 86400, "seconds", true),
            shorthand("smtp_url", "smtp", "url"),
            shorthand("smtp_username", "smtp", "username"),
            shorthand("smtp_password", "smtp", "password"),
            shorthand("smtp_password_file", "smtp", "password_file"),
            shorthand("smtp_starttls", "smtp", "starttls"),
            shorthand("smtp_rate", "smtp", "rate"),
            shorthand("sendgrid_url", "sendgrid", "url"),
            shorthand("sendgrid_api_key", "sendgrid", "api_key"),
            shorthand("sendgrid_api_key_file", "sendgrid", "api_key_file"),
            shorthand("sendgrid_rate", "sendgrid", "rate"),
            shorthand("http_url", "http", "url"),
            shorthand("http_token", "http", "token"),
            shorthand("http_token_file", "http", "token_file"),
            shorthand("http_rate", "http", "rate"),
        };
    }();
    return all;
}

const Setting *setting(const std::string &name) {
    for (const Setting &s : settings()) {
        if (name == s.name) return &s;
    }
    return nullptr;
}

std::string bounds_error(const Setting &s) {
    if (s.kind == Setting::SIZE) return std::string(s.name) + " must be " + s.unit;
    return std::string(s.name) + " must be " + std::to_string(s.min) + ".." + std::to_string(s.max) +
           (*s.unit ? std::string(" ") + s.unit : "");
}

struct Loader {
    Config &c;
    // The shorthands' providers (smtp_url, sendgrid_*, http_*), used when a
    // route names smtp, sendgrid or http and no provider line defines it.
    std::map<std::string, ProviderSpec> implicit;
    std::map<std::string, ProviderSpec> defined;

    explicit Loader(Config &cfg) : c(cfg) {
        for (const char *type : {"smtp", "sendgrid", "http"}) implicit[type] = ProviderSpec{type, type, {}};
    }

    std::string shorthand(const std::string &type, const std::string &key, const std::string &v) {
        return provider_option(implicit[type], key, v);
    }

    // Applies one "name value" setting; returns an error text, empty on success.
    std::string apply(const std::string &name, const std::string &v) {
        const Setting *st = setting(name);
        if (st == nullptr) return "unknown setting \"" + name + "\"";
        switch (st->kind) {
        case Setting::TEXT:
            if (v.empty()) return name + " must not be empty";
            c.*st->text = v;
            return "";
        case Setting::INT: {
            int n = 0;
            if (!set_int(v, static_cast<int>(st->min), static_cast<int>(st->max), n)) return bounds_error(*st);
            c.*st->number = n;
            return "";
        }
        case Setting::SIZE:
            return set_size(v, static_cast<size_t>(st->min), static_cast<size_t>(st->max), c.*st->size)
                       ? ""
                       : bounds_error(*st);
        case Setting::REDIS: {
            mailapi::RedisAddress addr;
            std::string e;
            if (!mailapi::redis_address_parse(v, addr, e)) return name + ": " + e + " (host:port or unix:/path)";
            c.*st->text = v;
            return "";
        }
        case Setting::ROUTE: {
            std::string e = parse_route(v, c.routes["*"]);
            return e.empty() ? "" : name + ": " + e;
        }
        case Setting::SHORTHAND:
            return provider_option(implicit[st->provider], st->key, v);
        }
        return "";
    }

    // provider NAME TYPE key=value ...
    std::string provider_line(const std::vector<std::string> &f) {
        if (f.size() < 3) return "expected \"provider NAME TYPE key=value ...\"";
        if (!name_valid(f[1], 32)) return "provider name must be 1-32 of [A-Za-z0-9_-]";
        if (provider_type(f[2]) == nullptr) {
            return "provider " + f[1] + ": unknown type \"" + f[2] + "\" (smtp, sendgrid, mailgun, postmark, ses, http)";
        }
        if (defined.count(f[1])) return "provider " + f[1] + " is defined twice";
        ProviderSpec spec{f[1], f[2], {}};
        for (size_t i = 3; i < f.size(); i++) {
            size_t eq = f[i].find('=');
            if (eq == std::string::npos || eq == 0) {
                // not echoed: a misplaced secret would land in the log
                return "provider " + f[1] + ": field " + std::to_string(i + 1) + " is not key=value";
            }
            std::string e = provider_option(spec, f[i].substr(0, eq), f[i].substr(eq + 1));
            if (!e.empty()) return e;
        }
        std::string e = provider_complete(spec);
        if (!e.empty()) return e;
        defined[spec.name] = std::move(spec);
        return "";
    }

    // route TENANT|* STEPS
    std::string route_line(const std::vector<std::string> &f) {
        if (f.size() < 3) return "expected \"route TENANT|* PROVIDER[:WEIGHT][|...][,...]\"";
        if (f[1] != "*" && !name_valid(f[1], 64)) return "route: tenant must be * or 1-64 of [A-Za-z0-9_-]";
        std::string steps;
        for (size_t i = 2; i < f.size(); i++) steps += f[i];
        std::string e = parse_route(steps, c.routes[f[1]]);
        return e.empty() ? "" : "route " + f[1] + ": " + e;
    }

    // dkim DOMAIN SELECTOR key_file=PATH
    std::string dkim_line(const std::vector<std::string> &f) {
        if (f.size() != 4 || f[3].rfind("key_file=", 0) != 0 || f[3].size() == 9) {
            return "expected \"dkim DOMAIN SELECTOR key_file=PATH\"";
        }
        DkimSpec d;
        if (!mailapi::domain_to_ascii(f[1], d.domain) || !mailapi::address_valid("postmaster@" + d.domain) ||
            d.domain.front() == '[') {
            return "dkim: \"" + f[1].substr(0, 64) + "\" is not a domain";
        }
        d.selector = f[2];
        bool selector_ok = !d.selector.empty() && d.selector.size() <= 63 &&
                           std::all_of(d.selector.begin(), d.selector.end(), [](char ch) {
                               return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '.';
                           });
        if (!selector_ok) return "dkim " + d.domain + ": the selector must be 1-63 of [A-Za-z0-9.-]";
        for (const DkimSpec &o : c.dkim_specs) {
            if (o.domain == d.domain && o.selector == d.selector) return "dkim " + d.domain + " " + d.selector + " is given twice";
        }
        d.key_file = f[3].substr(9);
        c.dkim_specs.push_back(std::move(d));
        return "";
    }

    std::string line(const std::vector<std::string> &f) {
        if (f[0] == "provider") return provider_line(f);
        if (f[0] == "route") return route_line(f);
        if (f[0] == "dkim") return dkim_line(f);
        return f.size() == 2 ? apply(f[0], f[1]) : "expected \"name value\"";
    }

    // Every provider a route names, defined or a shorthand's.
    std::string resolve() {
        if (c.routes.empty()) parse_route("smtp", c.routes["*"]);
        if (!c.routes.count("*")) return "no route for the other tenants: add \"route * PROVIDERS\"";
        std::set<std::string> used;
        for (const auto &r : c.routes) {
            for (const RouteStep &step : r.second) used.insert(step.names.begin(), step.names.end());
        }
        c.provider_specs.clear();
        for (const std::string &name : used) {
            auto it = defined.find(name);
            if (it != defined.end()) {
                c.provider_specs.push_back(it->second);
                continue;
            }
            auto imp = implicit.find(name);
            if (imp == implicit.end()) return "a route names provider \"" + name + "\", which no provider line defines";
            std::string e = provider_complete(imp->second);
            if (!e.empty()) {
                return e + (name == "smtp" ? "" : ": set " + name + (name == "http" ? "_url" : "_api_key_file"));
            }
            c.provider_specs.push_back(imp->second);
        }
        return "";
    }
};

}  // namespace

bool config_load(const std::string &path, Config &cfg, std::string &err) {
    Config c;
    Loader loader(c);
    if (!path.empty()) {
        std::ifstream f(path);
        if (!f) {
            err = "cannot open " + path;
            return false;
        }
        std::stringstream text;
        text << f.rdbuf();
        bool ok = mailapi::for_each_line(text.str(), [&](int lineno, const std::vector<std::string> &fields) {
            std::string e = loader.line(fields);
            if (!e.empty()) err = path + ":" + std::to_string(lineno) + ": " + e;
            return e.empty();
        });
        if (!ok) return false;
    }
    for (const Setting &st : settings()) {
        const char *name = st.name;
        std::string var = "DELIVERYD_";
        for (const char *p = name; *p; p++) var.push_back(static_cast<char>(std::toupper(*p)));
        if (const char *v = std::getenv(var.c_str())) {
            std::string e = loader.apply(name, v);
            if (!e.empty()) {
                err = var + ": " + e;
                return false;
            }
        }
    }
    err = loader.resolve();
    if (!err.empty()) return false;
    if (!c.dkim_specs.empty() && !(c.dkim = DkimSigner::load(c.dkim_specs, err))) return false;
    {
        std::stringstream list(c.webhook_retry_schedule);
        std::string item;
        while (std::getline(list, item, ',')) {
            int n = 0;
            if (!set_int(item, 1, 7 * 86400, n) || c.webhook_retries.size() >= 20) {
                err = "webhook_retry_schedule: 1-20 comma-separated delays of 1..604800 seconds (e.g. 5,300,1800)";
                return false;
            }
            c.webhook_retries.push_back(n);
        }
        if (c.webhook_retries.empty()) {
            err = "webhook_retry_schedule: at least one delay";
            return false;
        }
    }
    for (const ProviderSpec &p : c.provider_specs) {
        SmtpSettings smtp;
        if (p.type == "smtp" && !smtp_url_parse(p.get("url"), smtp, err)) {
            err = "provider " + p.name + ": " + err;
            return false;
        }
    }
    if (c.claim_idle <= c.send_timeout) {
        // or a live instance's slow send would be taken over and sent twice
        err = "claim_idle (" + std::to_string(c.claim_idle) + " s) must be longer than send_timeout (" +
              std::to_string(c.send_timeout) + " s)";
        return false;
    }
    if (c.consumer.empty()) {
        char host[256] = "deliveryd";
        gethostname(host, sizeof host - 1);
        c.consumer = std::string(host) + "-" + std::to_string(getpid());
    }
    cfg = std::move(c);
    return true;
}

std::string config_restart_needed(const Config &a, const Config &b) {
    std::string out;
    for (const Setting &st : settings()) {
        if (!st.restart_only || !std::strcmp(st.name, "consumer")) continue;  // consumer: kept by the caller
        bool same = st.kind == Setting::INT    ? a.*st.number == b.*st.number
                    : st.kind == Setting::SIZE ? a.*st.size == b.*st.size
                                               : a.*st.text == b.*st.text;
        if (!same) out += (out.empty() ? "" : ", ") + std::string(st.name);
    }
    return out;
}

namespace {

// "mongodb://user:secret@host/db" -> "mongodb://user:***@host/db"
std::string without_password(const std::string &v) {
    size_t scheme = v.find("://"), at = v.find('@');
    if (scheme == std::string::npos || at == std::string::npos || at < scheme) return v;
    size_t colon = v.find(':', scheme + 3);
    if (colon == std::string::npos || colon > at) return v;
    return v.substr(0, colon + 1) + "***" + v.substr(at);
}

}  // namespace

std::vector<std::pair<std::string, std::string>> config_settings(const Config &c) {
    std::vector<std::pair<std::string, std::string>> out;
    for (const Setting &st : settings()) {
        switch (st.kind) {
        case Setting::TEXT:
        case Setting::REDIS:
            out.emplace_back(st.name, without_password(c.*st.text));
            break;
        case Setting::INT:
            out.emplace_back(st.name, std::to_string(c.*st.number));
            break;
        case Setting::SIZE:
            out.emplace_back(st.name, std::to_string(c.*st.size));
            break;
        default:  // routes and providers are listed on their own, without secrets
            break;
        }
    }
    return out;
}

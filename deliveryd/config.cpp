#include "config.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "lines.h"

namespace {

bool set_int(const std::string &v, int min, int max, int &out) {
    char *end = nullptr;
    long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < min || n > max) return false;
    out = static_cast<int>(n);
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
    {"sendgrid", {"api_key"}, {{"url", "https://api.sendgrid.com"}}, {}},
    {"mailgun", {"domain", "api_key"}, {{"url", "https://api.mailgun.net"}}, {}},
    {"postmark", {"server_token"}, {{"url", "https://api.postmarkapp.com"}, {"message_stream", "outbound"}}, {}},
    {"ses", {"region", "access_key_id", "secret_access_key"}, {}, {"url", "session_token", "configuration_set"}},
    {"http", {"url"}, {}, {"token"}},
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
    if (key == "starttls" && v != "yes" && v != "no") return "provider " + spec.name + ": starttls is yes or no";
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
        if (name == "redis") c.redis = v;
        else if (name == "stream") c.stream = v;
        else if (name == "group") c.group = v;
        else if (name == "consumer") c.consumer = v;
        else if (name == "mongodb") c.mongodb = v;
        else if (name == "keyring") c.keyring = v;
        else if (name == "smtp_url") return shorthand("smtp", "url", v);
        else if (name == "smtp_username") return shorthand("smtp", "username", v);
        else if (name == "smtp_password") return shorthand("smtp", "password", v);
        else if (name == "smtp_password_file") return shorthand("smtp", "password_file", v);
        else if (name == "smtp_starttls") return shorthand("smtp", "starttls", v);
        else if (name == "sendgrid_url") return shorthand("sendgrid", "url", v);
        else if (name == "sendgrid_api_key") return shorthand("sendgrid", "api_key", v);
        else if (name == "sendgrid_api_key_file") return shorthand("sendgrid", "api_key_file", v);
        else if (name == "http_url") return shorthand("http", "url", v);
        else if (name == "http_token") return shorthand("http", "token", v);
        else if (name == "http_token_file") return shorthand("http", "token_file", v);
        else if (name == "smtp_rate") return shorthand("smtp", "rate", v);
        else if (name == "sendgrid_rate") return shorthand("sendgrid", "rate", v);
        else if (name == "http_rate") return shorthand("http", "rate", v);
        else if (name == "message_id_domain") c.message_id_domain = v;
        else if (name == "providers") {
            std::string e = parse_route(v, c.routes["*"]);
            if (!e.empty()) return "providers: " + e;
        } else if (name == "batch") {
            if (!set_int(v, 1, 10000, c.batch)) return "batch must be 1..10000";
        } else if (name == "retry_interval") {
            if (!set_int(v, 1, 3600, c.retry_interval)) return "retry_interval must be 1..3600 seconds";
        } else if (name == "claim_idle") {
            if (!set_int(v, 1, 86400, c.claim_idle)) return "claim_idle must be 1..86400 seconds";
        } else if (name == "admin_listen") {
            c.admin_listen = v;
        } else if (name == "breaker_window") {
            if (!set_int(v, 1, 10000, c.breaker_window)) return "breaker_window must be 1..10000";
        } else if (name == "breaker_min_requests") {
            if (!set_int(v, 1, 10000, c.breaker_min_requests)) return "breaker_min_requests must be 1..10000";
        } else if (name == "breaker_threshold") {
            if (!set_int(v, 1, 100, c.breaker_threshold)) return "breaker_threshold must be 1..100 (percent)";
        } else if (name == "breaker_cooldown") {
            if (!set_int(v, 1, 3600, c.breaker_cooldown)) return "breaker_cooldown must be 1..3600 seconds";
        } else if (name == "connections_per_host") {
            if (!set_int(v, 1, 1000, c.connections_per_host)) return "connections_per_host must be 1..1000";
        } else if (name == "max_in_flight") {
            if (!set_int(v, 1, 100000, c.max_in_flight)) return "max_in_flight must be 1..100000";
        } else if (name == "send_timeout") {
            if (!set_int(v, 1, 600, c.send_timeout)) return "send_timeout must be 1..600 seconds";
        } else if (name == "retry_base") {
            if (!set_int(v, 1, 86400, c.retry_base)) return "retry_base must be 1..86400 seconds";
        } else if (name == "retry_max_delay") {
            if (!set_int(v, 1, 86400, c.retry_max_delay)) return "retry_max_delay must be 1..86400 seconds";
        } else if (name == "max_attempts") {
            if (!set_int(v, 1, 1000, c.max_attempts)) return "max_attempts must be 1..1000";
        } else if (name == "max_age") {
            if (!set_int(v, 1, 30 * 86400, c.max_age)) return "max_age must be 1..2592000 seconds";
        } else if (name == "shutdown_grace") {
            if (!set_int(v, 0, 600, c.shutdown_grace)) return "shutdown_grace must be 0..600 seconds";
        } else if (name == "scheduled") {
            c.scheduled = v;
        } else if (name == "dead_letters") {
            c.dead_letters = v;
        } else {
            return "unknown setting \"" + name + "\"";
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

    std::string line(const std::vector<std::string> &f) {
        if (f[0] == "provider") return provider_line(f);
        if (f[0] == "route") return route_line(f);
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

const char *const ENV_NAMES[] = {"redis", "stream", "group", "consumer", "mongodb", "keyring", "smtp_url",
                                 "smtp_username", "smtp_password", "smtp_password_file", "smtp_starttls",
                                 "connections_per_host", "message_id_domain", "providers", "sendgrid_url",
                                 "sendgrid_api_key", "sendgrid_api_key_file", "http_url", "http_token",
                                 "http_token_file", "smtp_rate", "sendgrid_rate", "http_rate", "admin_listen",
                                 "breaker_window", "breaker_min_requests", "breaker_threshold", "breaker_cooldown",
                                 "batch", "retry_interval", "claim_idle", "max_in_flight", "send_timeout",
                                 "retry_base", "retry_max_delay", "max_attempts", "max_age", "shutdown_grace",
                                 "scheduled", "dead_letters"};

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
    for (const char *name : ENV_NAMES) {
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
    auto check = [&](const char *name, bool same) {
        if (!same) out += (out.empty() ? "" : ", ") + std::string(name);
    };
    check("redis", a.redis == b.redis);
    check("stream", a.stream == b.stream);
    check("group", a.group == b.group);
    check("mongodb", a.mongodb == b.mongodb);
    check("admin_listen", a.admin_listen == b.admin_listen);
    check("connections_per_host", a.connections_per_host == b.connections_per_host);
    check("retry_interval", a.retry_interval == b.retry_interval);
    check("scheduled", a.scheduled == b.scheduled);
    check("dead_letters", a.dead_letters == b.dead_letters);
    return out;
}

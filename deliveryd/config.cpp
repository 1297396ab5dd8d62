#include "config.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>
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

// Applies one setting; returns an error text, empty on success.
std::string apply(Config &c, const std::string &name, const std::string &v) {
    if (name == "redis") c.redis = v;
    else if (name == "stream") c.stream = v;
    else if (name == "group") c.group = v;
    else if (name == "consumer") c.consumer = v;
    else if (name == "mongodb") c.mongodb = v;
    else if (name == "keyring") c.keyring = v;
    else if (name == "smtp_url") c.smtp_url = v;
    else if (name == "smtp_username") c.smtp_username = v;
    else if (name == "smtp_password") c.smtp_password = v;
    else if (name == "smtp_password_file") {
        if (!read_secret_file(v, c.smtp_password)) return "cannot read " + v;
    } else if (name == "smtp_starttls") {
        if (v != "yes" && v != "no") return "smtp_starttls is yes or no";
        c.smtp_starttls = v == "yes";
    } else if (name == "message_id_domain") {
        c.message_id_domain = v;
    } else if (name == "providers") {
        c.providers.clear();
        size_t start = 0;
        while (start <= v.size()) {
            size_t comma = v.find(',', start);
            std::string p = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
            if (p != "smtp" && p != "sendgrid" && p != "http") return "providers: unknown provider \"" + p + "\"";
            c.providers.push_back(p);
            if (comma == std::string::npos) break;
            start = comma + 1;
        }
    } else if (name == "sendgrid_url") {
        c.sendgrid_url = v;
    } else if (name == "sendgrid_api_key") {
        c.sendgrid_api_key = v;
    } else if (name == "sendgrid_api_key_file") {
        if (!read_secret_file(v, c.sendgrid_api_key)) return "cannot read " + v;
    } else if (name == "http_url") {
        c.http_url = v;
    } else if (name == "http_token") {
        c.http_token = v;
    } else if (name == "http_token_file") {
        if (!read_secret_file(v, c.http_token)) return "cannot read " + v;
    } else if (name == "batch") {
        if (!set_int(v, 1, 10000, c.batch)) return "batch must be 1..10000";
    } else if (name == "retry_interval") {
        if (!set_int(v, 1, 3600, c.retry_interval)) return "retry_interval must be 1..3600 seconds";
    } else if (name == "claim_idle") {
        if (!set_int(v, 1, 86400, c.claim_idle)) return "claim_idle must be 1..86400 seconds";
    } else if (name == "smtp_rate" || name == "sendgrid_rate" || name == "http_rate") {
        int &r = name == "smtp_rate" ? c.smtp_rate : name == "sendgrid_rate" ? c.sendgrid_rate : c.http_rate;
        if (!set_int(v, 0, 1000000, r)) return name + " must be 0 (unlimited)..1000000 per second";
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

const char *const NAMES[] = {"redis", "stream", "group", "consumer", "mongodb", "keyring", "smtp_url",
                             "smtp_username", "smtp_password", "smtp_password_file", "smtp_starttls", "connections_per_host",
                             "message_id_domain", "providers", "sendgrid_url", "sendgrid_api_key",
                             "sendgrid_api_key_file", "http_url", "http_token", "http_token_file", "smtp_rate", "sendgrid_rate", "http_rate", "admin_listen", "breaker_window", "breaker_min_requests",
                             "breaker_threshold", "breaker_cooldown", "batch", "retry_interval", "claim_idle", "max_in_flight",
                             "send_timeout", "retry_base", "retry_max_delay", "max_attempts", "max_age",
                             "shutdown_grace", "scheduled", "dead_letters"};

}  // namespace

bool config_load(const std::string &path, Config &cfg, std::string &err) {
    Config c;
    if (!path.empty()) {
        std::ifstream f(path);
        if (!f) {
            err = "cannot open " + path;
            return false;
        }
        std::stringstream text;
        text << f.rdbuf();
        bool ok = mailapi::for_each_line(text.str(), [&](int lineno, const std::vector<std::string> &fields) {
            std::string e = fields.size() == 2 ? apply(c, fields[0], fields[1]) : "expected \"name value\"";
            if (!e.empty()) err = path + ":" + std::to_string(lineno) + ": " + e;
            return e.empty();
        });
        if (!ok) return false;
    }
    for (const char *name : NAMES) {
        std::string var = "DELIVERYD_";
        for (const char *p = name; *p; p++) var.push_back(static_cast<char>(std::toupper(*p)));
        if (const char *v = std::getenv(var.c_str())) {
            std::string e = apply(c, name, v);
            if (!e.empty()) {
                err = var + ": " + e;
                return false;
            }
        }
    }
    for (const std::string &p : c.providers) {
        if (p == "sendgrid" && c.sendgrid_api_key.empty()) {
            err = "providers has sendgrid: set sendgrid_api_key_file";
            return false;
        }
        if (p == "http" && c.http_url.empty()) {
            err = "providers has http: set http_url";
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

#include "event_sources.h"

#include <fstream>

#include "contract.h"
#include "lines.h"
#include "token.h"

namespace mailapi {

namespace {

struct Type {
    const char *name;
    std::vector<const char *> required, optional;
};

const Type TYPES[] = {
    {"sendgrid", {"public_key"}, {}},
    {"mailgun", {"signing_key"}, {}},
    {"postmark", {"username", "password"}, {}},
    {"ses", {"topic_arn"}, {"cert_host", "cacert"}},
};

std::string *field(EventSource &s, const std::string &key) {
    if (key == "public_key") return &s.public_key;
    if (key == "signing_key") return &s.signing_key;
    if (key == "username") return &s.username;
    if (key == "password") return &s.password;
    if (key == "topic_arn") return &s.topic_arn;
    if (key == "cert_host") return &s.cert_host;
    if (key == "cacert") return &s.cacert;
    return nullptr;
}

}  // namespace

bool event_sources_parse(std::string_view text, std::vector<EventSource> &out, std::string &err) {
    std::vector<EventSource> sources;
    bool ok = for_each_line(text, [&](int lineno, const std::vector<std::string> &f) {
        std::string where = "line " + std::to_string(lineno) + ": ";
        if (f.size() < 2) {
            err = where + "expected \"NAME TYPE key=value ...\"";
            return false;
        }
        const Type *type = nullptr;
        for (const Type &t : TYPES) {
            if (f[1] == t.name) type = &t;
        }
        if (!key_id_valid(f[0])) {
            err = where + "the name must be 1-64 of [A-Za-z0-9_-]";
            return false;
        }
        if (type == nullptr) {
            err = where + "unknown type (sendgrid, mailgun, postmark, ses)";
            return false;
        }
        if (f[0] == contract::LINKS_SOURCE) {
            err = where + "\"" + f[0] + "\" is the name of the links' own events: choose another";
            return false;
        }
        if (event_source_find(sources, f[0])) {
            err = where + "\"" + f[0] + "\" is given twice";
            return false;
        }
        EventSource s;
        s.name = f[0];
        s.type = f[1];
        for (size_t i = 2; i < f.size(); i++) {
            size_t eq = f[i].find('=');
            std::string key = f[i].substr(0, eq == std::string::npos ? 0 : eq);
            bool from_file = key.size() > 5 && key.compare(key.size() - 5, 5, "_file") == 0;
            if (from_file) key.resize(key.size() - 5);
            bool allowed = false;
            for (const auto *list : {&type->required, &type->optional}) {
                for (const char *k : *list) allowed |= key == k;
            }
            if (eq == std::string::npos || !allowed) {
                // by position, not echoed: a misplaced secret would land in the log
                err = where + "field " + std::to_string(i + 1) + " is not one of " + s.type + "'s settings";
                return false;
            }
            std::string value = f[i].substr(eq + 1);
            if (from_file) {
                std::ifstream file(value);
                std::string line;
                if (!file || !std::getline(file, line)) {
                    err = where + "cannot read " + key + "_file " + value;
                    return false;
                }
                value = line;
            }
            *field(s, key) = value;
        }
        for (const char *k : type->required) {
            if (field(s, k)->empty()) {
                err = where + s.type + " needs " + k + " (or " + k + "_file)";
                return false;
            }
        }
        sources.push_back(std::move(s));
        return true;
    });
    if (ok) out = std::move(sources);
    return ok;
}

const EventSource *event_source_find(const std::vector<EventSource> &sources, std::string_view name) {
    for (const EventSource &s : sources) {
        if (s.name == name) return &s;
    }
    return nullptr;
}

}  // namespace mailapi

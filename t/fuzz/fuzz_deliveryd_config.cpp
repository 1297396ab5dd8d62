// deliveryd's configuration file: any text through config_load (written to a
// temp file, read as deliveryd reads it), then what --check-config prints
// (config_settings). Lines "#env NAME VALUE" (comments to the parser) set
// DELIVERYD_<NAME> for that load, as the environment overrides settings.
// No text crashes it; a refusal says why; an accepted configuration is
// consistent (a default route, every route's providers defined, claim_idle
// above send_timeout), needs no restart against itself, and the settings
// --check-config lists read back to the same settings.
#include <unistd.h>

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config.h"

extern char **environ;

namespace {

std::string path;

void remove_file() { unlink(path.c_str()); }

bool write_file(const std::string &text) {
    FILE *f = std::fopen(path.c_str(), "wb");
    if (f == nullptr) return false;
    bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    return std::fclose(f) == 0 && ok;
}

// "#env NAME VALUE" lines: DELIVERYD_<NAME>=VALUE (VALUE may hold spaces).
std::vector<std::string> set_env(const std::string &text) {
    std::vector<std::string> vars;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.compare(0, 5, "#env ") != 0) continue;
        size_t sp = line.find(' ', 5);
        if (sp == std::string::npos || sp == 5) continue;
        std::string var = "DELIVERYD_";
        for (size_t i = 5; i < sp; i++) var.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(line[i]))));
        if (var.find('=') != std::string::npos || var.find('\0') != std::string::npos) continue;
        std::string value = line.substr(sp + 1);
        if (value.find('\0') != std::string::npos) continue;
        setenv(var.c_str(), value.c_str(), 1);
        vars.push_back(var);
    }
    return vars;
}

using Settings = std::vector<std::pair<std::string, std::string>>;

void check(const Config &c, bool from_file_only) {
    if (!c.routes.count("*") || c.provider_specs.empty() || c.claim_idle <= c.send_timeout || c.consumer.empty()) {
        abort();
    }
    std::set<std::string> defined;
    for (const ProviderSpec &p : c.provider_specs) {
        if (!defined.insert(p.name).second) abort();  // each once
    }
    for (const auto &r : c.routes) {
        if (r.second.empty()) abort();
        for (const RouteStep &step : r.second) {
            if (step.names.empty() || step.names.size() != step.weights.size()) abort();
            for (size_t i = 0; i < step.names.size(); i++) {
                if (!defined.count(step.names[i]) || step.weights[i] < 1 || step.weights[i] > 1000) abort();
            }
        }
    }
    if (!config_restart_needed(c, c).empty()) abort();
    Settings listed = config_settings(c);
    if (listed.empty()) abort();
    if (!from_file_only) return;  // a variable's value may hold what a line cannot
    // What --check-config lists, written as a file, loads to the same list.
    std::string text;
    for (const auto &kv : listed) text += kv.first + " " + kv.second + "\n";
    Config again;
    std::string err;
    if (!write_file(text)) abort();
    if (!config_load(path, again, err)) {
        std::fprintf(stderr, "the listed settings do not load again: %s\n%s", err.c_str(), text.c_str());
        abort();
    }
    if (config_settings(again) != listed) {
        std::fprintf(stderr, "the listed settings load to others:\n%s", text.c_str());
        abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int *, char ***) {
    // only what the input sets
    std::vector<std::string> names;
    for (char **e = environ; *e; e++) {
        if (std::strncmp(*e, "DELIVERYD_", 10) == 0) names.emplace_back(*e, std::strcspn(*e, "="));
    }
    for (const std::string &n : names) unsetenv(n.c_str());
    char tmpl[] = "/tmp/fuzz_deliveryd_config.XXXXXX";
    int fd = mkstemp(tmpl);
    if (fd < 0) {
        std::perror("mkstemp");
        std::exit(1);
    }
    close(fd);
    path = tmpl;
    std::atexit(remove_file);
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string text(reinterpret_cast<const char *>(data), size);
    if (!write_file(text)) abort();
    std::vector<std::string> vars = set_env(text);
    Config c;
    std::string err;
    if (config_load(path, c, err)) {
        check(c, vars.empty());
    } else if (err.empty()) {
        abort();  // every refusal says why
    }
    for (const std::string &v : vars) unsetenv(v.c_str());
    return 0;
}

// mailapi-token: mint an API token offline from a key's secret.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>
#include <string>

#include "base64.h"
#include "token.h"

static int usage() {
    std::fprintf(stderr,
                 "usage: mailapi-token --key-id ID [--scopes send|read|send+read] [--ttl SECONDS]\n"
                 "                     [--secret-file FILE]\n"
                 "The secret (base64, as in the keys file) is read from FILE, or else from the\n"
                 "environment variable MAILAPI_SECRET; it is never taken on the command line.\n"
                 "Prints the token on stdout. Defaults: --scopes send, --ttl 3600.\n");
    return 2;
}

int main(int argc, char **argv) {
    std::string key_id, scopes = "send", secret_file;
    long ttl = 3600;
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        if (a == "-h" || a == "--help") return usage(), 0;
        if (i + 1 >= argc) return usage();
        std::string v = argv[++i];
        if (a == "--key-id") key_id = v;
        else if (a == "--scopes") scopes = v;
        else if (a == "--secret-file") secret_file = v;
        else if (a == "--ttl") ttl = std::strtol(v.c_str(), nullptr, 10);
        else return usage();
    }
    std::string secret_b64;
    if (!secret_file.empty()) {
        std::ifstream f(secret_file);
        if (!(f >> secret_b64)) {
            std::fprintf(stderr, "mailapi-token: cannot read a secret from %s\n", secret_file.c_str());
            return 1;
        }
    } else if (const char *env = std::getenv("MAILAPI_SECRET")) {
        secret_b64 = env;
    }
    unsigned sc = mailapi::scopes_parse(scopes);
    std::string secret;
    if (!mailapi::key_id_valid(key_id)) {
        std::fprintf(stderr, "mailapi-token: --key-id must be 1-64 of [A-Za-z0-9_-]\n");
        return 2;
    }
    if (!sc) {
        std::fprintf(stderr, "mailapi-token: --scopes must be send, read, webhooks, erase or several joined by + (send+read)\n");
        return 2;
    }
    if (ttl <= 0) {
        std::fprintf(stderr, "mailapi-token: --ttl must be a positive number of seconds\n");
        return 2;
    }
    if (secret_b64.empty() || !mailapi::base64_decode(secret_b64, secret)) {
        std::fprintf(stderr, "mailapi-token: set MAILAPI_SECRET or --secret-file to the key's base64 secret\n");
        return 2;
    }
    std::printf("%s\n", mailapi::token_mint(key_id, secret, std::time(nullptr) + ttl, sc).c_str());
    return 0;
}

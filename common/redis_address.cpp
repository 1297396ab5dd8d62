#include "redis_address.h"

namespace mailapi {

bool redis_address_parse(std::string_view v, RedisAddress &out, std::string &err) {
    RedisAddress a;
    if (v.substr(0, 5) == "unix:") {
        a.host.assign(v.substr(5));
        a.port = 0;
        if (a.host.empty()) {
            err = "no socket path after unix:";
            return false;
        }
        out = a;
        return true;
    }
    size_t colon = v.rfind(':');
    a.host.assign(v.substr(0, colon));
    if (colon != std::string_view::npos) {
        std::string_view p = v.substr(colon + 1);
        int port = 0;
        for (char c : p) {
            if (c < '0' || c > '9' || port > 65535) {
                port = -1;
                break;
            }
            port = port * 10 + (c - '0');
        }
        if (p.empty() || port < 1 || port > 65535) {
            err = "invalid port";
            return false;
        }
        a.port = port;
    }
    if (a.host.empty()) {
        err = "no host";
        return false;
    }
    out = a;
    return true;
}

}  // namespace mailapi

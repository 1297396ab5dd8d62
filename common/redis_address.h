// "host:port", "host" (port 6379) or "unix:/path", as every Redis setting is written.
#pragma once
#include <string>
#include <string_view>

namespace mailapi {

struct RedisAddress {
    std::string host;  // or the socket path
    int port = 6379;   // 0 for a unix socket
};

// False with `err` saying what is wrong.
bool redis_address_parse(std::string_view text, RedisAddress &out, std::string &err);

}  // namespace mailapi

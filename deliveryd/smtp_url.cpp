#include "smtp_url.h"

bool smtp_url_parse(const std::string &url, SmtpSettings &out, std::string &error) {
    std::string rest;
    if (url.rfind("smtp://", 0) == 0) {
        rest = url.substr(7);
        out.port = 25;
    } else if (url.rfind("smtps://", 0) == 0) {
        rest = url.substr(8);
        out.implicit_tls = true;
        out.port = 465;
    } else {
        error = "url must start with smtp:// or smtps://";
        return false;
    }
    size_t slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    out.helo = slash == std::string::npos ? "" : rest.substr(slash + 1);
    std::string port;
    if (!authority.empty() && authority[0] == '[') {
        size_t close = authority.find(']');
        if (close == std::string::npos) {
            error = "url: an IPv6 address needs its closing ]";
            return false;
        }
        out.host = authority.substr(1, close - 1);
        if (close + 1 < authority.size()) {
            if (authority[close + 1] != ':') {
                error = "url: expected :port after the IPv6 address";
                return false;
            }
            port = authority.substr(close + 2);
        }
    } else {
        size_t colon = authority.rfind(':');
        out.host = authority.substr(0, colon);
        if (colon != std::string::npos) port = authority.substr(colon + 1);
    }
    if (out.host.empty() || out.host.find_first_of("@ \t") != std::string::npos) {
        error = "url: no host (smtp://host:port/helo-name)";
        return false;
    }
    if (!port.empty()) {
        if (port.size() > 5 || port.find_first_not_of("0123456789") != std::string::npos || std::stoi(port) < 1 ||
            std::stoi(port) > 65535) {
            error = "url: the port must be 1..65535";
            return false;
        }
        out.port = std::stoi(port);
    }
    if (out.helo.find_first_of(" \t\r\n") != std::string::npos) {
        error = "url: the name after / (given in EHLO) has a space";
        return false;
    }
    return true;
}

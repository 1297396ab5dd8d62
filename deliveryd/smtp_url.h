// Where an SMTP provider's relay is and how to speak to it: its url
// (smtp[s]://host[:port][/helo-name]) and settings, checked when the
// configuration is read.
#pragma once
#include <string>

struct SmtpSettings {
    std::string host;
    int port = 25;
    bool implicit_tls = false;  // smtps://
    bool starttls = false;      // refuse to go on without STARTTLS
    std::string helo;           // the name we give in EHLO
    std::string username, password;
};

// The url's parts; false, with `error`, when it has none.
bool smtp_url_parse(const std::string &url, SmtpSettings &out, std::string &error);

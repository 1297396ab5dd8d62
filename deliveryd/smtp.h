// SMTP delivery through libcurl: MIME built with curl_mime, one connection
// kept open across messages.
#pragma once
#include <curl/curl.h>

#include <string>

#include "config.h"
#include "message.h"

enum class SendResult { sent, permanent, transient };

struct SendOutcome {
    SendResult result = SendResult::transient;
    int code = 0;        // last SMTP reply code, 0 when none
    std::string reason;  // short, never personal data
};

class SmtpProvider {
public:
    explicit SmtpProvider(const Config &cfg);
    ~SmtpProvider();
    SmtpProvider(const SmtpProvider &) = delete;
    SmtpProvider &operator=(const SmtpProvider &) = delete;

    SendOutcome send(const std::string &message_id, const mailapi::Message &msg);

private:
    const Config &cfg_;
    CURL *curl_;
};

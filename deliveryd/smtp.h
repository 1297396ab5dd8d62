// SMTP delivery through libcurl's multi interface: MIME built with curl_mime,
// connections reused from the multi handle's cache.
#pragma once
#include <curl/curl.h>

#include <functional>
#include <string>

#include "config.h"
#include "curl_multi.h"
#include "message.h"

enum class SendResult { sent, permanent, transient };

struct SendOutcome {
    SendResult result = SendResult::transient;
    int code = 0;        // last SMTP reply or HTTP status, 0 when none
    std::string reason;  // short, never personal data
};

class SmtpProvider {
public:
    SmtpProvider(const Config &cfg, CurlMulti &multi) : cfg_(cfg), multi_(multi) {}

    void send(const std::string &message_id, const mailapi::Message &msg, std::function<void(SendOutcome)> done);
    int in_flight() const { return in_flight_; }

private:
    const Config &cfg_;
    CurlMulti &multi_;
    int in_flight_ = 0;
};

// SMTP delivery through libcurl's multi interface: MIME built with curl_mime,
// connections reused from the multi handle's cache.
#pragma once
#include <curl/curl.h>

#include <functional>
#include <string>

#include "config.h"
#include "curl_multi.h"
#include "message.h"
#include "provider.h"

class SmtpProvider : public Provider {
public:
    SmtpProvider(const Config &cfg, CurlMulti &multi) : cfg_(cfg), multi_(multi) {}

    const std::string &name() const override { return name_; }
    void send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
              std::function<void(SendOutcome)> done) override;

private:
    const std::string name_ = "smtp";
    const Config &cfg_;
    CurlMulti &multi_;
};

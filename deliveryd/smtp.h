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
    SmtpProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
        : name_(spec.name), url_(spec.get("url")), username_(spec.get("username")), password_(spec.get("password")),
          starttls_(spec.get("starttls") == "yes"), cfg_(cfg), multi_(multi) {}

    const std::string &name() const override { return name_; }
    void send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
              std::function<void(SendOutcome)> done) override;

private:
    std::string name_, url_, username_, password_;
    bool starttls_;
    const Config &cfg_;  // updated in place on SIGHUP
    CurlMulti &multi_;
};

// Hosted providers' HTTP APIs through libcurl multi: each builds its
// documented request and reads its documented answer.
//   sendgrid  POST {url}/v3/mail/send, Bearer key, 202 on success
//   http      POST {url}, Bearer token, {"id","tenant","message"}, any 2xx
#pragma once
#include <string>

#include "config.h"
#include "curl_multi.h"
#include "provider.h"

class HttpProvider : public Provider {
public:
    enum class Kind { sendgrid, http };

    HttpProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);

    const std::string &name() const override { return name_; }
    void send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
              std::function<void(SendOutcome)> done) override;

private:
    std::string body(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg) const;

    Kind kind_;
    std::string name_, url_, secret_;
    const Config &cfg_;  // updated in place on SIGHUP
    CurlMulti &multi_;
};

// The outcome of an HTTP answer, by status: 2xx sent; 429, 5xx and our own
// credentials refused (401, 403) transient; any other 4xx permanent.
SendOutcome classify_http(int curl_code, long status);

// SMTP delivery through libcurl: MIME built with curl_mime, on a pool of
// threads (see blocking_pool.h for why), each reusing its connection.
#pragma once
#include <curl/curl.h>

#include <atomic>
#include <functional>
#include <string>

#include "blocking_pool.h"
#include "config.h"
#include "message.h"
#include "provider.h"

class SmtpProvider : public Provider {
public:
    // One thread (and connection) per send at once: the provider's concurrency.
    SmtpProvider(const ProviderSpec &spec, const Config &cfg, struct ev_loop *loop, int threads);

    const std::string &name() const override { return name_; }
    void send(const std::string &message_id, const std::string &tenant, const mailapi::Message &msg,
              std::function<void(SendOutcome)> done) override;

private:
    SendOutcome perform(CURL *easy, const std::atomic<bool> &stopping, const std::string &message_id_header,
                        long timeout_ms, const mailapi::Message &msg) const;

    std::string name_, url_, username_, password_;
    bool starttls_;
    std::string cacert_;  // CA bundle for the relay's certificate; default: the system's
    const Config &cfg_;  // updated in place on SIGHUP
    BlockingPool pool_;  // last: its threads stop before the rest goes
};

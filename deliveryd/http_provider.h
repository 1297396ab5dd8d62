// Hosted providers' HTTP APIs through libcurl multi. HttpApi does the
// transfer; each provider builds its documented request and reads its
// documented answer with the functions of provider_formats.h.
#pragma once
#include <ctime>
#include <functional>
#include <string>
#include <vector>

#include "config.h"
#include "curl_multi.h"
#include "provider.h"
#include "provider_formats.h"

struct HttpRequest {
    std::string url;
    std::vector<std::string> headers;  // "Name: value"
    std::string body;                  // JSON, or
    std::vector<FormField> form;       // multipart/form-data when not empty
    std::string username, password;    // HTTP basic auth when username is set
};

struct HttpAnswer {
    int curl_code = 0;
    long status = 0;
    std::string body;        // the first 64 KiB: enough to read an error
    std::string error_type;  // x-amzn-ErrorType
    int retry_after = 0;     // seconds, from Retry-After
};

class HttpApi : public Provider {
public:
    HttpApi(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi)
        : name_(spec.name), url_(spec.get("url")), cacert_(spec.get("cacert")),
          smtputf8_(spec.get("smtputf8") == "yes"), cfg_(cfg), multi_(multi) {}
    const std::string &name() const override { return name_; }

protected:
    // The message this API is given: the request's, or a copy holding only
    // the recipients still to reach (in `subset`). Null when this provider
    // cannot carry it, after `done` was told so.
    const mailapi::Message *message_for(const SendRequest &req, mailapi::Message &subset,
                                        std::function<void(SendOutcome)> &done) const;
    // Sends `req`; `read` turns the answer into the outcome given to `done`.
    void perform(HttpRequest req, std::function<SendOutcome(const HttpAnswer &)> read,
                 std::function<void(SendOutcome)> done);

    std::string name_, url_, cacert_;
    bool smtputf8_;      // the API takes addresses with UTF-8 local parts (smtputf8=yes)
    const Config &cfg_;  // updated in place on SIGHUP

private:
    CurlMulti &multi_;
};

// POST {url}/v3/mail/send, Bearer key; our id in custom_args.
class SendgridProvider : public HttpApi {
public:
    SendgridProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    std::string auth_;
};

// POST {url}/v3/{domain}/messages, basic api:key, form; our id in v:mailapi_id.
class MailgunProvider : public HttpApi {
public:
    MailgunProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    std::string api_key_;
};

// POST {url}/email, X-Postmark-Server-Token; our id in Metadata.
class PostmarkProvider : public HttpApi {
public:
    PostmarkProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    std::string token_header_, message_stream_;
};

// Amazon SES v2 SendEmail, signed with SigV4; our id in an EmailTag.
class SesProvider : public HttpApi {
public:
    SesProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    SigV4Credentials credentials_;
    std::string configuration_set_;
};

// The generic hook: POST {url} {"id","tenant","message"}, Bearer token, 2xx.
class HookProvider : public HttpApi {
public:
    HookProvider(const ProviderSpec &spec, const Config &cfg, CurlMulti &multi);
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    std::string auth_;
};

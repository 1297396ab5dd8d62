// SMTP delivery to a relay, on the event loop: the message composed by
// common/mime (folded headers, CRLF bodies, 7-bit clean), DKIM-signed when
// its sending domain has keys, and sent over SmtpConnection, which reuses its
// connections and tells each recipient's outcome apart.
#pragma once
#include <ev.h>
#include <openssl/ssl.h>

#include <functional>
#include <list>
#include <memory>
#include <string>

#include "config.h"
#include "dkim.h"
#include "message.h"
#include "provider.h"
#include "resolver.h"
#include "smtp_connection.h"

class SmtpProvider : public Provider {
public:
    // The running configuration's DKIM keys (cfg.dkim) sign the messages of
    // their domains; a reload that changes them applies to the next message.
    SmtpProvider(const ProviderSpec &spec, const Config &cfg, struct ev_loop *loop);
    ~SmtpProvider() override;  // connections close; sends under way are not answered

    const std::string &name() const override { return name_; }
    void send(const SendRequest &req, std::function<void(SendOutcome)> done) override;

private:
    struct Send;
    using SendPtr = std::shared_ptr<Send>;

    void connect(SendPtr s);
    void transact(SendPtr s, std::unique_ptr<SmtpConnection> c, bool reused);
    void finish(SendPtr s, std::unique_ptr<SmtpConnection> c, SendOutcome out);
    double left(const SendPtr &s) const;
    static void idle_cb(struct ev_loop *, ev_timer *w, int) noexcept;

    std::string name_;
    SmtpSettings settings_;
    std::string settings_error_;
    const Config &cfg_;  // updated in place on SIGHUP
    struct ev_loop *loop_;
    SSL_CTX *tls_ = nullptr;
    std::string tls_error_;
    Resolver resolver_;
    std::list<std::unique_ptr<SmtpConnection>> idle_;  // ready for the next message, newest first
    std::list<SendPtr> active_;                        // under way: ended with this provider
    ev_timer idle_timer_;
};

// The relay's reply as a reason: "550 5.1.1 ..." without addresses, on one
// line, valid UTF-8.
std::string smtp_reason(const SmtpReply &reply);

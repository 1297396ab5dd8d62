#include "smtp.h"

#include <openssl/err.h>

#include <algorithm>
#include <ctime>

#include "idna.h"
#include "mime.h"
#include "provider_formats.h"

namespace {

constexpr double IDLE_CLOSE = 30;  // seconds a connection may wait for a next message (relays drop at 300)

// An address for the envelope: the domain as A-labels (the local part as it is).
std::string envelope_address(const std::string &email) {
    std::string out;
    return mailapi::address_to_ascii_domain(email, out) ? out : email;
}

bool refuses_us(int code) { return code == 530 || code == 534 || code == 535 || code == 538; }

SendOutcome whole(SendResult result, const SmtpReply &reply, bool fault) {
    SendOutcome out;
    out.result = result;
    out.code = reply.code;
    if (result != SendResult::sent) out.reason = smtp_reason(reply);
    out.provider_fault = fault;
    return out;
}

// The relay refusing a command of ours that is not about one recipient
// (greeting, EHLO, AUTH, MAIL FROM): our credentials, its policy, the sender.
SendOutcome refusal(const SmtpReply &r) {
    if (r.code == 0 || r.code == 421 || refuses_us(r.code)) return whole(SendResult::transient, r, true);
    if (r.code / 100 == 5 && r.enhanced.rfind("5.7.", 0) == 0) {
        SendOutcome out = whole(SendResult::transient, r, false);
        out.policy = true;  // another route may take it; waiting will not
        return out;
    }
    if (r.code / 100 == 5) return whole(SendResult::permanent, r, false);
    return whole(SendResult::transient, r, false);  // 4xx: later
}

SendResult result_of(const SmtpReply &r) {
    return r.code / 100 == 2 ? SendResult::sent : r.code / 100 == 5 ? SendResult::permanent : SendResult::transient;
}

// A recipient's own reply. 552 to RCPT is RFC 821's "too many recipients"
// (RFC 5321 4.5.3.1.10: 452 now, and a client SHOULD take 552 there for
// temporary, as Postfix does), so is X.5.3: the recipient goes in another
// transaction, it has not failed.
SendResult rcpt_result(const SmtpReply &r) {
    if (r.code == 552 || r.enhanced == "5.5.3") return SendResult::transient;
    return result_of(r);
}

// A transaction's replies as one outcome, or one per recipient when they
// differ.
SendOutcome outcome_of(const SmtpResult &res, const std::vector<size_t> &indices) {
    if (res.mail.code / 100 != 2) return refusal(res.mail);
    std::vector<SendOutcome::Recipient> each;
    bool all_policy = true;
    for (size_t i = 0; i < res.rcpts.size(); i++) {
        bool taken = res.rcpts[i].code / 100 == 2;
        const SmtpReply &r = taken ? res.data : res.rcpts[i];
        each.push_back({indices[i], taken ? result_of(r) : rcpt_result(r), r.code, r.code / 100 == 2 ? "" : smtp_reason(r)});
        all_policy &= r.code / 100 == 5 && r.enhanced.rfind("5.7.", 0) == 0;
    }
    bool same = std::all_of(each.begin(), each.end(), [&](const SendOutcome::Recipient &x) {
        return x.result == each[0].result && x.code == each[0].code;
    });
    const SmtpReply &first = res.rcpts[0].code / 100 == 2 ? res.data : res.rcpts[0];
    if (all_policy) {
        SendOutcome out = whole(SendResult::transient, first, false);
        out.policy = true;
        return out;
    }
    bool fault = res.data.code == 421 ||
                 std::any_of(res.rcpts.begin(), res.rcpts.end(), [](const SmtpReply &r) { return r.code == 421; });
    if (same || each.size() == 1) return whole(each[0].result, first, fault);
    SendOutcome out;
    auto any = [&](SendResult r) {
        return std::any_of(each.begin(), each.end(), [r](const SendOutcome::Recipient &x) { return x.result == r; });
    };
    out.result = any(SendResult::sent) ? SendResult::sent : any(SendResult::transient) ? SendResult::transient
                                                                                        : SendResult::permanent;
    for (const auto &x : each) {
        if (x.result == out.result) {
            out.code = x.code;
            out.reason = x.reason;
            break;
        }
    }
    out.provider_fault = fault;
    out.recipients = std::move(each);
    return out;
}

SSL_CTX *make_tls(const std::string &cacert, std::string &error) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == nullptr) {
        error = "cannot make a TLS context";
        return nullptr;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    bool ok = cacert.empty() ? SSL_CTX_set_default_verify_paths(ctx) == 1
                             : SSL_CTX_load_verify_locations(ctx, cacert.c_str(), nullptr) == 1;
    if (!ok) {
        error = "cannot read the CA certificates" + (cacert.empty() ? std::string() : " in " + cacert);
        ERR_clear_error();
    }
    return ctx;
}

}  // namespace

std::string smtp_reason(const SmtpReply &reply) {
    std::string line = reply.line();
    std::replace(line.begin(), line.end(), '\n', ' ');
    return safe_reason(line);
}

struct SmtpProvider::Send {
    const SendRequest *req;
    std::function<void(SendOutcome)> done;
    std::string message;  // composed and signed, before dot-stuffing
    SmtpEnvelope env;
    std::vector<size_t> indices;  // of env.rcpts, into the message's envelope recipients
    ev_tstamp deadline = 0;
    bool retried = false;         // a stale reused connection was replaced once
    std::list<SendPtr>::iterator self;
    // The connection it is on; its callbacks hold this Send, and each takes
    // the connection back out first.
    std::unique_ptr<SmtpConnection> conn;
};

SmtpProvider::SmtpProvider(const ProviderSpec &spec, const Config &cfg, struct ev_loop *loop)
    : name_(spec.name), cfg_(cfg), loop_(loop), resolver_(loop) {
    smtp_url_parse(spec.get("url"), settings_, settings_error_);  // checked when the config was read
    settings_.starttls = spec.get("starttls") == "yes";
    settings_.username = spec.get("username");
    settings_.password = spec.get("password");
    if (settings_.helo.empty()) settings_.helo = cfg.message_id_domain;
    tls_ = make_tls(spec.get("cacert"), tls_error_);
    ev_timer_init(&idle_timer_, idle_cb, 5, 5);
    idle_timer_.data = this;
    ev_timer_start(loop_, &idle_timer_);
}

SmtpProvider::~SmtpProvider() {
    ev_timer_stop(loop_, &idle_timer_);
    for (auto &c : idle_) c->quit();
    idle_.clear();
    for (SendPtr &s : active_) {
        s->done = nullptr;
        s->conn.reset();  // closed, its callback (and its hold on the Send) gone with it
    }
    active_.clear();
    if (tls_) SSL_CTX_free(tls_);
}

void SmtpProvider::idle_cb(struct ev_loop *loop, ev_timer *w, int) noexcept {
    auto *self = static_cast<SmtpProvider *>(w->data);
    for (auto it = self->idle_.begin(); it != self->idle_.end();) {
        if (!(*it)->usable() || ev_now(loop) - (*it)->idle_since() > IDLE_CLOSE) {
            (*it)->quit();
            it = self->idle_.erase(it);
        } else {
            ++it;
        }
    }
}

double SmtpProvider::left(const SendPtr &s) const { return s->deadline - ev_now(loop_); }

void SmtpProvider::send(const SendRequest &req, std::function<void(SendOutcome)> done) {
    if (!settings_error_.empty() || !tls_error_.empty()) {
        SendOutcome out;
        out.reason = name_ + ": " + (settings_error_.empty() ? tls_error_ : settings_error_);
        out.provider_fault = true;
        done(out);
        return;
    }
    const mailapi::Message &m = *req.msg;
    auto s = std::make_shared<Send>();
    s->req = &req;
    s->done = std::move(done);
    s->deadline = ev_now(loop_) + cfg_.send_timeout;
    s->env.smtputf8 = mailapi::message_needs_smtputf8(m);
    s->env.from = envelope_address(m.from.email);
    std::vector<std::string> rcpts = mailapi::message_envelope_recipients(m);
    for (size_t i = 0; i < rcpts.size(); i++) {
        if (!req.all() && !std::binary_search(req.rcpts.begin(), req.rcpts.end(), i)) continue;
        s->env.rcpts.push_back(envelope_address(rcpts[i]));
        s->indices.push_back(i);
    }
    mailapi::ComposeOptions o;
    o.message_id = "<" + req.id + "@" + cfg_.message_id_domain + ">";
    o.date = std::time(nullptr);
    o.utf8 = s->env.smtputf8;
    o.boundary_seed = req.id;
    s->message = mailapi::mime_compose(m, o);
    if (std::shared_ptr<const DkimSigner> dkim = cfg_.dkim) {
        size_t at = m.from.email.rfind('@');
        std::string domain;
        if (mailapi::domain_to_ascii(m.from.email.substr(at + 1), domain)) {
            s->message.insert(0, dkim->sign(s->message, domain, o.date));
        }
    }
    active_.push_front(s);
    s->self = active_.begin();
    connect(s);
}

void SmtpProvider::connect(SendPtr s) {
    while (!idle_.empty()) {
        std::unique_ptr<SmtpConnection> c = std::move(idle_.front());
        idle_.pop_front();
        if (c->usable()) {
            transact(s, std::move(c), true);
            return;
        }
    }
    s->conn = std::make_unique<SmtpConnection>(loop_, settings_, tls_, resolver_);
    s->conn->open(left(s), [this, s](bool ok, const SmtpReply &failure) {
        std::unique_ptr<SmtpConnection> conn = std::move(s->conn);
        if (!s->done) return;  // this provider is going away
        if (!ok) {
            SendOutcome out = refusal(failure);
            if (failure.code / 100 == 5 && !out.policy) {  // a relay refusing us at the door is its trouble
                out.result = SendResult::transient;
                out.provider_fault = true;
            }
            finish(s, nullptr, out);
            return;
        }
        transact(s, std::move(conn), false);
    });
}

void SmtpProvider::transact(SendPtr s, std::unique_ptr<SmtpConnection> c, bool reused) {
    const SmtpCapabilities &caps = c->capabilities();
    if (s->env.smtputf8 && !caps.smtputf8) {
        SendOutcome out;
        out.reason = "the relay does not offer SMTPUTF8 (RFC 6531), which this message's addresses need";
        out.unsupported = true;
        finish(s, std::move(c), out);
        return;
    }
    if (caps.size && s->message.size() > caps.size) {
        SendOutcome out;
        out.reason = "the message is larger than the relay takes (SIZE " + std::to_string(caps.size) + ")";
        out.unsupported = true;
        finish(s, std::move(c), out);
        return;
    }
    s->conn = std::move(c);
    s->conn->send(s->env, s->message, left(s), [this, s, reused](SmtpResult res) {
        std::unique_ptr<SmtpConnection> conn = std::move(s->conn);
        if (!s->done) return;
        if (!res.reached && reused && !s->retried && left(s) > 0) {
            // the relay had dropped this idle connection: nothing of the
            // message reached it, so a new connection sends it once
            s->retried = true;
            connect(s);
            return;
        }
        SendOutcome out = res.failure.code == 0 && !res.failure.text.empty()
                              ? whole(SendResult::transient, res.failure, true)
                              : outcome_of(res, s->indices);
        finish(s, std::move(conn), out);
    });
}

void SmtpProvider::finish(SendPtr s, std::unique_ptr<SmtpConnection> c, SendOutcome out) {
    if (c && c->usable()) idle_.push_front(std::move(c));
    active_.erase(s->self);
    auto done = std::move(s->done);
    s->done = nullptr;
    done(out);
}

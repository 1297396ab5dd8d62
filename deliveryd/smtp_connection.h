// One connection to an SMTP relay on the event loop (RFC 5321): connect,
// greeting, EHLO, STARTTLS or implicit TLS (OpenSSL, certificate and host
// name checked), AUTH PLAIN or LOGIN, then any number of mail transactions,
// each with a reply per recipient. Commands are pipelined when the relay
// offers PIPELINING (RFC 2920). Every wait is bounded by the operation's
// deadline. Nothing here blocks: libcurl's SMTP waits for the reply to the
// end of DATA synchronously, and does not tell one recipient's refusal from
// another's.
#pragma once
#include <ev.h>
#include <openssl/ssl.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "resolver.h"
#include "smtp_url.h"

struct SmtpReply {
    int code = 0;           // 0: no reply (network, timeout, TLS, protocol); `text` says why
    std::string text;       // the reply's text, its lines joined by a space (without the codes)
    std::string enhanced;   // RFC 3463 "5.1.1", when the reply has one
    std::string line() const { return code ? std::to_string(code) + " " + text : text; }
};


// What the relay said it can do, from its EHLO reply.
struct SmtpCapabilities {
    bool pipelining = false, smtputf8 = false, eightbitmime = false, starttls = false;
    bool auth_plain = false, auth_login = false;
    size_t size = 0;  // SIZE: the largest message it takes, 0 = not said
};

// One mail transaction: the envelope and the message (before dot-stuffing).
struct SmtpEnvelope {
    std::string from;
    std::vector<std::string> rcpts;
    bool smtputf8 = false;
};

struct SmtpResult {
    SmtpReply failure;              // code 0 and text: the transaction could not run (see `reached`)
    SmtpReply mail;                 // MAIL FROM
    std::vector<SmtpReply> rcpts;   // one per envelope recipient (code 0: not asked)
    SmtpReply data;                 // the reply to the end of the data
    // The relay answered something of this transaction; when false on a
    // reused connection, the connection was stale and the send can be retried
    // on a new one without any risk of a second delivery.
    bool reached = false;
};

class SmtpConnection {
public:
    // `tls`: the relay's TLS context (certificates to trust); kept alive by the caller.
    SmtpConnection(struct ev_loop *loop, const SmtpSettings &settings, SSL_CTX *tls, Resolver &resolver);
    ~SmtpConnection();  // closes at once; a callback pending is not called
    SmtpConnection(const SmtpConnection &) = delete;
    SmtpConnection &operator=(const SmtpConnection &) = delete;

    // Connects and greets (EHLO, TLS, AUTH) within `timeout` seconds; on
    // failure the reply or reason is given (code 0 for the network, TLS,
    // a timeout). The connection is then ready for transactions.
    void open(double timeout, std::function<void(bool ok, const SmtpReply &failure)> done);
    // One transaction within `timeout` seconds. `message` must stay alive and
    // unchanged until `done`. After it the connection is ready for the next
    // one unless usable() is false.
    void send(const SmtpEnvelope &env, const std::string &message, double timeout,
              std::function<void(SmtpResult)> done);
    // Says goodbye (QUIT) if it can and closes; safe to destroy at once after.
    void quit();

    bool usable() const { return state_ == State::ready; }
    const SmtpCapabilities &capabilities() const { return caps_; }
    bool tls_active() const { return ssl_ != nullptr && !handshaking_; }
    ev_tstamp idle_since() const { return idle_since_; }

private:
    enum class State { closed, opening, ready, busy };
    using Replies = std::vector<SmtpReply>;

    // Writes `out` (already CRLF-terminated commands), then waits for
    // `replies` replies and gives them to `next`.
    void exchange(std::string out, size_t replies, std::function<void(Replies)> next);
    void fail(const std::string &why);
    void arm(double timeout);
    void connect_to(std::vector<ResolvedAddress> addrs, size_t i);
    void greet();
    void ehlo(std::function<void()> next);
    void start_tls(std::function<void()> next);
    void authenticate(std::function<void()> next);
    void transaction(const SmtpEnvelope &env);
    void next_command();
    void data_reply(Replies r);
    void finish_open(bool ok, const SmtpReply &failure);
    void finish_send();
    void close();

    void on_io(int revents);
    void handshake();
    void flush();
    void read_some();
    bool parse_replies();
    void refill();
    void watch(bool write);
    static void io_cb(struct ev_loop *, ev_io *w, int revents) noexcept;
    static void timer_cb(struct ev_loop *, ev_timer *w, int) noexcept;

    struct ev_loop *loop_;
    SmtpSettings settings_;
    SSL_CTX *tls_ctx_;
    Resolver &resolver_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for the resolver's answer
    int fd_ = -1;
    SSL *ssl_ = nullptr;
    bool handshaking_ = false, connecting_ = false;
    std::vector<ResolvedAddress> addrs_;  // while connecting: the relay's addresses, addrs_[addr_] the one tried
    size_t addr_ = 0;
    bool write_wants_read_ = false, read_wants_write_ = false;
    bool peer_gone_ = false;  // the relay closed (or broke) the connection: replies read before it still count
    std::function<void()> after_handshake_;
    ev_io io_;
    ev_timer timer_;
    State state_ = State::closed;
    SmtpCapabilities caps_;
    ev_tstamp idle_since_ = 0;

    std::string out_;          // bytes to write
    size_t out_pos_ = 0;
    const std::string *message_ = nullptr;  // the transaction's message
    const std::string *data_ = nullptr;     // the same once it is being written, dot-stuffed a chunk at a time
    size_t data_pos_ = 0;
    bool data_line_start_ = true;
    std::string in_;           // bytes read, not yet a whole reply
    Replies replies_;
    size_t want_replies_ = 0;
    std::function<void(Replies)> on_replies_;

    std::function<void(bool, const SmtpReply &)> open_done_;
    std::function<void(SmtpResult)> send_done_;
    SmtpResult result_;
    size_t rcpt_count_ = 0;
    std::vector<std::string> cmds_;  // a transaction's commands, for a relay without PIPELINING
    Replies cmd_replies_;
};

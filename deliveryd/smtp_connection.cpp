#include "smtp_connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "base64.h"

namespace {

constexpr size_t REPLY_MAX = 64 * 1024;  // bytes of replies we hold before calling it a protocol error
constexpr size_t CHUNK = 64 * 1024;      // message bytes dot-stuffed into the write buffer at a time

std::string openssl_error(const char *what) {
    unsigned long e = ERR_get_error();
    std::string s = what;
    if (e) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        s += ": ";
        s += buf;
    }
    ERR_clear_error();
    return s;
}

bool is_ip_literal(const std::string &host) {
    unsigned char buf[16];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

std::string upper(std::string s) {
    for (char &c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
}

SmtpCapabilities parse_ehlo(const std::vector<std::string> &lines) {
    SmtpCapabilities c;
    for (size_t i = 1; i < lines.size(); i++) {  // the first line is the greeting
        std::string l = upper(lines[i]);
        std::string word = l.substr(0, l.find(' '));
        if (word == "PIPELINING") c.pipelining = true;
        else if (word == "SMTPUTF8") c.smtputf8 = true;
        else if (word == "8BITMIME") c.eightbitmime = true;
        else if (word == "STARTTLS") c.starttls = true;
        else if (word == "SIZE" && l.size() > 5) c.size = std::strtoull(l.c_str() + 5, nullptr, 10);
        else if (word == "AUTH" || word.rfind("AUTH=", 0) == 0) {
            std::string mechs = " " + l.substr(std::min<size_t>(5, l.size())) + " ";  // "AUTH" alone: none
            c.auth_plain |= mechs.find(" PLAIN ") != std::string::npos;
            c.auth_login |= mechs.find(" LOGIN ") != std::string::npos;
        }
    }
    return c;
}

// "5.1.1" at the start of a reply's text, or "".
std::string enhanced_code(const std::string &text) {
    if (text.size() >= 5 && text[0] >= '2' && text[0] <= '5' && text[1] == '.' && std::isdigit(static_cast<unsigned char>(text[2]))) {
        size_t end = text.find(' ');
        std::string code = text.substr(0, end);
        size_t dots = std::count(code.begin(), code.end(), '.');
        if (dots == 2 && code.find_first_not_of("0123456789.") == std::string::npos) return code;
    }
    return "";
}

SmtpReply no_reply(const std::string &why) {
    SmtpReply r;
    r.text = why;
    return r;
}

}  // namespace

SmtpConnection::SmtpConnection(struct ev_loop *loop, const SmtpSettings &settings, SSL_CTX *tls, Resolver &resolver)
    : loop_(loop), settings_(settings), tls_ctx_(tls), resolver_(resolver) {
    ev_io_init(&io_, io_cb, -1, 0);
    io_.data = this;
    ev_timer_init(&timer_, timer_cb, 0, 0);
    timer_.data = this;
}

SmtpConnection::~SmtpConnection() {
    *alive_ = false;
    close();
}

void SmtpConnection::close() {
    ev_io_stop(loop_, &io_);
    ev_timer_stop(loop_, &timer_);
    if (ssl_) {
        SSL_free(ssl_);
        ssl_ = nullptr;
    }
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    state_ = State::closed;
    handshaking_ = connecting_ = false;
    peer_gone_ = false;
}

void SmtpConnection::arm(double timeout) {
    ev_timer_stop(loop_, &timer_);
    ev_timer_set(&timer_, std::max(timeout, 0.001), 0);
    ev_timer_start(loop_, &timer_);
}

void SmtpConnection::timer_cb(struct ev_loop *, ev_timer *w, int) noexcept {
    static_cast<SmtpConnection *>(w->data)->fail("timed out");
}

// Ends the operation under way: the connection is closed and the
// operation's callback told why. Nothing of `this` is used after the
// callback, which may destroy it.
void SmtpConnection::fail(const std::string &why) {
    close();
    if (open_done_) {
        auto done = std::move(open_done_);
        open_done_ = nullptr;
        done(false, no_reply(why));
    } else if (send_done_) {
        result_.failure = no_reply(why);
        auto done = std::move(send_done_);
        send_done_ = nullptr;
        done(std::move(result_));
    }
}

// ---------------------------------------------------------------- opening

void SmtpConnection::open(double timeout, std::function<void(bool, const SmtpReply &)> done) {
    open_done_ = std::move(done);
    state_ = State::opening;
    arm(timeout);
    std::weak_ptr<bool> alive = alive_;
    resolver_.resolve(settings_.host, settings_.port,
                      [this, alive](bool ok, const std::string &error, const std::vector<ResolvedAddress> &addrs) {
                          if (alive.expired() || !*alive.lock() || state_ != State::opening) return;
                          if (!ok) {
                              fail(error);
                              return;
                          }
                          connect_to(addrs, 0);
                      });
}

// The relay's addresses in the resolver's order, each until one takes the
// connection: a name with an unreachable first address (an AAAA without a
// route, one server of several down) still reaches the others.
void SmtpConnection::connect_to(std::vector<ResolvedAddress> addrs, size_t i) {
    std::string why;
    for (; i < addrs.size(); i++) {
        const ResolvedAddress &a = addrs[i];
        fd_ = ::socket(a.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd_ < 0) {
            why = std::string("cannot make a socket: ") + std::strerror(errno);
            continue;
        }
        int one = 1;
        setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (::connect(fd_, reinterpret_cast<const sockaddr *>(&a.addr), a.len) != 0 && errno != EINPROGRESS) {
            why = std::string("cannot connect: ") + std::strerror(errno);
            ::close(fd_);
            fd_ = -1;
            continue;
        }
        addrs_ = std::move(addrs);
        addr_ = i;
        connecting_ = true;
        ev_io_set(&io_, fd_, EV_WRITE);
        ev_io_start(loop_, &io_);
        return;
    }
    fail(why.empty() ? "the host has no address" : why);
}

void SmtpConnection::greet() {
    if (settings_.implicit_tls) {
        start_tls([this] { exchange("", 1, [this](Replies r) {
            if (r[0].code != 220) return finish_open(false, r[0]);
            ehlo([this] { authenticate([this] { finish_open(true, {}); }); });
        }); });
        return;
    }
    exchange("", 1, [this](Replies r) {
        if (r[0].code != 220) return finish_open(false, r[0]);
        ehlo([this] {
            if (!settings_.starttls) return authenticate([this] { finish_open(true, {}); });
            if (!caps_.starttls) return finish_open(false, no_reply("the relay does not offer STARTTLS"));
            exchange("STARTTLS\r\n", 1, [this](Replies r) {
                if (r[0].code != 220) return finish_open(false, r[0]);
                // anything after the 220 came before TLS and could be an
                // attacker's injected reply: refuse (CVE-2011-0411's class)
                if (!in_.empty()) return finish_open(false, no_reply("the relay sent data after its STARTTLS reply"));
                start_tls([this] { ehlo([this] { authenticate([this] { finish_open(true, {}); }); }); });
            });
        });
    });
}

void SmtpConnection::ehlo(std::function<void()> next) {
    exchange("EHLO " + settings_.helo + "\r\n", 1, [this, next](Replies r) {
        if (r[0].code != 250) return finish_open(false, r[0]);
        // the lines of the reply, as parse_replies kept them in `text`: split again
        std::vector<std::string> lines;
        size_t start = 0;
        const std::string &t = r[0].text;
        for (size_t sep; (sep = t.find('\n', start)) != std::string::npos; start = sep + 1) lines.push_back(t.substr(start, sep - start));
        lines.push_back(t.substr(start));
        caps_ = parse_ehlo(lines);
        next();
    });
}

void SmtpConnection::start_tls(std::function<void()> next) {
    ERR_clear_error();
    ssl_ = SSL_new(tls_ctx_);
    if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) return fail(openssl_error("TLS setup failed"));
    SSL_set_mode(ssl_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    bool ip = is_ip_literal(settings_.host);
    if (!ip) SSL_set_tlsext_host_name(ssl_, settings_.host.c_str());
    X509_VERIFY_PARAM *param = SSL_get0_param(ssl_);
    bool named = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, settings_.host.c_str()) == 1
                    : X509_VERIFY_PARAM_set1_host(param, settings_.host.c_str(), 0) == 1;
    if (!named) return fail(openssl_error("TLS setup failed (host name)"));
    SSL_set_verify(ssl_, SSL_VERIFY_PEER, nullptr);
    SSL_set_connect_state(ssl_);
    handshaking_ = true;
    after_handshake_ = std::move(next);
    handshake();
}

void SmtpConnection::handshake() {
    ERR_clear_error();
    int rc = SSL_do_handshake(ssl_);
    if (rc == 1) {
        handshaking_ = false;
        watch(false);
        auto next = std::move(after_handshake_);
        after_handshake_ = nullptr;
        next();
        return;
    }
    int err = SSL_get_error(ssl_, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        watch(err == SSL_ERROR_WANT_WRITE);
        return;
    }
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
        return fail(std::string("TLS handshake failed: the relay's certificate: ") +
                    X509_verify_cert_error_string(verify));
    }
    fail(openssl_error("TLS handshake failed"));
}

void SmtpConnection::authenticate(std::function<void()> next) {
    if (settings_.username.empty() || !(caps_.auth_plain || caps_.auth_login)) {
        // no credentials, or the relay asks for none: MAIL FROM says whether it wants them
        next();
        return;
    }
    if (caps_.auth_plain) {
        std::string creds = std::string(1, '\0') + settings_.username + '\0' + settings_.password;
        exchange("AUTH PLAIN " + mailapi::base64_encode(creds) + "\r\n", 1, [this, next](Replies r) {
            if (r[0].code != 235) return finish_open(false, r[0]);
            next();
        });
        return;
    }
    exchange("AUTH LOGIN\r\n", 1, [this, next](Replies r) {
        if (r[0].code != 334) return finish_open(false, r[0]);
        exchange(mailapi::base64_encode(settings_.username) + "\r\n", 1, [this, next](Replies r) {
            if (r[0].code != 334) return finish_open(false, r[0]);
            exchange(mailapi::base64_encode(settings_.password) + "\r\n", 1, [this, next](Replies r) {
                if (r[0].code != 235) return finish_open(false, r[0]);
                next();
            });
        });
    });
}

void SmtpConnection::finish_open(bool ok, const SmtpReply &failure) {
    ev_timer_stop(loop_, &timer_);
    if (ok) {
        state_ = State::ready;
        idle_since_ = ev_now(loop_);
    } else {
        close();
    }
    auto done = std::move(open_done_);
    open_done_ = nullptr;
    done(ok, failure);
}

// ---------------------------------------------------------------- a transaction

void SmtpConnection::send(const SmtpEnvelope &env, const std::string &message, double timeout,
                          std::function<void(SmtpResult)> done) {
    send_done_ = std::move(done);
    result_ = SmtpResult{};
    result_.rcpts.resize(env.rcpts.size());
    rcpt_count_ = env.rcpts.size();
    message_ = &message;
    data_ = nullptr;  // written once the relay says 354
    state_ = State::busy;
    arm(timeout);
    transaction(env);
}

void SmtpConnection::transaction(const SmtpEnvelope &env) {
    std::string mail = "MAIL FROM:<" + env.from + ">";
    if (env.smtputf8) mail += " SMTPUTF8";
    if (caps_.eightbitmime && env.smtputf8) mail += " BODY=8BITMIME";
    if (caps_.size) mail += " SIZE=" + std::to_string(message_->size());
    std::vector<std::string> cmds{mail + "\r\n"};
    for (const std::string &r : env.rcpts) cmds.push_back("RCPT TO:<" + r + ">\r\n");
    cmds.push_back("DATA\r\n");
    if (caps_.pipelining) {
        std::string all;
        for (const std::string &c : cmds) all += c;
        exchange(std::move(all), cmds.size(), [this](Replies r) { data_reply(std::move(r)); });
        return;
    }
    // one command at a time, each waiting for its reply
    cmds_ = std::move(cmds);
    cmd_replies_.clear();
    next_command();
}

void SmtpConnection::next_command() {
    size_t i = cmd_replies_.size();
    exchange(std::move(cmds_[i]), 1, [this](Replies r) {
        cmd_replies_.push_back(std::move(r[0]));
        if (cmd_replies_.size() < cmds_.size()) return next_command();
        cmds_.clear();
        data_reply(std::move(cmd_replies_));
    });
}

void SmtpConnection::data_reply(Replies r) {
    result_.reached = true;
    result_.mail = r[0];
    size_t accepted = 0;
    for (size_t i = 0; i < rcpt_count_; i++) {
        result_.rcpts[i] = r[1 + i];
        if (result_.mail.code / 100 == 2 && r[1 + i].code / 100 == 2) accepted++;
    }
    const SmtpReply &data = r.back();
    if (data.code != 354) {
        // no data phase: the transaction is cleared before the next one
        result_.data = data;
        exchange("RSET\r\n", 1, [this](Replies) { finish_send(); });
        return;
    }
    if (accepted == 0) {  // a relay that says 354 with no recipient: end the data at once
        exchange(".\r\n", 1, [this](Replies) { finish_send(); });
        return;
    }
    data_ = message_;
    data_pos_ = 0;
    data_line_start_ = true;
    // A reply already read with the 354 (e.g. 421: the relay is going away)
    // ends the transaction in exchange(), and its callback may destroy this
    // connection: the data is written only if it is still waited for.
    std::weak_ptr<bool> alive = alive_;
    exchange("", 1, [this](Replies end) {
        result_.data = end[0];
        finish_send();
    });
    if (alive.expired() || data_ == nullptr) return;
    refill();
}

void SmtpConnection::finish_send() {
    ev_timer_stop(loop_, &timer_);
    data_ = message_ = nullptr;
    bool closing = result_.mail.code == 421 || result_.data.code == 421 ||
                   std::any_of(result_.rcpts.begin(), result_.rcpts.end(), [](const SmtpReply &x) { return x.code == 421; });
    if (closing || peer_gone_) close();
    else {
        state_ = State::ready;
        idle_since_ = ev_now(loop_);
    }
    auto done = std::move(send_done_);
    send_done_ = nullptr;
    done(std::move(result_));
}

void SmtpConnection::quit() {
    if (state_ == State::ready && fd_ >= 0) {
        const char bye[] = "QUIT\r\n";
        if (ssl_) {
            ERR_clear_error();
            SSL_write(ssl_, bye, sizeof bye - 1);
        } else {
            ssize_t n = ::send(fd_, bye, sizeof bye - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            (void)n;  // best effort: the relay drops us anyway
        }
    }
    close();
}

// ---------------------------------------------------------------- bytes

void SmtpConnection::exchange(std::string out, size_t replies, std::function<void(Replies)> next) {
    out_ = std::move(out);
    out_pos_ = 0;
    replies_.clear();
    want_replies_ = replies;
    on_replies_ = std::move(next);
    watch(!out_.empty());
    if (!out_.empty()) flush();
    else if (!in_.empty() && parse_replies()) return;  // a reply that came early (pipelined)
}

// The message after DATA, dot-stuffed (RFC 5321 4.5.2) a chunk at a time
// into the write buffer, then the final ".".
void SmtpConnection::refill() {
    if (data_ == nullptr || data_pos_ > data_->size()) return;
    std::string chunk;
    size_t end = std::min(data_->size(), data_pos_ + CHUNK);
    chunk.reserve(end - data_pos_ + 64);
    for (size_t i = data_pos_; i < end; i++) {
        char c = (*data_)[i];
        if (data_line_start_ && c == '.') chunk.push_back('.');
        chunk.push_back(c);
        data_line_start_ = c == '\n';
    }
    data_pos_ = end;
    if (data_pos_ == data_->size()) {
        if (!data_->empty() && !data_line_start_) chunk += "\r\n";
        chunk += ".\r\n";
        data_pos_ = data_->size() + 1;  // all of it is in the buffer
    }
    out_.erase(0, out_pos_);
    out_pos_ = 0;
    out_ += chunk;
    watch(true);
}

void SmtpConnection::watch(bool write) {
    if (fd_ < 0) return;
    int events = EV_READ | (write || read_wants_write_ ? EV_WRITE : 0);
    if (io_.fd == fd_ && io_.events == events && ev_is_active(&io_)) return;
    ev_io_stop(loop_, &io_);
    ev_io_set(&io_, fd_, events);
    ev_io_start(loop_, &io_);
}

void SmtpConnection::io_cb(struct ev_loop *, ev_io *w, int revents) noexcept {
    static_cast<SmtpConnection *>(w->data)->on_io(revents);
}

void SmtpConnection::on_io(int revents) {
    if (connecting_) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            if (addr_ + 1 < addrs_.size()) {  // the next address, within the same deadline
                ev_io_stop(loop_, &io_);
                ::close(fd_);
                fd_ = -1;
                connecting_ = false;
                return connect_to(std::move(addrs_), addr_ + 1);
            }
            return fail(std::string("cannot connect: ") + std::strerror(err));
        }
        connecting_ = false;
        std::vector<ResolvedAddress>().swap(addrs_);
        watch(false);
        greet();
        return;
    }
    if (handshaking_) {
        handshake();
        return;
    }
    if ((revents & EV_WRITE) || (write_wants_read_ && (revents & EV_READ))) {
        // a write that fails ends the operation, whose callback may destroy this
        std::weak_ptr<bool> alive = alive_;
        flush();
        if (alive.expired() || fd_ < 0) return;
    }
    if ((revents & EV_READ) || (read_wants_write_ && (revents & EV_WRITE))) read_some();
}

void SmtpConnection::flush() {
    write_wants_read_ = false;
    while (out_pos_ < out_.size()) {
        size_t n = out_.size() - out_pos_;
        if (ssl_) {
            ERR_clear_error();
            int rc = SSL_write(ssl_, out_.data() + out_pos_, static_cast<int>(std::min<size_t>(n, 1 << 30)));
            if (rc <= 0) {
                int err = SSL_get_error(ssl_, rc);
                if (err == SSL_ERROR_WANT_WRITE) return watch(true);
                if (err == SSL_ERROR_WANT_READ) {
                    write_wants_read_ = true;
                    return watch(false);
                }
                return fail(openssl_error("TLS write failed"));
            }
            out_pos_ += static_cast<size_t>(rc);
        } else {
            ssize_t rc = ::send(fd_, out_.data() + out_pos_, n, MSG_NOSIGNAL);
            if (rc < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) return watch(true);
                if (errno == EINTR) continue;
                return fail(std::string("the connection broke: ") + std::strerror(errno));
            }
            out_pos_ += static_cast<size_t>(rc);
        }
        if (out_pos_ == out_.size()) {
            out_.clear();
            out_pos_ = 0;
            refill();  // more of the message, if one is being written
        }
    }
    watch(false);
}

void SmtpConnection::read_some() {
    read_wants_write_ = false;
    char buf[16384];
    std::string gone;  // why the connection ended, once it has
    for (;;) {
        ssize_t n;
        if (ssl_) {
            ERR_clear_error();
            int rc = SSL_read(ssl_, buf, sizeof buf);
            if (rc <= 0) {
                int err = SSL_get_error(ssl_, rc);
                if (err == SSL_ERROR_WANT_READ) break;
                if (err == SSL_ERROR_WANT_WRITE) {
                    read_wants_write_ = true;
                    watch(true);
                    break;
                }
                gone = err == SSL_ERROR_ZERO_RETURN ? "the relay closed the connection" : openssl_error("TLS read failed");
                break;
            }
            n = rc;
        } else {
            n = ::recv(fd_, buf, sizeof buf, 0);
            if (n < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                if (errno == EINTR) continue;
                gone = std::string("the connection broke: ") + std::strerror(errno);
                break;
            }
            if (n == 0) {
                gone = "the relay closed the connection";
                break;
            }
        }
        in_.append(buf, static_cast<size_t>(n));
        if (in_.size() > REPLY_MAX) return fail("the relay's reply is too long");
    }
    if (state_ == State::ready && !in_.empty()) {
        // a ready connection is not spoken to: whatever comes is the relay
        // giving up on it (e.g. 421 after an idle timeout)
        close();
        return;
    }
    if (gone.empty()) {
        parse_replies();
        return;
    }
    // What came before the close is still the relay's word: a 250 to the
    // end of the data followed at once by the FIN is a delivery (taken for
    // a broken connection, the message was sent again).
    peer_gone_ = true;
    std::weak_ptr<bool> alive = alive_;
    if (!in_.empty()) parse_replies();
    if (alive.expired() || fd_ < 0) return;  // handed on, and ended or destroyed by the callback
    if (state_ == State::ready) {
        close();
        return;
    }
    fail(gone);
}

// Takes whole replies out of `in_`; when the ones waited for are there, hands
// them on (true). The text keeps a multi-line reply's lines apart with '\n'
// for EHLO; reasons replace it by a space.
bool SmtpConnection::parse_replies() {
    while (replies_.size() < want_replies_) {
        SmtpReply reply;
        size_t pos = 0;
        bool whole = false;
        std::string text;
        while (true) {
            size_t eol = in_.find('\n', pos);
            if (eol == std::string::npos) break;
            std::string line = in_.substr(pos, eol - pos);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            pos = eol + 1;
            if (line.size() < 3 || !std::isdigit(static_cast<unsigned char>(line[0])) ||
                !std::isdigit(static_cast<unsigned char>(line[1])) || !std::isdigit(static_cast<unsigned char>(line[2])) ||
                (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
                fail("the relay's reply is not SMTP");
                return true;
            }
            int code = std::atoi(line.substr(0, 3).c_str());
            if (reply.code && code != reply.code) {
                fail("the relay's reply is not SMTP (codes differ within one reply)");
                return true;
            }
            reply.code = code;
            if (!text.empty()) text += '\n';
            text += line.size() > 4 ? line.substr(4) : "";
            if (line.size() == 3 || line[3] == ' ') {
                whole = true;
                break;
            }
        }
        if (!whole) return false;
        in_.erase(0, pos);
        reply.text = std::move(text);
        reply.enhanced = enhanced_code(reply.text);
        replies_.push_back(std::move(reply));
    }
    if (want_replies_ == 0) return false;
    want_replies_ = 0;
    auto next = std::move(on_replies_);
    on_replies_ = nullptr;
    Replies r = std::move(replies_);
    replies_.clear();
    next(std::move(r));
    return true;
}

#include "delivery.h"

#include <sys/time.h>

#include "log.h"

namespace {

int64_t now_ms() {
    struct timeval tv;
    gettimeofday(&tv, nullptr);
    return static_cast<int64_t>(tv.tv_sec) * 1000 + tv.tv_usec / 1000;
}

bool terminal(const std::string &status) {
    return status == "sent" || status == "failed" || status == "suppressed" || status == "cancelled";
}

}  // namespace

Disposition Delivery::record(Record rec) {
    std::string err;
    if (!store_.write(rec, err)) {
        log_error("record not written, will retry", {{"id", rec.id}, {"error", err}});
        unrecorded_[rec.id] = std::move(rec);
        return Disposition::retry_later;
    }
    unrecorded_.erase(rec.id);
    return Disposition::done;
}

Disposition Delivery::handle(const QueueEntry &e) {
    if (!mailapi::message_id_valid(e.id) || e.tenant.empty()) {
        log_error("malformed queue entry dropped", {{"stream_id", e.stream_id}});
        return Disposition::done;
    }
    auto pending = unrecorded_.find(e.id);
    if (pending != unrecorded_.end()) return record(pending->second);
    if (e.send_at > 0 && e.send_at * 1000 > now_ms()) return Disposition::retry_later;

    std::string status, err;
    if (!store_.status(e.id, status, err)) {
        log_error("store unavailable", {{"id", e.id}, {"error", err}});
        return Disposition::retry_later;
    }
    if (terminal(status)) return Disposition::done;  // redelivered after a crash before the ack

    Record rec;
    rec.id = e.id;
    rec.tenant = e.tenant;
    rec.envelope = e.envelope;
    rec.created_ms = e.created_ms;
    rec.events.push_back({"queued", e.created_ms, "", 0, ""});

    std::string plain;
    mailapi::Message msg;
    mailapi::FieldError ferr;
    if (!mailapi::envelope_open(keyring_, mailapi::envelope_aad(e.tenant, e.id), e.envelope, plain) ||
        !mailapi::message_parse(plain, mailapi::MessageLimits::stored(), 0, msg, ferr)) {
        log_error("envelope cannot be opened", {{"id", e.id}, {"tenant", e.tenant}});
        rec.status = "failed";
        rec.events.push_back({"failed", now_ms(), "", 0, "envelope cannot be decrypted"});
        return record(std::move(rec));
    }
    for (const std::string &addr : mailapi::message_recipients(msg)) {
        rec.rcpt.push_back(mailapi::blind_index(keyring_, addr));
    }

    int64_t started = now_ms();
    SendOutcome out = smtp_.send(e.id, msg);
    std::string ms = std::to_string(now_ms() - started), code = std::to_string(out.code);
    switch (out.result) {
    case SendResult::sent:
        log_info("sent", {{"id", e.id}, {"tenant", e.tenant}, {"provider", "smtp"}, {"code", code}, {"ms", ms}});
        rec.status = "sent";
        rec.events.push_back({"sent", now_ms(), "smtp", out.code, ""});
        return record(std::move(rec));
    case SendResult::permanent:
        log_warn("rejected", {{"id", e.id}, {"tenant", e.tenant}, {"provider", "smtp"}, {"code", code},
                              {"reason", out.reason}});
        rec.status = "failed";
        rec.events.push_back({"failed", now_ms(), "smtp", out.code, out.reason});
        return record(std::move(rec));
    case SendResult::transient:
        break;
    }
    log_warn("send failed, will retry", {{"id", e.id}, {"tenant", e.tenant}, {"provider", "smtp"},
                                         {"code", code}, {"reason", out.reason}});
    return Disposition::retry_later;
}

// One queue entry from envelope to outcome: decrypt, send, record.
#pragma once
#include <string>
#include <unordered_map>

#include "crypto.h"
#include "queue.h"
#include "smtp.h"
#include "store.h"

enum class Disposition {
    done,         // outcome recorded: ack the entry
    retry_later,  // leave it pending; a later sweep reads it again
};

class Delivery {
public:
    Delivery(const mailapi::Keyring &keyring, Store &store, SmtpProvider &smtp)
        : keyring_(keyring), store_(store), smtp_(smtp) {}

    Disposition handle(const QueueEntry &entry);

private:
    Disposition record(Record rec);

    const mailapi::Keyring &keyring_;
    Store &store_;
    SmtpProvider &smtp_;
    // Sent but not yet recorded (MongoDB was down): record again, never resend.
    std::unordered_map<std::string, Record> unrecorded_;
};

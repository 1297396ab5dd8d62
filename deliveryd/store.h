// MongoDB records: one document per message, keyed by message id, holding the
// encrypted envelope, blind indexes of its recipients, status and timeline.
#pragma once
#include <mongoc/mongoc.h>

#include <cstdint>
#include <string>
#include <vector>

#include "config.h"

struct RecordEvent {
    std::string type;      // queued, sent, failed, ...
    int64_t at_ms = 0;
    std::string provider;  // may be empty
    int code = 0;          // provider's status code, 0 = none
    std::string reason;    // short, never personal data
};

struct Record {
    std::string id, tenant, status, envelope;
    std::vector<std::string> rcpt;  // blind indexes
    int64_t created_ms = 0;
    std::vector<RecordEvent> events;
};

class Store {
public:
    explicit Store(const Config &cfg) : cfg_(cfg) {}
    ~Store();
    Store(const Store &) = delete;
    Store &operator=(const Store &) = delete;

    bool connect(std::string &err);
    // Idempotent: writing a message twice leaves one record.
    bool write(const Record &rec, std::string &err);
    // The recorded status of a message, "" when there is no record.
    bool status(const std::string &id, std::string &out, std::string &err);

private:

    const Config &cfg_;
    mongoc_client_t *client_ = nullptr;
    mongoc_collection_t *coll_ = nullptr;
};

// DKIM signatures (RFC 6376) on the mail deliveryd sends over SMTP:
// rsa-sha256 (keys of 2048 bits or more) and ed25519-sha256 (RFC 8463),
// relaxed/relaxed, the header fields RFC 6376 5.4.1 recommends, From and the
// other fields a forger would add again signed once more than they occur
// (5.4.2). Keys are per sending domain and selector (config lines
// "dkim DOMAIN SELECTOR key_file=PATH"); every key of the From domain signs,
// so an RSA and an Ed25519 key sign side by side (RFC 8463 section 6), and a
// rotation adds the new selector, publishes it, then drops the old one.
#pragma once
#include <openssl/evp.h>

#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

struct DkimSpec {
    std::string domain;  // A-labels, lower case
    std::string selector;
    std::string key_file;
};

class DkimSigner {
public:
    // Reads every key; on error `err` names the key and why.
    static std::shared_ptr<const DkimSigner> load(const std::vector<DkimSpec> &specs, std::string &err);
    ~DkimSigner();

    // The DKIM-Signature fields (folded, CRLF-terminated) to put on top of
    // `message` (header, empty line, body; CRLF line breaks) sent from
    // `domain`; empty when the domain has no key.
    std::string sign(const std::string &message, std::string_view domain, time_t now) const;
    // The DNS TXT records to publish for `domain` ("sel._domainkey.domain.
    // IN TXT ..."), one a line; empty when it has no key.
    std::string dns_records(std::string_view domain) const;
    bool empty() const { return keys_.empty(); }

    struct Key {
        std::string domain, selector;
        EVP_PKEY *pkey = nullptr;
        bool ed25519 = false;
    };

private:
    DkimSigner() = default;
    std::vector<Key> keys_;
};

// Relaxed canonicalisation (RFC 6376 3.4.2 and 3.4.4), for the tests too.
std::string dkim_relaxed_header(std::string_view field);  // "Name: value\r\n folded" -> "name:value\r\n"
std::string dkim_relaxed_body(std::string_view body);

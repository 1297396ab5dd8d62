// Envelope encryption (AES-256-GCM) with a rotating keyring, and the blind
// index that lets records be found by recipient without storing the address.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mailapi {

using Key256 = std::array<unsigned char, 32>;

struct Keyring {
    struct Entry {
        std::string id;
        Key256 key;
    };
    std::vector<Entry> data_keys;  // the last one seals new envelopes
    Key256 index_key{};
    bool has_index_key = false;

    const Entry *find(std::string_view id) const;
    const Entry &active() const { return data_keys.back(); }
};

// Keyring file: one key per line, "<id> <base64 of 32 bytes>"; the id "index"
// names the blind-index key (never rotated); the last other line is active.
bool keyring_parse(std::string_view text, Keyring &ring, std::string &err);
bool keyring_load(const std::string &path, Keyring &ring, std::string &err);

// Additional data binding an envelope to its tenant and message id.
std::string envelope_aad(std::string_view tenant, std::string_view message_id);

// Envelope (bytes, as Redis and the store keep it):
//   0x01 | key id length | key id | nonce[12] | ciphertext | tag[16]
bool envelope_seal(const Keyring &ring, std::string_view aad, std::string_view plaintext,
                   std::string &out);
bool envelope_open(const Keyring &ring, std::string_view aad, std::string_view envelope,
                   std::string &out);
// The key id that sealed an envelope; empty when it is not one.
std::string_view envelope_key_id(std::string_view envelope);

// base64url(HMAC-SHA256(index_key, normalised address)).
std::string blind_index(const Keyring &ring, std::string_view normalised_address);

bool random_bytes(void *buf, size_t len);

// "msg_" + 26 Crockford base32 characters: 48-bit milliseconds then 80 random
// bits, so ids sort by creation time.
bool message_id_new(int64_t now_ms, std::string &out);
bool message_id_valid(std::string_view id);

}  // namespace mailapi

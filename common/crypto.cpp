#include "crypto.h"

#include <openssl/evp.h>
#include <openssl/rand.h>

#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "base64.h"
#include "ossl.h"
#include "lines.h"

namespace mailapi {

const Keyring::Entry *Keyring::find(std::string_view id) const {
    for (const Entry &e : data_keys) {
        if (e.id == id) return &e;
    }
    return nullptr;
}

static bool keyring_id_valid(std::string_view id) {
    if (id.empty() || id.size() > 32) return false;
    for (char c : id) {
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return false;
        }
    }
    return true;
}

bool keyring_parse(std::string_view text, Keyring &ring, std::string &err) {
    Keyring r;
    bool ok = for_each_line(text, [&](int lineno, const std::vector<std::string> &f) {
        std::string where = "line " + std::to_string(lineno) + ": ";
        const std::string &id = f[0];
        if (f.size() != 2) {
            err = where + "expected \"<key id> <base64 key>\"";
            return false;
        }
        if (!keyring_id_valid(id)) {
            err = where + "key id must be 1-32 of [A-Za-z0-9_-]";
            return false;
        }
        std::string raw;
        if (!base64_decode(f[1], raw) || raw.size() != 32) {
            err = where + "key must be base64 of exactly 32 bytes";
            return false;
        }
        Key256 key;
        std::copy(raw.begin(), raw.end(), key.begin());
        if (id == "index") {
            if (r.has_index_key) {
                err = where + "duplicate \"index\" key";
                return false;
            }
            r.index_key = key;
            r.has_index_key = true;
        } else {
            if (r.find(id)) {
                err = where + "duplicate key id \"" + id + "\"";
                return false;
            }
            r.data_keys.push_back({id, key});
        }
        return true;
    });
    if (!ok) return false;
    if (!r.has_index_key) {
        err = "no \"index\" key (the blind-index key for recipient lookups)";
        return false;
    }
    if (r.data_keys.empty()) {
        err = "no data key: add a line \"<key id> <base64 of 32 bytes>\"";
        return false;
    }
    ring = std::move(r);
    return true;
}

bool keyring_load(const std::string &path, Keyring &ring, std::string &err) {
    std::ifstream f(path);
    if (!f) {
        err = "cannot open keyring \"" + path + "\"";
        return false;
    }
    std::stringstream ss;
    ss << f.rdbuf();
    if (!keyring_parse(ss.str(), ring, err)) {
        err = "keyring \"" + path + "\" " + err;
        return false;
    }
    return true;
}

std::string envelope_aad(std::string_view tenant, std::string_view message_id) {
    std::string aad;
    aad.reserve(12 + tenant.size() + message_id.size());
    aad.append("mailapi-v1");
    aad.push_back('\0');
    aad.append(tenant);
    aad.push_back('\0');
    aad.append(message_id);
    return aad;
}

namespace {
constexpr size_t NONCE_LEN = 12;
constexpr size_t TAG_LEN = 16;
constexpr unsigned char ENVELOPE_VERSION = 1;
}  // namespace

bool envelope_seal(const Keyring &ring, std::string_view aad, std::string_view plaintext,
                   std::string &out) {
    if (ring.data_keys.empty()) return false;
    const Keyring::Entry &k = ring.active();
    size_t head = 2 + k.id.size();
    std::string raw(head + NONCE_LEN + plaintext.size() + TAG_LEN, '\0');
    raw[0] = static_cast<char>(ENVELOPE_VERSION);
    raw[1] = static_cast<char>(k.id.size());
    std::memcpy(&raw[2], k.id.data(), k.id.size());
    auto *nonce = reinterpret_cast<unsigned char *>(raw.data()) + head;
    if (!random_bytes(nonce, NONCE_LEN)) return false;
    EVP_CIPHER_CTX *ctx = aes_gcm_ctx();
    int len = 0;
    if (!ctx || EVP_EncryptInit_ex2(ctx, aes_256_gcm(), k.key.data(), nonce, nullptr) != 1 ||
        EVP_EncryptUpdate(ctx, nullptr, &len,
                          reinterpret_cast<const unsigned char *>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_EncryptUpdate(ctx, nonce + NONCE_LEN, &len,
                          reinterpret_cast<const unsigned char *>(plaintext.data()),
                          static_cast<int>(plaintext.size())) != 1 ||
        EVP_EncryptFinal_ex(ctx, nonce + NONCE_LEN + len, &len) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN,
                            nonce + NONCE_LEN + plaintext.size()) != 1) {
        return false;
    }
    out.swap(raw);
    return true;
}

std::string_view envelope_key_id(std::string_view envelope) {
    if (envelope.size() < 2 || static_cast<unsigned char>(envelope[0]) != ENVELOPE_VERSION) return {};
    size_t kid_len = static_cast<unsigned char>(envelope[1]);
    if (kid_len == 0 || envelope.size() < 2 + kid_len + NONCE_LEN + TAG_LEN) return {};
    return envelope.substr(2, kid_len);
}

bool envelope_open(const Keyring &ring, std::string_view aad, std::string_view envelope,
                   std::string &out) {
    std::string_view kid = envelope_key_id(envelope);
    const Keyring::Entry *k = kid.empty() ? nullptr : ring.find(kid);
    if (k == nullptr) return false;
    auto *nonce = reinterpret_cast<const unsigned char *>(envelope.data()) + 2 + kid.size();
    size_t ct_len = envelope.size() - 2 - kid.size() - NONCE_LEN - TAG_LEN;
    if (ct_len > static_cast<size_t>(INT32_MAX)) return false;
    std::string pt;
    pt.reserve(ct_len + 64);  // room for a JSON parser's padding: it need not copy
    pt.resize(ct_len);
    EVP_CIPHER_CTX *ctx = aes_gcm_ctx();
    int len = 0;
    if (!ctx || EVP_DecryptInit_ex2(ctx, aes_256_gcm(), k->key.data(), nonce, nullptr) != 1 ||
        EVP_DecryptUpdate(ctx, nullptr, &len,
                          reinterpret_cast<const unsigned char *>(aad.data()),
                          static_cast<int>(aad.size())) != 1 ||
        EVP_DecryptUpdate(ctx, reinterpret_cast<unsigned char *>(pt.data()), &len,
                          nonce + NONCE_LEN, static_cast<int>(ct_len)) != 1 ||
        EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_LEN,
                            const_cast<unsigned char *>(nonce) + NONCE_LEN + ct_len) != 1 ||
        EVP_DecryptFinal_ex(ctx, reinterpret_cast<unsigned char *>(pt.data()) + len, &len) != 1) {
        OPENSSL_cleanse(pt.data(), pt.size());
        return false;
    }
    out.swap(pt);
    return true;
}

std::string blind_index(const Keyring &ring, std::string_view addr) {
    unsigned char md[32];
    std::string_view key(reinterpret_cast<const char *>(ring.index_key.data()), ring.index_key.size());
    if (!hmac_sha256(key, addr, md)) return "";
    return base64url_encode(std::string_view(reinterpret_cast<char *>(md), sizeof md));
}

namespace {

// Bumped in every forked child (nginx's workers are forks of the master):
// a counter read per call instead of a getpid() system call per call.
std::atomic<unsigned> g_forks{1};

void count_fork() { g_forks.fetch_add(1, std::memory_order_relaxed); }

unsigned fork_generation() {
    static const bool registered = pthread_atfork(nullptr, nullptr, count_fork) == 0;
    return registered ? g_forks.load(std::memory_order_relaxed) : 0;  // 0: never trusted, refilled each call
}

}  // namespace

bool random_bytes(void *buf, size_t len) {
    // CSPRNG output taken 4 KiB at a time: a call per request costs more than
    // the encryption. Refilled in a forked child so no two processes share it.
    struct Pool {
        unsigned char bytes[4096];
        size_t used = sizeof bytes;
        unsigned forks = 0;
    };
    thread_local Pool pool;
    if (len > sizeof pool.bytes) {
        return RAND_bytes(static_cast<unsigned char *>(buf), static_cast<int>(len)) == 1;
    }
    unsigned forks = fork_generation();
    if (pool.used + len > sizeof pool.bytes || forks == 0 || pool.forks != forks) {
        if (RAND_bytes(pool.bytes, sizeof pool.bytes) != 1) return false;
        pool.used = 0;
        pool.forks = forks;
    }
    std::memcpy(buf, pool.bytes + pool.used, len);
    OPENSSL_cleanse(pool.bytes + pool.used, len);  // handed out once
    pool.used += len;
    return true;
}

static const char CROCKFORD[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

bool message_id_new(int64_t now_ms, std::string &out) {
    // Monotonic within a thread: in the same millisecond (or if the clock
    // steps back) the 80 random bits of the previous id are incremented, so
    // ids sort in the order they were issued.
    thread_local int64_t last_ms = -1;
    thread_local unsigned char last[16];
    unsigned char bits[16];
    if (now_ms <= last_ms) {
        std::memcpy(bits, last, sizeof bits);
        for (int i = 15; i >= 6 && ++bits[i] == 0; i--) {
        }
    } else {
        uint64_t t = static_cast<uint64_t>(now_ms);
        for (int i = 5; i >= 0; i--) {
            bits[i] = static_cast<unsigned char>(t & 0xff);
            t >>= 8;
        }
        if (!random_bytes(bits + 6, 10)) return false;
        bits[6] &= 0x7f;  // headroom: increments never carry into the time
        last_ms = now_ms;
    }
    std::memcpy(last, bits, sizeof bits);
    // 128 bits as 26 base32 digits: the first digit carries the top 3 bits.
    std::string id = "msg_";
    unsigned acc = 0;
    int nbits = 2;  // pad 2 zero bits in front so 130 bits split into 26 digits
    for (unsigned char b : bits) {
        acc = (acc << 8) | b;
        nbits += 8;
        while (nbits >= 5) {
            id.push_back(CROCKFORD[(acc >> (nbits - 5)) & 31]);
            nbits -= 5;
        }
    }
    out = id;
    return true;
}

bool message_id_valid(std::string_view id) {
    if (id.size() != 30 || id.substr(0, 4) != "msg_") return false;
    for (char c : id.substr(4)) {
        bool ok = false;
        for (const char *p = CROCKFORD; *p; p++) ok |= (*p == c);
        if (!ok) return false;
    }
    return true;
}

}  // namespace mailapi

#include "ossl.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/params.h>

#include <cstring>
#include <memory>

namespace mailapi {

namespace {

struct CipherCtxFree {
    void operator()(EVP_CIPHER_CTX *c) const { EVP_CIPHER_CTX_free(c); }
};
struct MacCtxFree {
    void operator()(EVP_MAC_CTX *c) const { EVP_MAC_CTX_free(c); }
};

EVP_MAC_CTX *hmac_ctx_new() {
    static EVP_MAC *mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    if (mac == nullptr) return nullptr;
    EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(mac);
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                           OSSL_PARAM_construct_end()};
    if (ctx && EVP_MAC_CTX_set_params(ctx, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        return nullptr;
    }
    return ctx;
}

// A few keyed HMAC contexts per thread. Setting a key (hashing both pads,
// OpenSSL's parameter handling) costs more than the MAC of a short input,
// and a send uses the same few keys again and again (its API key's secret,
// the index key): a key seen before reuses its context, re-initialised
// without a key, which keeps the key set before. Keys are compared in
// constant time; a miss takes the next slot in turn; a key longer than a
// slot is set on every call, as every key is where the provider cannot
// restart a context without its key (hmac_reinit_keeps_key).
constexpr size_t HMAC_SLOTS = 8;
constexpr size_t HMAC_SLOT_KEY = 64;

struct HmacSlot {
    std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx;
    unsigned char key[HMAC_SLOT_KEY];
    size_t len = 0;  // 0: empty
    ~HmacSlot() { OPENSSL_cleanse(key, sizeof key); }
};

struct HmacSlots {
    HmacSlot slot[HMAC_SLOTS];
    size_t next = 0;
    std::unique_ptr<EVP_MAC_CTX, MacCtxFree> uncached;
};

// Whether EVP_MAC_init(ctx, NULL, 0, NULL) restarts an HMAC with the key it
// has. OpenSSL's HMAC provider before 3.0.3 made that a successful no-op
// (openssl/openssl#17811, fixed by #18100): every MAC after the first under a
// cached key would come out wrong, without an error. The HMAC comes from
// whichever provider is loaded (a FIPS provider may be older than libcrypto),
// so this is asked of it once, not of the version number; if it says no, every
// call sets its key.
bool hmac_reinit_keeps_key() {
    static const bool ok = [] {
        std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx(hmac_ctx_new());
        static const unsigned char key[] = "mailapi hmac reinit probe", data[] = "data";
        unsigned char first[32], again[32];
        size_t l1 = 0, l2 = 0;
        return ctx && EVP_MAC_init(ctx.get(), key, sizeof key - 1, nullptr) == 1 &&
               EVP_MAC_update(ctx.get(), data, sizeof data - 1) == 1 &&
               EVP_MAC_final(ctx.get(), first, &l1, sizeof first) == 1 &&
               EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) == 1 &&
               EVP_MAC_update(ctx.get(), data, sizeof data - 1) == 1 &&
               EVP_MAC_final(ctx.get(), again, &l2, sizeof again) == 1 && l1 == 32 && l2 == 32 &&
               std::memcmp(first, again, 32) == 0;
    }();
    return ok;
}

// A context keyed with `key`, ready for update(); nullptr on failure.
EVP_MAC_CTX *hmac_keyed(std::string_view key, bool keep = true) {
    thread_local HmacSlots cache;
    const auto *k = reinterpret_cast<const unsigned char *>(key.data());
    if (!keep || key.empty() || key.size() > HMAC_SLOT_KEY || !hmac_reinit_keeps_key()) {
        if (!cache.uncached) cache.uncached.reset(hmac_ctx_new());
        EVP_MAC_CTX *ctx = cache.uncached.get();
        // An empty key is a valid HMAC key; OpenSSL wants a non-NULL pointer for it.
        static const unsigned char none = 0;
        return ctx && EVP_MAC_init(ctx, key.empty() ? &none : k, key.size(), nullptr) == 1 ? ctx : nullptr;
    }
    for (HmacSlot &s : cache.slot) {
        if (s.len == key.size() && s.ctx && CRYPTO_memcmp(s.key, k, key.size()) == 0) {
            return EVP_MAC_init(s.ctx.get(), nullptr, 0, nullptr) == 1 ? s.ctx.get() : nullptr;
        }
    }
    HmacSlot &s = cache.slot[cache.next];
    cache.next = (cache.next + 1) % HMAC_SLOTS;
    s.len = 0;
    OPENSSL_cleanse(s.key, sizeof s.key);  // no tail of a longer key it held stays
    if (!s.ctx) s.ctx.reset(hmac_ctx_new());
    if (!s.ctx || EVP_MAC_init(s.ctx.get(), k, key.size(), nullptr) != 1) return nullptr;
    std::memcpy(s.key, k, key.size());
    s.len = key.size();
    return s.ctx.get();
}

}  // namespace

const EVP_CIPHER *aes_256_gcm() {
    static EVP_CIPHER *cipher = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
    return cipher;
}

EVP_CIPHER_CTX *aes_gcm_ctx() {
    thread_local std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree> ctx(EVP_CIPHER_CTX_new());
    return ctx.get();
}

namespace {

bool hmac_parts(std::string_view key, const std::string_view *parts, size_t n, unsigned char *out,
                bool keep = true) {
    EVP_MAC_CTX *ctx = hmac_keyed(key, keep);
    if (ctx == nullptr) return false;
    for (size_t i = 0; i < n; i++) {
        if (EVP_MAC_update(ctx, reinterpret_cast<const unsigned char *>(parts[i].data()), parts[i].size()) != 1) {
            return false;
        }
    }
    size_t len = 0;
    return EVP_MAC_final(ctx, out, &len, 32) == 1 && len == 32;
}

}  // namespace

bool hmac_sha256(std::string_view key, std::string_view data, unsigned char *out) {
    return hmac_parts(key, &data, 1, out);
}

bool hmac_sha256_once(std::string_view key, std::string_view data, unsigned char *out) {
    return hmac_parts(key, &data, 1, out, false);
}

bool hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts, unsigned char *out) {
    return hmac_parts(key, parts.begin(), parts.size(), out);
}

}  // namespace mailapi

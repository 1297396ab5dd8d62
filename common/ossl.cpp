#include "ossl.h"

#include <openssl/core_names.h>
#include <openssl/params.h>

#include <memory>

namespace mailapi {

namespace {

struct CipherCtxFree {
    void operator()(EVP_CIPHER_CTX *c) const { EVP_CIPHER_CTX_free(c); }
};
struct MacCtxFree {
    void operator()(EVP_MAC_CTX *c) const { EVP_MAC_CTX_free(c); }
};

EVP_MAC_CTX *hmac_ctx() {
    static EVP_MAC *mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
    thread_local std::unique_ptr<EVP_MAC_CTX, MacCtxFree> ctx;
    if (!ctx && mac) {
        ctx.reset(EVP_MAC_CTX_new(mac));
        char digest[] = "SHA256";
        OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                               OSSL_PARAM_construct_end()};
        if (ctx && EVP_MAC_CTX_set_params(ctx.get(), params) != 1) ctx.reset();
    }
    return ctx.get();
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

bool hmac_sha256(std::string_view key, std::string_view data, unsigned char *out) {
    EVP_MAC_CTX *ctx = hmac_ctx();
    size_t len = 0;
    return ctx && EVP_MAC_init(ctx, reinterpret_cast<const unsigned char *>(key.data()), key.size(), nullptr) == 1 &&
           EVP_MAC_update(ctx, reinterpret_cast<const unsigned char *>(data.data()), data.size()) == 1 &&
           EVP_MAC_final(ctx, out, &len, 32) == 1 && len == 32;
}

}  // namespace mailapi

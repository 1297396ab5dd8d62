// OpenSSL 3 contexts fetched once and reused per thread: implicit fetching on
// every call (EVP_aes_256_gcm(), one-shot HMAC()) costs more than the work.
#pragma once
#include <openssl/evp.h>

#include <initializer_list>
#include <string_view>

namespace mailapi {

// A cipher context for AES-256-GCM, owned by the calling thread.
EVP_CIPHER_CTX *aes_gcm_ctx();
const EVP_CIPHER *aes_256_gcm();

// HMAC-SHA256 of data under key; out must hold 32 bytes. False on failure.
bool hmac_sha256(std::string_view key, std::string_view data, unsigned char *out);
// The same for a key used once (a derived key the caller wipes): not kept
// among the thread's cached keyed contexts.
bool hmac_sha256_once(std::string_view key, std::string_view data, unsigned char *out);
// The same over the parts one after another, as if concatenated (no copy).
bool hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts, unsigned char *out);

}  // namespace mailapi

// The files operators write (keys, keyring): no content crashes the parsers,
// and what they accept is well-formed.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "apikeys.h"
#include "crypto.h"
#include "token.h"

using namespace mailapi;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    std::string in(reinterpret_cast<const char *>(data), size);
    std::vector<ApiKey> keys;
    std::string err;
    if (apikeys_parse(in, keys, err)) {
        for (const ApiKey &k : keys) {
            if (!key_id_valid(k.id) || !tenant_valid(k.tenant) || k.secret.size() < API_SECRET_MIN_BYTES) abort();
            if (k.rate < 0 || (k.rate > 0 && k.burst == 0)) abort();
        }
    } else if (err.empty()) {
        abort();
    }
    Keyring ring;
    if (keyring_parse(in, ring, err)) {
        if (!ring.has_index_key || ring.data_keys.empty()) abort();
        std::string env, out;
        if (!envelope_seal(ring, "aad", "x", env) || !envelope_open(ring, "aad", env, out) || out != "x") abort();
    }
    return 0;
}

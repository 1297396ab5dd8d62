#include "base64.h"

#include <openssl/evp.h>

namespace mailapi {

std::string base64_encode(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3), '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char *>(out.data()),
                            reinterpret_cast<const unsigned char *>(in.data()),
                            static_cast<int>(in.size()));
    out.resize(n < 0 ? 0 : static_cast<size_t>(n));
    return out;
}

std::string base64url_encode(std::string_view in) {
    std::string out = base64_encode(in);
    size_t n = out.size();
    while (n > 0 && out[n - 1] == '=') n--;
    out.resize(n);
    for (char &c : out) {
        c = c == '+' ? '-' : c == '/' ? '_' : c;  // branch-free select
    }
    return out;
}

static bool is_b64(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

static int b64_value(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

bool base64_valid(std::string_view in) {
    if (in.size() % 4 != 0) return false;
    size_t pad = 0;
    if (!in.empty() && in.back() == '=') pad++;
    if (in.size() >= 2 && in[in.size() - 2] == '=') pad++;
    for (size_t i = 0; i < in.size() - pad; i++) {
        if (!is_b64(in[i])) return false;
    }
    // Canonical only: the bits past the last byte must be zero, so that every
    // value has one encoding.
    if (pad == 1 && (b64_value(in[in.size() - 2]) & 0x3)) return false;
    if (pad == 2 && (b64_value(in[in.size() - 3]) & 0xf)) return false;
    return true;
}

bool base64_decode(std::string_view in, std::string &out) {
    if (!base64_valid(in)) return false;
    size_t pad = 0;
    if (!in.empty() && in.back() == '=') pad++;
    if (in.size() >= 2 && in[in.size() - 2] == '=') pad++;
    std::string buf(in.size() / 4 * 3, '\0');
    int n = EVP_DecodeBlock(reinterpret_cast<unsigned char *>(buf.data()),
                            reinterpret_cast<const unsigned char *>(in.data()),
                            static_cast<int>(in.size()));
    if (n < 0 || static_cast<size_t>(n) < pad) return false;
    buf.resize(static_cast<size_t>(n) - pad);
    out.swap(buf);
    return true;
}

bool base64url_decode(std::string_view in, std::string &out) {
    if (in.size() % 4 == 1) return false;
    std::string std_form;
    std_form.reserve(in.size() + 3);
    for (char c : in) {
        if (c == '-') std_form.push_back('+');
        else if (c == '_') std_form.push_back('/');
        else if (c == '+' || c == '/' || c == '=') return false;
        else std_form.push_back(c);
    }
    while (std_form.size() % 4 != 0) std_form.push_back('=');
    if (!base64_decode(std_form, out)) return false;
    // Reject non-canonical encodings (trailing bits set), so one value has one form.
    return base64url_encode(out) == in;
}

}  // namespace mailapi

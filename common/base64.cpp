#include "base64.h"

#include <openssl/evp.h>

#include <array>
#include <cstdint>

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

// One pass with a table: envelopes are decoded once per delivery.
bool base64url_decode(std::string_view in, std::string &out) {
    static const std::array<signed char, 256> value = [] {
        std::array<signed char, 256> t{};
        t.fill(-1);
        const char *alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (int i = 0; i < 64; i++) t[static_cast<unsigned char>(alphabet[i])] = static_cast<signed char>(i);
        return t;
    }();
    auto v = [&](size_t i) { return static_cast<int>(value[static_cast<unsigned char>(in[i])]); };
    size_t rem = in.size() % 4;
    if (rem == 1) return false;
    std::string buf(in.size() / 4 * 3 + (rem ? rem - 1 : 0), '\0');
    size_t o = 0, i = 0;
    for (; i + 4 <= in.size(); i += 4) {
        int a = v(i), b = v(i + 1), c = v(i + 2), d = v(i + 3);
        if ((a | b | c | d) < 0) return false;
        uint32_t n = static_cast<uint32_t>(a) << 18 | static_cast<uint32_t>(b) << 12 | static_cast<uint32_t>(c) << 6 |
                     static_cast<uint32_t>(d);
        buf[o++] = static_cast<char>(n >> 16);
        buf[o++] = static_cast<char>(n >> 8);
        buf[o++] = static_cast<char>(n);
    }
    // Canonical only: the bits past the last byte must be zero, so that every
    // value has one encoding.
    if (rem == 2) {
        int a = v(i), b = v(i + 1);
        if ((a | b) < 0 || (b & 0xf)) return false;
        buf[o++] = static_cast<char>(a << 2 | b >> 4);
    } else if (rem == 3) {
        int a = v(i), b = v(i + 1), c = v(i + 2);
        if ((a | b | c) < 0 || (c & 0x3)) return false;
        uint32_t n = static_cast<uint32_t>(a) << 10 | static_cast<uint32_t>(b) << 4 | static_cast<uint32_t>(c) >> 2;
        buf[o++] = static_cast<char>(n >> 8);
        buf[o++] = static_cast<char>(n);
    }
    out.swap(buf);
    return true;
}

}  // namespace mailapi

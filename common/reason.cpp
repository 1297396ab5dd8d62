#include "reason.h"

#include <cctype>
#include <cstdint>

namespace mailapi {

namespace {

bool local_char(unsigned char c) {
    return std::isalnum(c) || c >= 0x80 || std::string_view("!#$%&'*+/=?^_`{|}~.-").find(static_cast<char>(c)) !=
                                               std::string_view::npos;
}

bool domain_char(unsigned char c) { return std::isalnum(c) || c >= 0x80 || c == '-' || c == '.'; }

}  // namespace

// RFC 3629: no overlongs, surrogates or code points past U+10FFFF.
std::string valid_utf8(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    for (size_t i = 0; i < in.size();) {
        unsigned char c = static_cast<unsigned char>(in[i]);
        size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = n > 0 && i + n <= in.size();
        uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
        for (size_t k = 1; ok && k < n; k++) {
            unsigned char cc = static_cast<unsigned char>(in[i + k]);
            ok = (cc & 0xC0) == 0x80;
            cp = (cp << 6) | (cc & 0x3F);
        }
        ok = ok && !(n == 2 && cp < 0x80) && !(n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) &&
             !(n == 4 && (cp < 0x10000 || cp > 0x10FFFF));
        if (!ok) {
            out.push_back('?');
            i++;
            continue;
        }
        if (n == 1 && (c < 0x20 || c == 0x7f)) out.push_back(' ');
        else out.append(in.substr(i, n));
        i += n;
    }
    return out;
}

std::string safe_reason(std::string_view text) {
    const size_t max = 200;
    std::string s = valid_utf8(text.substr(0, 4 * max));
    // Every run of address characters holding an '@' (x@y, x@@y, @y, x@)
    // becomes <address>: scrubbing a little too much beats leaking. Quotes
    // and full stops around it are left as punctuation.
    auto in_run = [](unsigned char c) { return local_char(c) || domain_char(c) || c == '@'; };
    for (size_t at = s.find('@'); at != std::string::npos; at = s.find('@', at)) {
        size_t start = at, end = at + 1;
        while (start > 0 && in_run(static_cast<unsigned char>(s[start - 1]))) start--;
        while (end < s.size() && in_run(static_cast<unsigned char>(s[end]))) end++;
        // a quoted local part ("john smith"@x, "a\"b"@x) and a domain
        // literal (x@[192.0.2.1]) are the address too
        if (start == at && at >= 2 && s[at - 1] == '"') {
            for (size_t q = at - 1; q-- > 0;) {
                if (s[q] == '"' && (q == 0 || s[q - 1] != '\\')) {
                    start = q;
                    break;
                }
            }
        }
        if (end == at + 1 && end < s.size() && s[end] == '[') {
            size_t close = s.find(']', end);
            if (close != std::string::npos) end = close + 1;
        }
        auto punctuation = [](char c) { return c == '\'' || c == '`' || c == '.'; };
        while (start < at && punctuation(s[start])) start++;
        while (end > at + 1 && punctuation(s[end - 1])) end--;
        if (end - start == 1) {  // a lone '@'
            at++;
            continue;
        }
        s.replace(start, end - start, "<address>");
        at = start + 9;
    }
    if (s.size() <= max) return s;
    size_t cut = max;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) cut--;
    return s.substr(0, cut) + "...";
}

}  // namespace mailapi

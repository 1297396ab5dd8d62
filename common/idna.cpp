#include "idna.h"

#include <idn2.h>

#include <cstdlib>
#include <memory>

namespace mailapi {

namespace {

bool ascii(std::string_view s) {
    for (unsigned char c : s) {
        if (c >= 0x80) return false;
    }
    return true;
}

struct Free {
    void operator()(char *p) const { std::free(p); }
};

// An ASCII domain's A-labels ("xn--...") must be valid punycode of a valid
// U-label: one that only looks like it names no domain anyone can register.
bool a_labels_valid(const std::string &lower) {
    if (lower.find("xn--") == std::string::npos) return true;
    char *unicode = nullptr;
    int rc = idn2_to_unicode_8z8z(lower.c_str(), &unicode, 0);
    std::unique_ptr<char, Free> owned(unicode);
    if (rc != IDN2_OK || unicode == nullptr) return false;
    char *back = nullptr;
    rc = idn2_to_ascii_8z(unicode, &back, IDN2_NONTRANSITIONAL);
    std::unique_ptr<char, Free> owned_back(back);
    return rc == IDN2_OK && back != nullptr && lower == back;
}

}  // namespace

bool domain_to_ascii(std::string_view domain, std::string &out) {
    if (ascii(domain) || (!domain.empty() && domain.front() == '[')) {
        out.assign(domain);
        for (char &c : out) {
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
        }
        return !out.empty() && (out.front() == '[' || a_labels_valid(out));
    }
    if (domain.size() > 253) return false;
    std::string in(domain);  // idn2 takes a NUL-terminated string
    char *converted = nullptr;
    int rc = idn2_to_ascii_8z(in.c_str(), &converted, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    std::unique_ptr<char, Free> owned(converted);
    if (rc != IDN2_OK || converted == nullptr) return false;
    out.assign(converted);
    return !out.empty() && out.size() <= 253;
}

bool address_to_ascii_domain(std::string_view address, std::string &out) {
    size_t at = address.rfind('@');
    if (at == std::string_view::npos) return false;
    std::string domain;
    if (!domain_to_ascii(address.substr(at + 1), domain)) return false;
    out.assign(address.substr(0, at + 1));
    out += domain;
    return true;
}

bool local_part_needs_utf8(std::string_view address) {
    size_t at = address.rfind('@');
    return !ascii(address.substr(0, at == std::string_view::npos ? address.size() : at));
}

}  // namespace mailapi

#include "mime.h"

#include "base64.h"

namespace mailapi {

namespace {

bool plain_ascii(std::string_view s) {
    for (unsigned char c : s) {
        if (c < 0x20 || c > 0x7e) return false;
    }
    // An "=?" could be read as the start of an encoded word.
    return s.find("=?") == std::string_view::npos;
}

}  // namespace

std::string mime_header_text(std::string_view text) {
    if (plain_ascii(text)) return std::string(text);
    // 45 bytes encode to 60 characters: with "=?UTF-8?B?" and "?=" a word stays
    // within 76. Words split on UTF-8 character boundaries only.
    std::string out;
    size_t pos = 0;
    while (pos < text.size()) {
        size_t end = std::min(pos + 45, text.size());
        while (end < text.size() && end > pos && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) end--;
        if (!out.empty()) out += "\r\n ";
        out += "=?UTF-8?B?" + base64_encode(text.substr(pos, end - pos)) + "?=";
        pos = end;
    }
    return out;
}

std::string mime_address(const Address &a) {
    if (a.name.empty()) return "<" + a.email + ">";
    std::string name;
    if (plain_ascii(a.name)) {
        name = "\"";
        for (char c : a.name) {
            if (c == '"' || c == '\\') name.push_back('\\');
            name.push_back(c);
        }
        name += "\"";
    } else {
        name = mime_header_text(a.name);
    }
    return name + " <" + a.email + ">";
}

std::string utc_strftime(time_t t, const char *format) {
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[64];
    return strftime(buf, sizeof buf, format, &tm) ? buf : "";
}

std::string rfc5322_date(time_t t) { return utc_strftime(t, "%a, %d %b %Y %H:%M:%S +0000"); }

}  // namespace mailapi

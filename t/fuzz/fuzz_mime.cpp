// Header folding and encoding, and the bodies of outgoing mail: any text as
// a Subject or custom header value and as a body. What comes out has no line
// over 998 octets, no CR or LF but as CRLF, only 7-bit bytes, and reads back
// (RFC 2047 decoding, quoted-printable decoding) as exactly what went in;
// a message composed of it is 7-bit and within the line limit too.
// A caller's header (not encoded for its length: it may be structured) has
// no line over 998 either, and reads back the same; no line of a
// quoted-printable body (after a hard or a soft break) begins "From " or ".".
// Input: byte 0 chooses what is fuzzed, the rest is the text.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "base64.h"
#include "message.h"
#include "mime.h"

using namespace mailapi;

namespace {

void check_lines(const std::string &s, bool eight_bit_ok) {
    size_t start = 0;
    while (start < s.size()) {
        size_t crlf = s.find("\r\n", start);
        if (crlf == std::string::npos) crlf = s.size();
        if (crlf - start > MIME_LINE_HARD) abort();
        for (size_t i = start; i < crlf; i++) {
            unsigned char c = static_cast<unsigned char>(s[i]);
            if (c == '\r' || c == '\n' || (c >= 0x80 && !eight_bit_ok)) abort();
        }
        start = crlf + 2;
    }
}

int hex(char c) { return c <= '9' ? c - '0' : c - 'A' + 10; }

// RFC 2047 as a reader applies it to an unfolded value.
std::string decode_2047(const std::string &v) {
    std::string out;
    bool last_encoded = false;
    size_t i = 0;
    while (i < v.size()) {
        size_t ws = i;
        while (i < v.size() && (v[i] == ' ' || v[i] == '\t')) i++;
        std::string space = v.substr(ws, i - ws);
        size_t start = i;
        while (i < v.size() && v[i] != ' ' && v[i] != '\t') i++;
        std::string w = v.substr(start, i - start);
        bool enc = w.size() >= 12 && w.compare(0, 8, "=?UTF-8?") == 0 && w.compare(w.size() - 2, 2, "?=") == 0;
        if (!(enc && last_encoded)) out += space;
        if (!enc) {
            out += w;
        } else if (w[8] == 'B') {
            std::string bytes;
            if (!base64_decode(w.substr(10, w.size() - 12), bytes)) abort();
            out += bytes;
        } else {
            for (size_t k = 10; k + 2 < w.size(); k++) {
                if (w[k] == '_') out += ' ';
                else if (w[k] == '=') {
                    out += static_cast<char>(hex(w[k + 1]) * 16 + hex(w[k + 2]));
                    k += 2;
                } else out += w[k];
            }
        }
        last_encoded = enc;
    }
    return out;
}

std::string unfold(const std::string &field) {
    std::string v;
    for (size_t i = field.find(':') + 2; i < field.size(); i++) {
        if (field[i] == '\r') {
            i++;
            continue;
        }
        v.push_back(field[i]);
    }
    return v;
}

// A field's value with every CRLF taken out (a fold may come right after
// the colon), after "Name: ".
std::string unfold_any(const std::string &field) {
    std::string line;
    for (size_t i = 0; i < field.size(); i++) {
        if (field.compare(i, 2, "\r\n") == 0) {
            i++;
            continue;
        }
        line.push_back(field[i]);
    }
    return line.substr(std::min(line.size(), line.find(':') + 2));  // "Name:" alone: an empty value
}

std::string qp_decode(const std::string &qp) {
    std::string out;
    for (size_t i = 0; i < qp.size(); i++) {
        if (qp[i] != '=') {
            out.push_back(qp[i]);
        } else if (qp.compare(i + 1, 2, "\r\n") == 0) {
            i += 2;  // a soft break
        } else {
            out += static_cast<char>(hex(qp[i + 1]) * 16 + hex(qp[i + 2]));
            i += 2;
        }
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    std::string text(reinterpret_cast<const char *>(data) + 1, size - 1);
    switch (data[0] % 4) {
    case 0: {  // a subject: what the edge lets through (no control characters but tab, at most 998)
        if (text.size() > 998 || text.empty()) return 0;
        for (unsigned char c : text) {
            if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
        }
        std::string f = mime_field_unstructured("Subject", text);
        check_lines(f, false);
        if (decode_2047(unfold(f)) != text) abort();
        break;
    }
    case 1: {  // a body: any text
        std::string crlf = mime_crlf(text);
        std::string qp = mime_quoted_printable(crlf);
        check_lines(qp, false);
        for (size_t p = 0, n; (n = qp.find("\r\n", p)) != std::string::npos || p < qp.size(); p = n + 2) {
            if (n == std::string::npos) n = qp.size();
            if (n - p > 76) abort();
        }
        if (qp_decode(qp) != crlf) abort();
        for (size_t p = 0; (p = qp.find("\r\n", p)) != std::string::npos; p += 2) {
            if (qp.compare(p + 2, 5, "From ") == 0 || qp.compare(p + 2, 1, ".") == 0) abort();
        }
        if (qp.compare(0, 5, "From ") == 0 || qp.compare(0, 1, ".") == 0) abort();
        break;
    }
    case 3: {  // a caller's header: a name of 1..76 (its length from byte 1), a value as the edge lets through
        if (text.empty()) return 0;
        std::string name = "X-" + std::string(static_cast<unsigned char>(text[0]) % 75, 'n');
        std::string value = text.substr(1);
        if (value.size() > 998) return 0;
        for (unsigned char c : value) {
            if ((c < 0x20 && c != '\t') || c == 0x7f) return 0;
        }
        std::string f = mime_field_unstructured(name, value, false);
        check_lines(f, false);
        if (decode_2047(unfold_any(f)) != value) abort();
        break;
    }
    default: {  // a whole message around it
        Message m;
        m.from = {"a@example.com", text.size() < 256 ? text : ""};
        m.to = {{"b@example.org", ""}};
        m.subject = "s";
        m.text = text;
        m.html = text;
        m.attachments.push_back({text.size() < 200 ? text : "f", "application/octet-stream",
                                 base64_encode(text), text.size(), false});
        ComposeOptions o;
        o.message_id = "<id@example.com>";
        o.boundary_seed = "id";
        std::string mail = mime_compose(m, o);
        bool names_ok = true;
        for (unsigned char c : m.from.name) names_ok &= c >= 0x20 && c != 0x7f;
        if (names_ok) check_lines(mail, false);
        break;
    }
    }
    return 0;
}

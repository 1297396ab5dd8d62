#include "mime.h"

#include <algorithm>
#include <cstring>

#include "base64.h"
#include "idna.h"

namespace mailapi {

namespace {

bool is_wsp(char c) { return c == ' ' || c == '\t'; }

bool printable_ascii(std::string_view s) {
    for (unsigned char c : s) {
        if (c < 0x21 || c > 0x7e) return false;
    }
    return true;
}

// A word that cannot travel as it is in a header field: a byte outside
// printable ASCII, or text a reader could take for an encoded word.
bool needs_encoding(std::string_view word) { return !printable_ascii(word) || word.find("=?") != std::string_view::npos; }

// ---------------------------------------------------------------- encoded words (RFC 2047)

constexpr size_t ENCODED_WORD_MAX = 75;                    // 2047 section 2
constexpr size_t ENCODED_OVERHEAD = 12;  // "=?UTF-8?Q?" and "?="

// Q as a phrase may have it (5.3), which is also valid in unstructured text.
bool q_literal(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || std::strchr("!*+-/", c);
}

size_t q_size(std::string_view s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c == ' ' || q_literal(c)) ? 1 : 3;
    return n;
}

size_t b_size(size_t bytes) { return (bytes + 2) / 3 * 4; }

const char HEX[] = "0123456789ABCDEF";

void q_encode(std::string_view s, std::string &out) {
    for (unsigned char c : s) {
        if (c == ' ') {
            out.push_back('_');
        } else if (q_literal(c)) {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('=');
            out.push_back(HEX[c >> 4]);
            out.push_back(HEX[c & 15]);
        }
    }
}

size_t utf8_char_len(std::string_view s, size_t i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return std::min(n, s.size() - i);
}

// How many bytes of `s` go into one encoded word of at most `room`
// characters (whole UTF-8 characters; at least one, whatever its size).
size_t encoded_chunk(std::string_view s, bool q, size_t room) {
    size_t take = 0, chars = ENCODED_OVERHEAD;
    while (take < s.size()) {
        size_t len = utf8_char_len(s, take);
        size_t next = q ? chars + q_size(s.substr(take, len)) : ENCODED_OVERHEAD + b_size(take + len);
        if (next > room && take > 0) break;
        chars = next;
        take += len;
        if (chars >= room) break;
    }
    return take;
}

std::string encoded_word(std::string_view bytes, bool q) {
    std::string w = q ? "=?UTF-8?Q?" : "=?UTF-8?B?";
    if (q) q_encode(bytes, w);
    else w += base64_encode(bytes);
    w += "?=";
    return w;
}

// ---------------------------------------------------------------- folding

// Lays out one header field: tokens joined by the whitespace before them,
// a line broken (CRLF before that whitespace) when the next token would go
// past 78 characters and the line already holds one.
class Field {
public:
    explicit Field(std::string_view name) : out_(name) {
        out_ += ':';
        line_ = out_.size();
    }
    size_t room() const { return line_ < MIME_LINE_SOFT ? MIME_LINE_SOFT - line_ : 0; }

    // The first token may go on a line of its own too (FWS is allowed
    // after the colon), when it would take the field's first line past 998.
    void add(std::string_view ws, std::string_view token) {
        size_t limit = tokens_ > 0 ? MIME_LINE_SOFT : MIME_LINE_HARD;
        if (!ws.empty() && line_ + ws.size() + token.size() > limit) fold();
        out_ += ws;
        out_ += token;
        line_ += ws.size() + token.size();
        tokens_++;
    }
    // Text as encoded words that fill the lines (whitespace between encoded
    // words is not part of the text, RFC 2047 6.2, so they can be folded
    // anywhere).
    void add_encoded(std::string_view ws, std::string_view text) {
        bool q = q_size(text) <= b_size(text.size());
        size_t pos = 0;
        while (pos < text.size()) {
            std::string_view lead = pos == 0 ? ws : std::string_view(" ");
            size_t room_here = room() > lead.size() ? room() - lead.size() : 0;
            if (tokens_ > 0 && room_here < ENCODED_OVERHEAD + 8) {
                fold();
                room_here = MIME_LINE_SOFT - lead.size();
            }
            size_t n = encoded_chunk(text.substr(pos), q, std::min(ENCODED_WORD_MAX, room_here));
            add_unfolded(lead, encoded_word(text.substr(pos, n), q));
            pos += n;
        }
    }
    std::string done() {
        out_ += "\r\n";
        return std::move(out_);
    }

private:
    void fold() {
        out_ += "\r\n";
        line_ = 0;
    }
    void add_unfolded(std::string_view ws, const std::string &token) {
        out_ += ws;
        out_ += token;
        line_ += ws.size() + token.size();
        tokens_++;
    }

    std::string out_;
    size_t line_ = 0;
    size_t tokens_ = 0;
};

struct Word {
    std::string_view ws, text;  // the whitespace before the word, and the word
};

std::vector<Word> split_words(std::string_view s) {
    std::vector<Word> words;
    size_t i = 0;
    while (i < s.size()) {
        size_t ws_start = i;
        while (i < s.size() && is_wsp(s[i])) i++;
        size_t word_start = i;
        while (i < s.size() && !is_wsp(s[i])) i++;
        // whitespace at the end belongs to the last word's run (below),
        // unless there is no word at all
        if (word_start == i && !words.empty()) break;
        words.push_back({s.substr(ws_start, word_start - ws_start), s.substr(word_start, i - word_start)});
    }
    return words;
}

// Unstructured text into `f`: plain words as they are, runs of words that
// need encoding as one encoded text (with the whitespace inside the run, as
// whitespace between two encoded words would be lost). Whitespace before the
// first word and after the last goes inside encoded words too, or readers
// would drop it.
void add_unstructured(Field &f, std::string_view value, bool encode_long_words, size_t first_line_used) {
    std::vector<Word> words = split_words(value);
    auto encode = [&](size_t i) {
        const Word &w = words[i];
        if (needs_encoding(w.text) || w.text.empty()) return true;  // empty: trailing whitespace only
        if (i == 0 && !w.ws.empty()) return true;                  // leading whitespace
        if (i + 1 == words.size() && w.text.data() + w.text.size() != value.data() + value.size()) return true;
        // a word too long even for a line of its own (after a fold, behind
        // its whitespace) can only go as encoded words
        if ((i == 0 ? 1 : w.ws.size()) + w.text.size() > MIME_LINE_HARD) return true;
        size_t line = 1 + w.text.size() + (i == 0 ? first_line_used : 0);
        return encode_long_words && line > MIME_LINE_HARD;
    };
    size_t i = 0;
    while (i < words.size()) {
        if (!encode(i)) {
            f.add(i == 0 ? std::string_view(" ") : words[i].ws, words[i].text);
            i++;
            continue;
        }
        size_t j = i;
        while (j + 1 < words.size() && encode(j + 1)) j++;
        // the run's text: from its first word (with a leading space it
        // carries, for the first) to the end of its last, or of the value
        const char *begin = i == 0 ? value.data() : words[i].text.data();
        const char *end = j + 1 == words.size() ? value.data() + value.size() : words[j].text.data() + words[j].text.size();
        f.add_encoded(i == 0 ? std::string_view(" ") : words[i].ws, std::string_view(begin, static_cast<size_t>(end - begin)));
        i = j + 1;
    }
}

// ---------------------------------------------------------------- addresses

bool atext(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && std::strchr("!#$%&'*+-/=?^_`{|}~", c));
}

// A display name as RFC 5322 atoms (words of atext and single spaces).
bool plain_phrase(std::string_view name) {
    if (name.empty() || name.front() == ' ' || name.back() == ' ' || name.find("  ") != std::string_view::npos) {
        return false;
    }
    if (name.find("=?") != std::string_view::npos) return false;
    for (unsigned char c : name) {
        if (c != ' ' && !atext(c)) return false;
    }
    return true;
}

bool quotable(std::string_view name) {
    for (unsigned char c : name) {
        if (c < 0x20 || c > 0x7e) return false;
    }
    return true;
}

std::string quoted(std::string_view name) {
    std::string q = "\"";
    for (char c : name) {
        if (c == '"' || c == '\\') q.push_back('\\');
        q.push_back(c);
    }
    q += '"';
    return q;
}

std::string addr_spec(const std::string &email, bool utf8) {
    std::string out;
    if (!address_to_ascii_domain(email, out)) out = email;
    (void)utf8;  // a UTF-8 local part stays as it is: the caller sends such a message with SMTPUTF8
    return out;
}

// One address into `f`; `sep` goes after it (",", or nothing for the last).
void add_address(Field &f, const Address &a, bool utf8, std::string_view ws, std::string_view sep) {
    std::string spec = addr_spec(a.email, utf8);
    if (a.name.empty()) {
        f.add(ws, spec + std::string(sep));
        return;
    }
    if (plain_phrase(a.name)) {
        std::vector<Word> words = split_words(a.name);
        for (size_t i = 0; i < words.size(); i++) f.add(i == 0 ? ws : words[i].ws, words[i].text);
    } else if (quotable(a.name) && a.name.find("=?") == std::string::npos) {
        // (text that looks like an encoded word is decoded inside quotes
        // too by most readers, against RFC 2047 5: it goes encoded)
        f.add(ws, quoted(a.name));
    } else {
        f.add_encoded(ws, a.name);
    }
    f.add(" ", "<" + spec + ">" + std::string(sep));
}

// ---------------------------------------------------------------- bodies

bool is_7bit_text(std::string_view crlf_text) {
    size_t line = 0;
    for (size_t i = 0; i < crlf_text.size(); i++) {
        unsigned char c = static_cast<unsigned char>(crlf_text[i]);
        if (c >= 0x80 || c == 0) return false;
        if (c == '\r') {
            line = 0;
            i++;  // the LF
            if (crlf_text.compare(i + 1, 5, "From ") == 0) return false;  // an mbox would mangle it
            continue;
        }
        if (++line > MIME_LINE_HARD) return false;
    }
    // "=_" is how our boundaries begin: a part that has it is encoded
    return crlf_text.compare(0, 5, "From ") != 0 && crlf_text.find("=_") == std::string_view::npos;
}

// Base64 in lines of 76, the last without its CRLF (a part's content ends
// where the CRLF before the next boundary begins).
void base64_lines(std::string_view b64, std::string &out) {
    for (size_t i = 0; i < b64.size(); i += 76) {
        if (i > 0) out += "\r\n";
        out.append(b64.substr(i, 76));
    }
}

// `whole`: the part is the whole message, whose end (the CRLF before the
// final ".") would add a line break the text may not have: quoted-printable
// ends it with a soft break instead, so that it comes back as it was sent.
std::string body_part(std::string_view text, const char *type, std::string &headers, bool whole = false) {
    std::string crlf = mime_crlf(text);
    headers += "Content-Type: ";
    headers += type;
    headers += "; charset=utf-8\r\n";
    bool open_end = whole && (crlf.size() < 2 || crlf.compare(crlf.size() - 2, 2, "\r\n") != 0);
    if (is_7bit_text(crlf) && !open_end) {
        headers += "Content-Transfer-Encoding: 7bit\r\n";
        return crlf;
    }
    std::string qp = mime_quoted_printable(crlf);
    if (open_end) qp += "=\r\n";
    if (qp.size() <= b_size(crlf.size()) * 78 / 76 || (open_end && is_7bit_text(crlf))) {
        headers += "Content-Transfer-Encoding: quoted-printable\r\n";
        return qp;
    }
    headers += "Content-Transfer-Encoding: base64\r\n";
    std::string out;
    base64_lines(base64_encode(crlf), out);
    return out;
}

// RFC 2231: a parameter as name="value", or percent-encoded UTF-8 in
// continuations of at most ~60 characters when it is not plain ASCII or too
// long for a line, each on its own line.
bool attr_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && std::strchr("!#$&+-.^_`|~", c));
}

std::string parameter(std::string_view name, std::string_view value) {
    if (quotable(value) && value.size() + name.size() < 60 && value.find("=?") == std::string_view::npos) {
        return ";\r\n " + std::string(name) + "=" + quoted(value);
    }
    std::vector<std::string> pieces(1);
    for (size_t i = 0; i < value.size();) {
        size_t len = utf8_char_len(value, i);
        std::string enc;
        for (size_t k = i; k < i + len; k++) {
            unsigned char c = static_cast<unsigned char>(value[k]);
            if (attr_char(c)) {
                enc.push_back(static_cast<char>(c));
            } else {
                enc.push_back('%');
                enc.push_back(HEX[c >> 4]);
                enc.push_back(HEX[c & 15]);
            }
        }
        if (pieces.back().size() + enc.size() > 60) pieces.emplace_back();
        pieces.back() += enc;
        i += len;
    }
    std::string out;
    for (size_t k = 0; k < pieces.size(); k++) {
        out += ";\r\n " + std::string(name) + "*" + (pieces.size() > 1 ? std::to_string(k) + "*" : "") + "=" +
               (k == 0 ? "utf-8''" : "") + pieces[k];
    }
    return out;
}

// A type MIME allows no base64 for (RFC 2045 6.4: multipart/*; RFC 2046
// 5.2: message/*): readers take such a part's base64 for a structure
// (Python reads it as a multipart without a boundary, or as a message whose
// header is the base64 text). An attachment of one goes as bytes.
std::string attachment_type(const std::string &type) {
    auto is = [&type](const char *prefix) {
        size_t n = std::strlen(prefix);
        return type.size() > n && std::equal(prefix, prefix + n, type.begin(), [](char p, char c) {
                   return p == std::tolower(static_cast<unsigned char>(c));
               });
    };
    return is("multipart/") || is("message/") ? "application/octet-stream" : type;
}

std::string attachment_part(const Attachment &a) {
    std::string part = "Content-Type: " + attachment_type(a.content_type) + parameter("name", a.filename) + "\r\n";
    part += "Content-Disposition: attachment" + parameter("filename", a.filename) + "\r\n";
    part += "Content-Transfer-Encoding: base64\r\n\r\n";
    base64_lines(a.content_base64, part);  // canonical base64, validated when accepted: only laid out
    return part;
}

std::string multipart(const std::string &boundary, const std::vector<std::string> &parts) {
    std::string out;
    // the CRLF before each delimiter is the delimiter's (RFC 2046 5.1.1):
    // a part that ends with a line break keeps it
    for (const std::string &p : parts) out += "--" + boundary + "\r\n" + p + "\r\n";
    out += "--" + boundary + "--\r\n";
    return out;
}

}  // namespace

// ---------------------------------------------------------------- public

std::string mime_field_unstructured(std::string_view name, std::string_view value, bool encode_long_words) {
    Field f(name);
    add_unstructured(f, value, encode_long_words, name.size() + 2);
    return f.done();
}

std::string mime_field_addresses(std::string_view name, const std::vector<Address> &list, bool utf8) {
    Field f(name);
    for (size_t i = 0; i < list.size(); i++) add_address(f, list[i], utf8, " ", i + 1 < list.size() ? "," : "");
    return f.done();
}

namespace {

// A folded field's value on one line: its CRLFs taken out (a fold may
// come right after the colon), then the "Name: " before it.
std::string unfold_value(const std::string &field) {
    std::string line;
    for (size_t i = 0; i < field.size(); i++) {
        if (field[i] == '\r' && i + 1 < field.size() && field[i + 1] == '\n') {
            i++;
            continue;
        }
        line.push_back(field[i]);
    }
    return line.substr(std::min(line.size(), line.find(':') + 2));
}

}  // namespace

// Not encoded for its length: the value is given unfolded, and a long word
// that fits a line of its own (a URL) must stay readable.
std::string mime_header_text(std::string_view text) { return unfold_value(mime_field_unstructured("X", text, false)); }

std::string mime_address(const Address &a) {
    if (a.name.empty()) return "<" + addr_spec(a.email, false) + ">";
    return unfold_value(mime_field_addresses("X", {a}, false));
}

bool message_needs_smtputf8(const Message &m) {
    if (local_part_needs_utf8(m.from.email) || (m.has_reply_to && local_part_needs_utf8(m.reply_to.email))) return true;
    for (const auto *list : {&m.to, &m.cc, &m.bcc}) {
        for (const Address &a : *list) {
            if (local_part_needs_utf8(a.email)) return true;
        }
    }
    return false;
}

std::string mime_crlf(std::string_view text) {
    std::string out;
    out.reserve(text.size() + text.size() / 32);
    for (size_t i = 0; i < text.size(); i++) {
        char c = text[i];
        if (c == '\r') {
            if (i + 1 < text.size() && text[i + 1] == '\n') i++;
            out += "\r\n";
        } else if (c == '\n') {
            out += "\r\n";
        } else {
            out.push_back(c);
        }
    }
    return out;
}

std::string mime_quoted_printable(std::string_view text) {
    std::string out;
    out.reserve(text.size() + text.size() / 8);
    size_t line = 0;
    auto put = [&](const char *s, size_t n) {
        if (line + n > 75) {  // 75 + the soft break's "=" = 76
            out += "=\r\n";
            line = 0;
        }
        out.append(s, n);
        line += n;
    };
    for (size_t i = 0; i < text.size(); i++) {
        unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') {
            out += "\r\n";
            line = 0;
            i++;
            continue;
        }
        bool at_line_end = i + 1 == text.size() || text[i + 1] == '\r';
        bool literal = (c >= 33 && c <= 126 && c != '=') || ((c == ' ' || c == '\t') && !at_line_end);
        // a line that begins "From " or "." is changed by mbox files and
        // some relays: its first character is encoded (also where a soft
        // break would put it at the start of a line)
        bool line_start = line == 0 || line + 1 > 75;
        if (line_start && (c == '.' || (c == 'F' && text.compare(i, 5, "From ") == 0))) literal = false;
        if (literal) {
            char ch = static_cast<char>(c);
            put(&ch, 1);
        } else {
            char esc[3] = {'=', HEX[c >> 4], HEX[c & 15]};
            put(esc, 3);
        }
    }
    return out;
}

std::string mime_compose(const Message &m, const ComposeOptions &o) {
    std::string h;
    h += "Date: " + rfc5322_date(o.date) + "\r\n";
    h += mime_field_addresses("From", {m.from}, o.utf8);
    h += mime_field_addresses("To", m.to, o.utf8);
    if (!m.cc.empty()) h += mime_field_addresses("Cc", m.cc, o.utf8);
    if (m.has_reply_to) h += mime_field_addresses("Reply-To", {m.reply_to}, o.utf8);
    h += mime_field_unstructured("Subject", m.subject);
    h += "Message-ID: " + o.message_id + "\r\n";
    h += "MIME-Version: 1.0\r\n";
    for (const auto &hdr : m.headers) h += mime_field_unstructured(hdr.first, hdr.second, false);
    for (const auto &hdr : o.extra_headers) h += mime_field_unstructured(hdr.first, hdr.second, false);

    std::string boundary = "=_mailapi." + o.boundary_seed;
    // the message's text: one part, or text and html as alternatives
    std::string text_headers, text;
    if (!m.text.empty() && !m.html.empty()) {
        std::string th, tb = body_part(m.text, "text/plain", th);
        std::string hh, hb = body_part(m.html, "text/html", hh);
        std::string alt = boundary + ".alt";
        text_headers = "Content-Type: multipart/alternative;\r\n boundary=\"" + alt + "\"\r\n";
        text = multipart(alt, {th + "\r\n" + tb, hh + "\r\n" + hb});
    } else if (!m.text.empty()) {
        text = body_part(m.text, "text/plain", text_headers, m.attachments.empty());
    } else {
        text = body_part(m.html, "text/html", text_headers, m.attachments.empty());
    }
    if (m.attachments.empty()) return h + text_headers + "\r\n" + text;

    std::vector<std::string> parts;
    parts.push_back(text_headers + "\r\n" + text);
    std::string().swap(text);
    for (const Attachment &a : m.attachments) parts.push_back(attachment_part(a));
    std::string mixed = boundary + ".mix";
    return h + "Content-Type: multipart/mixed;\r\n boundary=\"" + mixed + "\"\r\n\r\n" + multipart(mixed, parts);
}

std::string utc_strftime(time_t t, const char *format) {
    struct tm tm;
    gmtime_r(&t, &tm);
    char buf[64];
    return strftime(buf, sizeof buf, format, &tm) ? buf : "";
}

std::string rfc5322_date(time_t t) { return utc_strftime(t, "%a, %d %b %Y %H:%M:%S +0000"); }

}  // namespace mailapi

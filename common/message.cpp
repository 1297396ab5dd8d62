#include "message.h"

#include <jansson.h>
#include <simdjson.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <memory>

#include "base64.h"
#include "idna.h"
#include "json.h"
#include "links.h"

static_assert(mailapi::MessageLimits().max_placeholders == mailapi::links::PLACEHOLDERS_MAX,
              "the API refuses what personalize would not fill");

namespace mailapi {

namespace {


bool fail(FieldError &err, std::string code, std::string message, std::string field,
          int status = 422) {
    err.status = status;
    err.code = std::move(code);
    err.message = std::move(message);
    err.field = std::move(field);
    return false;
}

bool is_atext(unsigned char c) {
    if (c >= 0x80) return true;  // UTF-8 (SMTPUTF8, RFC 6531)
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return std::strchr("!#$%&'*+/=?^_`{|}~-", c) != nullptr && c != '\0';
}

bool local_part_valid(std::string_view s) {
    if (s.empty() || s.size() > 64) return false;
    if (s.front() == '"') {
        if (s.size() < 2 || s.back() != '"') return false;
        for (size_t i = 1; i + 1 < s.size(); i++) {
            unsigned char c = static_cast<unsigned char>(s[i]);
            if (c == '\\') {
                if (++i + 1 >= s.size()) return false;
                c = static_cast<unsigned char>(s[i]);
                if (c < 0x20 || c == 0x7f) return false;
            } else if (c == '"' || c < 0x20 || c == 0x7f) {
                return false;
            }
        }
        return true;
    }
    if (s.front() == '.' || s.back() == '.') return false;
    for (size_t i = 0; i < s.size(); i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (c == '.') {
            if (s[i - 1] == '.') return false;
        } else if (!is_atext(c)) {
            return false;
        }
    }
    return true;
}

bool ipv4_valid(std::string_view s) {
    int parts = 0;
    size_t start = 0;
    while (true) {
        size_t dot = s.find('.', start);
        std::string_view p = s.substr(start, dot == std::string_view::npos ? dot : dot - start);
        if (p.empty() || p.size() > 3 || p.find_first_not_of("0123456789") != std::string_view::npos ||
            (p.size() > 1 && p[0] == '0') || std::stoi(std::string(p)) > 255) {
            return false;
        }
        parts++;
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    return parts == 4;
}

// [192.0.2.1] or [IPv6:2001:db8::1] (RFC 5321 4.1.3; the tag is case-insensitive).
bool address_literal_valid(std::string_view d) {
    if (d.size() < 3 || d.back() != ']') return false;
    std::string_view in = d.substr(1, d.size() - 2);
    if (in.size() > 5 && (in[0] == 'I' || in[0] == 'i') && (in[1] == 'P' || in[1] == 'p') &&
        (in[2] == 'V' || in[2] == 'v') && in[3] == '6' && in[4] == ':') {
        std::string_view v6 = in.substr(5);
        size_t groups = 0, start = 0;
        bool compressed = v6.find("::") != std::string_view::npos;
        if (v6.empty() || v6.find(":::") != std::string_view::npos ||
            (compressed && v6.find("::") != v6.rfind("::"))) {
            return false;
        }
        while (start <= v6.size()) {
            size_t colon = v6.find(':', start);
            std::string_view g = v6.substr(start, colon == std::string_view::npos ? colon : colon - start);
            if (colon == std::string_view::npos && g.find('.') != std::string_view::npos) {
                if (!ipv4_valid(g)) return false;  // IPv4-mapped tail counts as two groups
                groups += 2;
                break;
            }
            if (g.size() > 4 || g.find_first_not_of("0123456789abcdefABCDEF") != std::string_view::npos) return false;
            if (!g.empty()) groups++;
            if (colon == std::string_view::npos) break;
            start = colon + 1;
        }
        return compressed ? groups < 8 : groups == 8;
    }
    return ipv4_valid(in);
}

bool domain_valid(std::string_view d) {
    if (d.empty() || d.size() > 253) return false;
    if (d.front() == '[') return address_literal_valid(d);
    size_t labels = 0, start = 0;
    bool last_numeric = true;
    while (start <= d.size()) {
        size_t dot = d.find('.', start);
        std::string_view label = d.substr(start, dot == std::string_view::npos ? dot : dot - start);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
            return false;
        }
        last_numeric = true;
        for (char ch : label) {
            unsigned char c = static_cast<unsigned char>(ch);
            bool ok = c >= 0x80 || std::isalnum(c) || c == '-';
            if (!ok) return false;
            if (!std::isdigit(c)) last_numeric = false;
        }
        labels++;
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    return labels >= 2 && !last_numeric;
}

bool has_control(std::string_view s, bool allow_tab) {
    for (unsigned char c : s) {
        if ((c < 0x20 && !(allow_tab && c == '\t')) || c == 0x7f) return true;
    }
    return false;
}

bool ascii_iequal(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

bool token_chars(std::string_view s, size_t max) {
    if (s.empty() || s.size() > max) return false;
    for (unsigned char c : s) {
        if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == ':')) return false;
    }
    return true;
}

// Headers the service composes itself; letting a caller set them would let
// one request forge another's envelope or break the MIME structure.
const char *const STRUCTURAL_HEADERS[] = {
    "from", "to", "cc", "bcc", "reply-to", "sender", "subject", "date", "message-id",
    "mime-version", "content-type", "content-transfer-encoding", "content-disposition",
    "return-path", "received", "dkim-signature", "resent-from", "resent-to", "resent-cc",
    "resent-bcc", "resent-sender", "resent-date", "resent-message-id", "in-reply-to-envelope",
    "authentication-results", "domainkey-signature",
};

// Prefixes of the same: any Content-* header describes the MIME structure;
// X-Mailapi-* are ours (the message id the providers' events come back
// with); ARC-* and Authentication-Results are a receiver's verdicts.
const char *const STRUCTURAL_PREFIXES[] = {"content-", "x-mailapi-", "arc-"};

bool header_structural(std::string_view name) {
    std::string lower(name);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    for (const char *h : STRUCTURAL_HEADERS) {
        if (lower == h) return true;
    }
    for (const char *p : STRUCTURAL_PREFIXES) {
        if (lower.rfind(p, 0) == 0) return true;
    }
    return false;
}

bool header_name_valid(std::string_view n) {
    if (n.empty() || n.size() > 76) return false;
    for (unsigned char c : n) {
        if (c < 33 || c > 126 || c == ':') return false;
    }
    return true;
}

bool content_type_valid(std::string_view s) {
    size_t slash = s.find('/');
    if (slash == std::string_view::npos || slash == 0 || slash + 1 == s.size() || s.size() > 127) {
        return false;
    }
    for (size_t i = 0; i < s.size(); i++) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        if (i == slash) continue;
        if (!(std::isalnum(c) || std::strchr("!#$&^_.+-", c))) return false;
    }
    return true;
}

size_t base64_decoded_size(std::string_view b64) {
    size_t pad = 0;
    if (!b64.empty() && b64.back() == '=') pad++;
    if (b64.size() >= 2 && b64[b64.size() - 2] == '=') pad++;
    return b64.size() / 4 * 3 - pad;
}

using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

// simdjson keeps every duplicate key; a request with one is ambiguous.
bool find_duplicate_key(element e, std::string &dup) {
    simdjson::dom::array arr;
    object obj;
    if (e.get_array().get(arr) == simdjson::SUCCESS) {
        for (element item : arr) {
            if (find_duplicate_key(item, dup)) return true;
        }
    } else if (e.get_object().get(obj) == simdjson::SUCCESS) {
        // A message's objects have a few keys: those sort on the stack.
        constexpr size_t FEW = 16;
        std::string_view few[FEW];
        std::vector<std::string_view> many;
        size_t n = 0;
        for (auto field : obj) {
            if (n < FEW) {
                few[n] = field.key;
            } else {
                if (n == FEW) many.assign(few, few + FEW);
                many.push_back(field.key);
            }
            n++;
            if (find_duplicate_key(field.value, dup)) return true;
        }
        std::string_view *begin = n <= FEW ? few : many.data(), *end = begin + n;
        std::sort(begin, end);
        std::string_view *it = std::adjacent_find(begin, end);
        if (it != end) {
            dup.assign(*it);
            return true;
        }
    }
    return false;
}

bool member(object o, const char *key, element &out) {
    return o.at_key(key).get(out) == simdjson::SUCCESS;
}

bool is_string(element e, std::string_view &out) {
    return e.get_string().get(out) == simdjson::SUCCESS;
}

class Parser {
public:
    Parser(const MessageLimits &l, int64_t now, Message &m, FieldError &e)
        : limits_(l), now_(now), msg_(m), err_(e) {}

    bool parse(element root_el) {
        object root;
        if (root_el.get_object().get(root) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "the request body must be a JSON object", "", 422);
        }
        static const char *const known[] = {"from",     "to",   "cc",      "bcc",         "reply_to",
                                            "subject",  "text", "html",    "headers",     "attachments",
                                            "tags",     "metadata", "send_at", "unsubscribe", "responses"};
        for (auto field : root) {
            if (std::none_of(std::begin(known), std::end(known), [&](const char *k) { return field.key == k; }) &&
                !(limits_.stamped_fields && field.key == "links")) {
                return fail(err_, "unknown_field", "unknown field", std::string(field.key));
            }
        }
        element from;
        if (!member(root, "from", from)) return fail(err_, "required", "from is required", "from");
        if (!address(from, "from", msg_.from)) return false;
        if (!address_list(root, "to", msg_.to, true) || !address_list(root, "cc", msg_.cc, false) ||
            !address_list(root, "bcc", msg_.bcc, false)) {
            return false;
        }
        if (msg_.to.size() + msg_.cc.size() + msg_.bcc.size() > limits_.max_recipients) {
            return fail(err_, "too_many_recipients",
                        "to, cc and bcc together allow at most " + std::to_string(limits_.max_recipients) +
                            " recipients",
                        "to");
        }
        element rt;
        if (member(root, "reply_to", rt)) {
            if (!address(rt, "reply_to", msg_.reply_to)) return false;
            msg_.has_reply_to = true;
        }
        if (!string_field(root, "subject", "subject", msg_.subject, true, limits_.max_subject_bytes) ||
            !string_field(root, "text", "text", msg_.text, false, limits_.max_body_bytes) ||
            !string_field(root, "html", "html", msg_.html, false, limits_.max_body_bytes)) {
            return false;
        }
        if (has_control(msg_.subject, true)) {
            return fail(err_, "invalid_value", "subject must not contain control characters", "subject");
        }
        if (msg_.text.empty() && msg_.html.empty()) {
            return fail(err_, "required", "at least one of text and html is required", "text");
        }
        return headers(root) && attachments(root) && tags(root) && metadata(root) && send_at(root) &&
               unsubscribe(root) && responses(root) && placeholders() && stamped_links(root);
    }

private:
    bool address(element v, const std::string &path, Address &out) {
        std::string_view email;
        std::string field = path;
        object o;
        if (v.get_object().get(o) == simdjson::SUCCESS) {
            for (auto f : o) {
                if (f.key != "email" && f.key != "name") {
                    return fail(err_, "unknown_field", "unknown field", path + "." + std::string(f.key));
                }
            }
            field = path + ".email";
            element e, name;
            if (!member(o, "email", e)) return fail(err_, "required", "email is required", field);
            if (!is_string(e, email)) return fail(err_, "invalid_type", "email must be a string", field);
            if (member(o, "name", name)) {
                std::string_view n;
                if (!is_string(name, n)) return fail(err_, "invalid_type", "name must be a string", path + ".name");
                if (n.size() > 256 || has_control(n, false)) {
                    return fail(err_, "invalid_value", "name must be at most 256 bytes without control characters",
                                path + ".name");
                }
                out.name.assign(n);
            }
        } else if (!is_string(v, email)) {
            return fail(err_, "invalid_type", "an address is a string or {\"email\",\"name\"}", path);
        }
        if (!address_valid(email)) return fail(err_, "invalid_address", "not a valid e-mail address", field);
        out.email.assign(email);
        return true;
    }

    bool address_list(object root, const char *name, std::vector<Address> &out, bool required) {
        element v;
        if (!member(root, name, v)) {
            return required ? fail(err_, "required", std::string(name) + " is required", name) : true;
        }
        simdjson::dom::array arr;
        if (v.get_array().get(arr) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", std::string(name) + " must be an array of addresses", name);
        }
        if (required && arr.size() == 0) {
            return fail(err_, "required", std::string(name) + " needs at least one address", name);
        }
        if (arr.size() > limits_.max_recipients) {
            return fail(err_, "too_many_recipients", "at most " + std::to_string(limits_.max_recipients) + " recipients",
                        name);
        }
        size_t i = 0;
        for (element item : arr) {
            Address a;
            if (!address(item, std::string(name) + "[" + std::to_string(i++) + "]", a)) return false;
            out.push_back(std::move(a));
        }
        return true;
    }

    bool string_field(object o, const char *name, const std::string &path, std::string &out, bool required,
                      size_t max) {
        element v;
        if (!member(o, name, v)) {
            return required ? fail(err_, "required", std::string(name) + " is required", path) : true;
        }
        std::string_view sv;
        if (!is_string(v, sv)) return fail(err_, "invalid_type", std::string(name) + " must be a string", path);
        if (sv.size() > max) {
            return fail(err_, "too_long", std::string(name) + " must be at most " + std::to_string(max) + " bytes",
                        path);
        }
        if (sv.find('\0') != std::string_view::npos) {
            return fail(err_, "invalid_value", std::string(name) + " must not contain NUL", path);
        }
        if (required && sv.empty()) return fail(err_, "required", std::string(name) + " must not be empty", path);
        out.assign(sv);
        return true;
    }

    bool string_map(object root, const char *name, size_t max_count, size_t max_value,
                    std::vector<std::pair<std::string, std::string>> &out, bool is_header) {
        element v;
        if (!member(root, name, v)) return true;
        object o;
        if (v.get_object().get(o) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", std::string(name) + " must be an object of strings", name);
        }
        if (o.size() > max_count) {
            return fail(err_, "too_many", "at most " + std::to_string(max_count) + " entries", name);
        }
        for (auto f : o) {
            std::string path = std::string(name) + "." + std::string(f.key);
            if (is_header) {
                if (!header_name_valid(f.key)) return fail(err_, "invalid_header", "not a valid header name", path);
                if (header_structural(f.key)) {
                    return fail(err_, "forbidden_header", "this header is set by the service and cannot be overridden",
                                path);
                }
                for (const auto &earlier : out) {
                    if (earlier.first.size() == f.key.size() &&
                        std::equal(earlier.first.begin(), earlier.first.end(), f.key.begin(), [](char a, char b) {
                            return std::tolower(static_cast<unsigned char>(a)) ==
                                   std::tolower(static_cast<unsigned char>(b));
                        })) {
                        return fail(err_, "invalid_header", "this header is given twice (names ignore case)", path);
                    }
                }
            } else if (!token_chars(f.key, 64)) {
                return fail(err_, "invalid_value", "keys are 1-64 of [A-Za-z0-9_.:-]", path);
            }
            std::string_view sv;
            if (!is_string(f.value, sv)) return fail(err_, "invalid_type", "must be a string", path);
            if (sv.size() > max_value) {
                return fail(err_, "too_long", "must be at most " + std::to_string(max_value) + " bytes", path);
            }
            if (has_control(sv, is_header)) {
                return fail(err_, is_header ? "invalid_header" : "invalid_value",
                            "must not contain CR, LF or other control characters", path);
            }
            out.emplace_back(std::string(f.key), std::string(sv));
        }
        return true;
    }

    bool headers(object root) { return string_map(root, "headers", limits_.max_headers, 998, msg_.headers, true); }

    bool metadata(object root) {
        return string_map(root, "metadata", limits_.max_metadata, 512, msg_.metadata, false);
    }

    bool unsubscribe(object root) {
        element v;
        if (!member(root, "unsubscribe", v)) return true;
        if (v.get_bool().get(msg_.unsubscribe) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "unsubscribe must be true or false", "unsubscribe");
        }
        for (const auto &h : msg_.headers) {
            if (msg_.unsubscribe && (ascii_iequal(h.first, "List-Unsubscribe") ||
                                     ascii_iequal(h.first, "List-Unsubscribe-Post"))) {
                return fail(err_, "conflict", "unsubscribe makes the List-Unsubscribe headers: leave them out",
                            "headers." + h.first);
            }
        }
        return true;
    }

    bool responses(object root) {
        element v;
        if (!member(root, "responses", v)) return true;
        simdjson::dom::array arr;
        if (v.get_array().get(arr) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "responses must be an array of strings", "responses");
        }
        if (arr.size() == 0 || arr.size() > links::RESPONSES_MAX) {
            return fail(err_, "invalid_value", "responses holds 1 to " + std::to_string(links::RESPONSES_MAX) +
                        " labels", "responses");
        }
        size_t i = 0;
        for (element r : arr) {
            std::string path = "responses[" + std::to_string(i++) + "]";
            std::string_view sv;
            if (!is_string(r, sv)) return fail(err_, "invalid_type", "a response is a string", path);
            if (!links::response_valid(sv)) {
                return fail(err_, "invalid_value",
                            "a response is 1-32 of ASCII letters, digits, space and _ - . , ! ? ' (not starting "
                            "or ending with a space)",
                            path);
            }
            if (std::find(msg_.responses.begin(), msg_.responses.end(), sv) != msg_.responses.end()) {
                return fail(err_, "invalid_value", "responses must differ", path);
            }
            msg_.responses.emplace_back(sv);
        }
        return true;
    }

    // Each placeholder is a URL in every recipient's copy: a few of them, not
    // a body of nothing else (links::personalize fills no more than these).
    bool placeholders() {
        if (!msg_.unsubscribe && msg_.responses.empty()) return true;
        for (auto part : {std::make_pair("text", &msg_.text), std::make_pair("html", &msg_.html)}) {
            if (links::placeholders(*part.second) > limits_.max_placeholders) {
                return fail(err_, "invalid_value",
                            "at most " + std::to_string(limits_.max_placeholders) +
                                " link placeholders ({{unsubscribe_url}}, {{response_url:...}}) a part",
                            part.first);
            }
        }
        return true;
    }

    // {"base": url, "expires": unix s}: what the module stamped when it took the message
    bool stamped_links(object root) {
        element v;
        if (!limits_.stamped_fields || !member(root, "links", v)) return true;
        object o;
        element base, expires;
        std::string_view b;
        int64_t e = 0;
        if (v.get_object().get(o) != simdjson::SUCCESS || !member(o, "base", base) || !is_string(base, b) ||
            !member(o, "expires", expires) || expires.get_int64().get(e) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "links is {base, expires}", "links");
        }
        msg_.link_base.assign(b);
        msg_.link_expires = e;
        return true;
    }

    bool tags(object root) {
        element v;
        if (!member(root, "tags", v)) return true;
        simdjson::dom::array arr;
        if (v.get_array().get(arr) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "tags must be an array of strings", "tags");
        }
        if (arr.size() > limits_.max_tags) {
            return fail(err_, "too_many", "at most " + std::to_string(limits_.max_tags) + " tags", "tags");
        }
        size_t i = 0;
        for (element t : arr) {
            std::string path = "tags[" + std::to_string(i++) + "]";
            std::string_view sv;
            if (!is_string(t, sv)) return fail(err_, "invalid_type", "a tag is a string", path);
            if (!token_chars(sv, 64)) return fail(err_, "invalid_value", "tags are 1-64 of [A-Za-z0-9_.:-]", path);
            msg_.tags.emplace_back(sv);
        }
        return true;
    }

    bool attachments(object root) {
        element v;
        if (!member(root, "attachments", v)) return true;
        simdjson::dom::array arr;
        if (v.get_array().get(arr) != simdjson::SUCCESS) {
            return fail(err_, "invalid_type", "attachments must be an array", "attachments");
        }
        if (arr.size() > limits_.max_attachments) {
            return fail(err_, "too_many", "at most " + std::to_string(limits_.max_attachments) + " attachments",
                        "attachments");
        }
        size_t i = 0, total = 0;
        for (element a : arr) {
            std::string path = "attachments[" + std::to_string(i++) + "]";
            object ao;
            if (a.get_object().get(ao) != simdjson::SUCCESS) {
                return fail(err_, "invalid_type", "an attachment is an object", path);
            }
            for (auto f : ao) {
                if (f.key != "filename" && f.key != "content_type" && f.key != "content") {
                    return fail(err_, "unknown_field", "unknown field", path + "." + std::string(f.key));
                }
            }
            Attachment att;
            element content;
            if (!member(ao, "content", content)) {
                return fail(err_, "required", "content is required", path + ".content");
            }
            // An empty file is a file: content may be "".
            std::string_view content_sv;
            if (!string_field(ao, "filename", path + ".filename", att.filename, true, 255)) return false;
            if (!is_string(content, content_sv)) {
                return fail(err_, "invalid_type", "content must be a string", path + ".content");
            }
            if (has_control(att.filename, false) || att.filename.find_first_of("/\\") != std::string::npos) {
                return fail(err_, "invalid_value", "filename must not contain control characters or slashes",
                            path + ".filename");
            }
            element ct;
            if (member(ao, "content_type", ct)) {
                std::string_view sv;
                if (!is_string(ct, sv) || !content_type_valid(sv)) {
                    return fail(err_, "invalid_value", "content_type must be a MIME type such as text/csv",
                                path + ".content_type");
                }
                att.content_type.assign(sv);
            } else {
                att.content_type = "application/octet-stream";
            }
            if (!base64_valid(content_sv)) {
                return fail(err_, "invalid_base64", "content must be standard base64", path + ".content");
            }
            size_t size = base64_decoded_size(content_sv);
            att.size = size;
            if (limits_.attachment_contents) {
                att.content_base64.assign(content_sv);
            } else {
                att.content_omitted = true;
            }
            if (size > limits_.max_attachment_bytes) {
                return fail(err_, "too_large",
                            "an attachment may be at most " + std::to_string(limits_.max_attachment_bytes) + " bytes",
                            path + ".content");
            }
            total += size;
            if (total > limits_.max_attachments_total) {
                return fail(err_, "too_large",
                            "attachments together may be at most " + std::to_string(limits_.max_attachments_total) +
                                " bytes",
                            path + ".content");
            }
            msg_.attachments.push_back(std::move(att));
        }
        return true;
    }

    bool send_at(object root) {
        element v;
        if (!member(root, "send_at", v)) return true;
        std::string_view sv;
        if (!is_string(v, sv)) {
            return fail(err_, "invalid_type", "send_at must be an RFC 3339 timestamp string", "send_at");
        }
        int64_t t;
        if (!rfc3339_parse(sv, t)) {
            return fail(err_, "invalid_value", "send_at must be RFC 3339, e.g. 2026-01-02T15:04:05Z", "send_at");
        }
        if (now_ && t > now_ + limits_.max_send_at_horizon) {
            return fail(err_, "invalid_value",
                        "send_at may be at most " + std::to_string(limits_.max_send_at_horizon) + " seconds ahead",
                        "send_at");
        }
        msg_.send_at = (now_ && t <= now_) ? 0 : t;
        return true;
    }

    const MessageLimits &limits_;
    int64_t now_;
    Message &msg_;
    FieldError &err_;
};

json_t *address_json(const Address &a) {
    json_t *o = json_object();
    json_object_set_new(o, "email", json_stringn(a.email.data(), a.email.size()));
    if (!a.name.empty()) json_object_set_new(o, "name", json_stringn(a.name.data(), a.name.size()));
    return o;
}

json_t *address_list_json(const std::vector<Address> &list) {
    json_t *arr = json_array();
    for (const Address &a : list) json_array_append_new(arr, address_json(a));
    return arr;
}

json_t *pairs_json(const std::vector<std::pair<std::string, std::string>> &pairs) {
    json_t *o = json_object();
    for (const auto &p : pairs) {
        json_object_set_new(o, p.first.c_str(), json_stringn(p.second.data(), p.second.size()));
    }
    return o;
}

int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

}  // namespace

bool address_valid(std::string_view addr) {
    if (addr.size() < 3 || addr.size() > 254 || has_control(addr, false)) return false;
    size_t at = addr.rfind('@');
    if (at == std::string_view::npos) return false;
    std::string ascii_domain;  // an internationalised domain must have A-labels (IDNA2008)
    return local_part_valid(addr.substr(0, at)) && domain_valid(addr.substr(at + 1)) &&
           domain_to_ascii(addr.substr(at + 1), ascii_domain) && domain_valid(ascii_domain);
}

// The domain as its A-labels, so that "a@bücher.de" and "a@xn--bcher-kva.de"
// are one mailbox; the local part with its ASCII letters lower-cased.
std::string address_normalise(std::string_view addr) {
    std::string out;
    if (!address_to_ascii_domain(addr, out)) out.assign(addr);
    for (char &c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

std::vector<std::string> message_recipients(const Message &msg) {
    std::vector<std::string> out;
    for (const auto *list : {&msg.to, &msg.cc, &msg.bcc}) {
        for (const Address &a : *list) {
            std::string n = address_normalise(a.email);
            if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(std::move(n));
        }
    }
    return out;
}

std::vector<std::string> message_envelope_recipients(const Message &msg) {
    std::vector<std::string> out, seen;
    for (const auto *list : {&msg.to, &msg.cc, &msg.bcc}) {
        for (const Address &a : *list) {
            std::string n = address_normalise(a.email);
            if (std::find(seen.begin(), seen.end(), n) != seen.end()) continue;
            seen.push_back(std::move(n));
            out.push_back(a.email);
        }
    }
    return out;
}

namespace {

// One parser a thread, reused: its buffers grow to the largest body seen.
thread_local simdjson::dom::parser t_parser;

bool parse_root(simdjson::error_code code, element root, size_t size, const MessageLimits &limits, int64_t now,
                Message &msg, FieldError &err) {
    if (code != simdjson::SUCCESS) {
        return fail(err, "invalid_json", std::string("malformed JSON: ") + simdjson::error_message(code), "", 400);
    }
    std::string dup;
    if (find_duplicate_key(root, dup)) {
        return fail(err, "invalid_json", "malformed JSON: duplicate key \"" + dup.substr(0, 64) + "\"", "", 400);
    }
    Message m;
    bool ok = Parser(limits, now, m, err).parse(root);
    // The parser keeps buffers as large as the largest document it has seen,
    // for the life of the thread: after a large one, give them back.
    if (size > (1u << 20)) t_parser = simdjson::dom::parser();
    if (!ok) return false;
    msg = std::move(m);
    return true;
}

}  // namespace

bool message_parse(std::string_view json, const MessageLimits &limits, int64_t now, Message &msg,
                   FieldError &err) {
    element root;
    simdjson::error_code code = t_parser.parse(json.data(), json.size()).get(root);
    return parse_root(code, root, json.size(), limits, now, msg, err);
}

bool message_parse(const std::string &json, const MessageLimits &limits, int64_t now, Message &msg,
                   FieldError &err) {
    element root;
    // not copied when the string has room for simdjson's padding after it
    simdjson::error_code code = t_parser.parse(json).get(root);
    return parse_root(code, root, json.size(), limits, now, msg, err);
}

std::string message_to_json(const Message &m) {
    Json o(message_json(m, true, true));
    char *s = json_dumps(o.get(), JSON_COMPACT | JSON_PRESERVE_ORDER);
    std::string out = s ? s : "";
    free(s);
    return out;
}

json_t *message_json(const Message &m, bool attachment_contents, bool stamped) {
    Json o(json_object());
    json_object_set_new(o.get(), "from", address_json(m.from));
    json_object_set_new(o.get(), "to", address_list_json(m.to));
    if (!m.cc.empty()) json_object_set_new(o.get(), "cc", address_list_json(m.cc));
    if (!m.bcc.empty()) json_object_set_new(o.get(), "bcc", address_list_json(m.bcc));
    if (m.has_reply_to) json_object_set_new(o.get(), "reply_to", address_json(m.reply_to));
    json_object_set_new(o.get(), "subject", json_stringn(m.subject.data(), m.subject.size()));
    if (!m.text.empty()) json_object_set_new(o.get(), "text", json_stringn(m.text.data(), m.text.size()));
    if (!m.html.empty()) json_object_set_new(o.get(), "html", json_stringn(m.html.data(), m.html.size()));
    if (!m.headers.empty()) json_object_set_new(o.get(), "headers", pairs_json(m.headers));
    if (!m.attachments.empty()) {
        json_t *arr = json_array();
        for (const Attachment &a : m.attachments) {
            json_t *ao = json_object();
            json_object_set_new(ao, "filename", json_string(a.filename.c_str()));
            json_object_set_new(ao, "content_type", json_string(a.content_type.c_str()));
            if (a.content_omitted || !attachment_contents) {
                json_object_set_new(ao, "size", json_integer(static_cast<json_int_t>(a.size)));
            } else {
                json_object_set_new(ao, "content", json_stringn(a.content_base64.data(), a.content_base64.size()));
            }
            json_array_append_new(arr, ao);
        }
        json_object_set_new(o.get(), "attachments", arr);
    }
    if (!m.tags.empty()) {
        json_t *arr = json_array();
        for (const std::string &t : m.tags) json_array_append_new(arr, json_string(t.c_str()));
        json_object_set_new(o.get(), "tags", arr);
    }
    if (!m.metadata.empty()) json_object_set_new(o.get(), "metadata", pairs_json(m.metadata));
    if (m.send_at) {
        json_object_set_new(o.get(), "send_at", json_string(rfc3339_format_ms(m.send_at * 1000).c_str()));
    }
    if (m.unsubscribe) json_object_set_new(o.get(), "unsubscribe", json_true());
    if (!m.responses.empty()) {
        json_t *arr = json_array();
        for (const std::string &r : m.responses) json_array_append_new(arr, json_string(r.c_str()));
        json_object_set_new(o.get(), "responses", arr);
    }
    if (stamped && !m.link_base.empty()) {
        json_object_set_new(o.get(), "links",
                            json_pack("{s:s, s:I}", "base", m.link_base.c_str(), "expires",
                                      static_cast<json_int_t>(m.link_expires)));
    }
    return o.release();
}

bool rfc3339_parse(std::string_view s, int64_t &out) {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)
    auto digits = [&](size_t pos, size_t n, int &v) {
        if (pos + n > s.size()) return false;
        v = 0;
        for (size_t i = pos; i < pos + n; i++) {
            if (s[i] < '0' || s[i] > '9') return false;
            v = v * 10 + (s[i] - '0');
        }
        return true;
    };
    int Y, M, D, h, m, sec;
    if (s.size() < 20 || !digits(0, 4, Y) || s[4] != '-' || !digits(5, 2, M) || s[7] != '-' ||
        !digits(8, 2, D) || (s[10] != 'T' && s[10] != 't') || !digits(11, 2, h) || s[13] != ':' ||
        !digits(14, 2, m) || s[16] != ':' || !digits(17, 2, sec)) {
        return false;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (Y % 4 == 0 && Y % 100 != 0) || Y % 400 == 0;
    if (M < 1 || M > 12 || D < 1 || D > mdays[M - 1] || (M == 2 && D == 29 && !leap) || h > 23 ||
        m > 59 || sec > 60) {
        return false;
    }
    size_t pos = 19;
    if (pos < s.size() && s[pos] == '.') {
        size_t start = ++pos;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') pos++;
        if (pos == start || pos - start > 9) return false;
    }
    int offset = 0;
    if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
        pos++;
    } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
        int oh, om;
        if (!digits(pos + 1, 2, oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
            !digits(pos + 4, 2, om) || oh > 23 || om > 59) {
            return false;
        }
        offset = (oh * 60 + om) * 60 * (s[pos] == '+' ? 1 : -1);
        pos += 6;
    } else {
        return false;
    }
    if (pos != s.size()) return false;
    out = days_from_civil(Y, static_cast<unsigned>(M), static_cast<unsigned>(D)) * 86400 + h * 3600 +
          m * 60 + (sec == 60 ? 59 : sec) - offset;
    return true;
}

std::string rfc3339_format_ms(int64_t ms) {
    time_t secs = static_cast<time_t>(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char buf[64];
    snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
    return buf;
}

}  // namespace mailapi

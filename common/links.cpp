#include "links.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>

#include "base64.h"
#include "contract.h"
#include "message.h"
#include "ossl.h"

namespace mailapi::links {

namespace {

constexpr size_t MAC_BYTES = 16;  // 128 bits: a forger has nothing to go on but guessing them
constexpr char LINK_KEY_LABEL[] = "mailapi-v1 links";

bool link_key(const Keyring &ring, std::string_view key_id, unsigned char out[32]) {
    const Keyring::Entry *k = ring.find(key_id);
    if (k == nullptr) return false;
    std::string_view key(reinterpret_cast<const char *>(k->key.data()), k->key.size());
    return hmac_sha256(key, LINK_KEY_LABEL, out);
}

bool mac(const Keyring &ring, std::string_view key_id, std::string_view payload, unsigned char out[32]) {
    unsigned char key[32];
    bool ok = link_key(ring, key_id, key) &&
              hmac_sha256(std::string_view(reinterpret_cast<char *>(key), sizeof key), payload, out);
    OPENSSL_cleanse(key, sizeof key);
    return ok;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    for (size_t i = 0; i <= s.size(); i++) {
        if (i == s.size() || s[i] == sep) {
            parts.push_back(s.substr(start, i - start));
            start = i + 1;
        }
    }
    return parts;
}

bool small_int(std::string_view s, int64_t max, int64_t &out) {
    if (s.empty() || s.size() > 12 || s.find_first_not_of("0123456789") != std::string_view::npos) return false;
    out = std::atoll(std::string(s).c_str());
    return out <= max;
}

std::string url(const Message &m, char kind, const std::string &token) {
    return m.link_base + "/" + kind + "/" + token;
}

// One pass over `s`, each placeholder of `names` replaced by its value in
// `values`, at most PLACEHOLDERS_MAX in all (the API refuses more: a copy is
// made for each recipient, in deliveryd's one thread, and must stay about the
// size the API allowed); `found[i]` says whether names[i] was there.
std::string filled(const std::string &s, const std::vector<std::string> &names,
                   const std::vector<std::string> &values, std::vector<bool> &found) {
    found.assign(names.size(), false);
    std::string out;
    size_t from = 0, used = 0;
    for (size_t at = s.find("{{"); at != std::string::npos && used < PLACEHOLDERS_MAX; at = s.find("{{", at)) {
        size_t k = 0;
        while (k < names.size() && s.compare(at, names[k].size(), names[k]) != 0) k++;
        if (k == names.size()) {
            at += 2;
            continue;
        }
        out.append(s, from, at - from);
        out += values[k];
        found[k] = true;
        used++;
        at += names[k].size();
        from = at;
    }
    out.append(s, from, std::string::npos);
    return out;
}

// Where an HTML part ends: before its </body> if it has one.
size_t html_end(const std::string &html) {
    for (size_t at = html.size(); at-- > 0;) {
        if (html[at] == '<' && html.size() - at >= 6 && (html[at + 1] == '/') &&
            std::tolower(static_cast<unsigned char>(html[at + 2])) == 'b' &&
            std::tolower(static_cast<unsigned char>(html[at + 3])) == 'o' &&
            std::tolower(static_cast<unsigned char>(html[at + 4])) == 'd' &&
            std::tolower(static_cast<unsigned char>(html[at + 5])) == 'y') {
            return at;
        }
    }
    return html.size();
}


// When the links of a copy sent at `now_s` expire. The module stamped
// `link_expires` as mail_api_link_ttl from when it took the message (its id
// holds that time) or from send_at; retries (up to max_age, which may be
// longer than the TTL) or a dead letter replayed days later send it after
// that: counted from the send instead, the links are never dead on arrival.
int64_t expires_at(const Message &m, const std::string &id, int64_t now_s) {
    int64_t from = std::max<int64_t>(contract::message_id_time_ms(id) / 1000, m.send_at);
    int64_t ttl = m.link_expires - from;
    if (from <= 0 || ttl <= 0 || ttl > TTL_MAX_S) return m.link_expires;
    return std::max(m.link_expires, now_s + ttl);
}

}  // namespace

std::string token_make(const Keyring &ring, const Link &l) {
    std::string payload = std::string("1|") + l.key_id + "|" + l.kind + "|" + l.tenant + "|" + l.message_id + "|" +
                          std::to_string(l.rcpt) + "|" + l.response + "|" +
                          std::to_string(l.expires);
    unsigned char md[32];
    if (!mac(ring, l.key_id, payload, md)) return "";
    return base64url_encode(payload) + "." +
           base64url_encode(std::string_view(reinterpret_cast<char *>(md), MAC_BYTES));
}

Verdict token_verify(const Keyring &ring, std::string_view token, int64_t now_s, Link &out) {
    if (token.empty() || token.size() > TOKEN_MAX) return Verdict::malformed;
    size_t dot = token.find('.');
    std::string payload, sig;
    if (dot == std::string_view::npos || !base64url_decode(token.substr(0, dot), payload) ||
        !base64url_decode(token.substr(dot + 1), sig) || sig.size() != MAC_BYTES) {
        return Verdict::malformed;
    }
    std::vector<std::string_view> f = split(payload, '|');
    if (f.size() != 8 || f[0] != "1" || f[2].size() != 1) return Verdict::malformed;
    unsigned char md[32];
    if (!ring.find(f[1])) return Verdict::unknown_key;
    if (!mac(ring, f[1], payload, md)) return Verdict::malformed;
    if (CRYPTO_memcmp(md, sig.data(), MAC_BYTES) != 0) return Verdict::bad_signature;
    // signed by us: what follows was written by deliveryd
    int64_t rcpt = 0, expires = 0;
    if (!small_int(f[5], 1 << 20, rcpt) || !small_int(f[7], INT64_C(1) << 40, expires) ||
        !(f[6].empty() || response_valid(f[6]))) {
        return Verdict::malformed;
    }
    out.kind = f[2][0];
    out.key_id = std::string(f[1]);
    out.tenant = std::string(f[3]);
    out.message_id = std::string(f[4]);
    out.rcpt = static_cast<int>(rcpt);
    out.response = std::string(f[6]);
    out.expires = expires;
    if ((out.kind != UNSUBSCRIBE && out.kind != RESPONSE) || (out.kind == RESPONSE) == out.response.empty() ||
        !message_id_valid(out.message_id)) {
        return Verdict::malformed;
    }
    if (now_s >= out.expires) return Verdict::expired;
    return Verdict::ok;
}

bool response_valid(std::string_view r) {
    if (r.empty() || r.size() > RESPONSE_MAX_BYTES || r.front() == ' ' || r.back() == ' ') return false;
    for (unsigned char c : r) {
        if (!(std::isalnum(c) || (c != 0 && std::strchr(" _-.,!?'", c) != nullptr))) return false;
    }
    return true;
}

bool personal(const Message &m) { return !m.link_base.empty() && (m.unsubscribe || !m.responses.empty()); }

Message personalize(const Keyring &ring, const Message &m, const std::string &tenant, const std::string &id,
                    int rcpt, int64_t now_s) {
    Message p = m;
    Link l;
    l.key_id = ring.active().id;
    l.tenant = tenant;
    l.message_id = id;
    l.rcpt = rcpt;
    l.expires = expires_at(m, id, now_s);
    // the placeholders and their URLs: the unsubscribe link first, if any, then the responses
    std::vector<std::string> names, urls, escaped;
    if (m.unsubscribe) {
        l.kind = UNSUBSCRIBE;
        std::string u = url(m, UNSUBSCRIBE, token_make(ring, l));
        p.headers.emplace_back("List-Unsubscribe", "<" + u + ">");
        p.headers.emplace_back("List-Unsubscribe-Post", "List-Unsubscribe=One-Click");
        names.push_back(UNSUBSCRIBE_PLACEHOLDER);
        urls.push_back(u);
    }
    size_t first_response = names.size();
    l.kind = RESPONSE;
    for (const std::string &r : m.responses) {
        l.response = r;
        names.push_back(response_placeholder(r));
        urls.push_back(url(m, RESPONSE, token_make(ring, l)));
    }
    for (const std::string &u : urls) escaped.push_back(html_escape(u));
    std::vector<bool> in_text, in_html;
    p.text = filled(m.text, names, urls, in_text);
    p.html = filled(m.html, names, escaped, in_html);
    std::string text_block, html_block;
    for (size_t i = first_response; i < names.size(); i++) {
        const std::string &label = m.responses[i - first_response];
        if (!in_text[i]) text_block += label + ": " + urls[i] + "\r\n";
        if (!in_html[i]) {
            html_block += std::string(html_block.empty() ? "" : " &middot; ") + "<a href=\"" + escaped[i] + "\">" +
                          html_escape(label) + "</a>";
        }
    }
    if (!p.text.empty() && !text_block.empty()) p.text += "\r\n\r\n" + text_block;
    if (!p.html.empty() && !html_block.empty()) p.html.insert(html_end(p.html), "<p>" + html_block + "</p>");
    return p;
}

size_t placeholders(std::string_view part) {
    size_t n = 0;
    for (size_t at = part.find("{{"); at != std::string_view::npos; at = part.find("{{", at + 2)) {
        n += part.compare(at, std::strlen(UNSUBSCRIBE_PLACEHOLDER), UNSUBSCRIBE_PLACEHOLDER) == 0 ||
             part.compare(at, std::strlen(RESPONSE_PLACEHOLDER), RESPONSE_PLACEHOLDER) == 0;
    }
    return n;
}

std::string response_placeholder(std::string_view label) {
    return std::string(RESPONSE_PLACEHOLDER) + std::string(label) + "}}";
}

std::string html_escape(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
        case '&': out += "&amp;"; break;
        case '<': out += "&lt;"; break;
        case '>': out += "&gt;"; break;
        case '"': out += "&quot;"; break;
        case '\'': out += "&#39;"; break;
        default: out.push_back(c);
        }
    }
    return out;
}

}  // namespace mailapi::links

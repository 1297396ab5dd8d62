#include "sigv4.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <map>

#include "mime.h"
#include "ossl.h"

namespace {

std::string hex(const unsigned char *p, size_t n) {
    static const char digits[] = "0123456789abcdef";
    std::string out;
    out.reserve(n * 2);
    for (size_t i = 0; i < n; i++) {
        out.push_back(digits[p[i] >> 4]);
        out.push_back(digits[p[i] & 15]);
    }
    return out;
}

std::string sha256_hex(const std::string &data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr) != 1) return "";
    return hex(md, len);
}

// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters kept,
// everything else (space included) as %XX in upper case.
std::string uri_encode(const std::string &s, bool keep_slash) {
    static const char digits[] = "0123456789ABCDEF";
    std::string out;
    for (unsigned char c : s) {
        if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || (keep_slash && c == '/')) {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(digits[c >> 4]);
            out.push_back(digits[c & 15]);
        }
    }
    return out;
}

std::string lower(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return s;
}

// Leading and trailing blanks dropped, runs of blanks inside made one space.
std::string trim_value(const std::string &v) {
    std::string out;
    bool blank = false;
    for (char c : v) {
        if (c == ' ' || c == '\t') {
            blank = !out.empty();
            continue;
        }
        if (blank) out.push_back(' ');
        blank = false;
        out.push_back(c);
    }
    return out;
}

}  // namespace

std::string sigv4_amz_date(time_t t) { return mailapi::utc_strftime(t, "%Y%m%dT%H%M%SZ"); }

std::string sigv4_canonical_request(const SigV4Request &req, const std::string &amz_date,
                                    const std::string &session_token, std::string *signed_headers) {
    std::vector<std::pair<std::string, std::string>> query;
    for (const auto &kv : req.query) query.emplace_back(uri_encode(kv.first, false), uri_encode(kv.second, false));
    std::sort(query.begin(), query.end());
    std::string canonical_query;
    for (const auto &kv : query) {
        if (!canonical_query.empty()) canonical_query += '&';
        canonical_query += kv.first + "=" + kv.second;
    }

    // Sorted by lower-case name; a repeated header's values joined by commas.
    std::map<std::string, std::string> headers;
    auto add = [&headers](const std::string &name, const std::string &value) {
        std::string &slot = headers[lower(name)];
        if (!slot.empty()) slot += ',';
        slot += trim_value(value);
    };
    add("host", req.host);
    add("x-amz-date", amz_date);
    if (!session_token.empty()) add("x-amz-security-token", session_token);
    if (req.content_sha256_header) add("x-amz-content-sha256", sha256_hex(req.payload));
    for (const auto &kv : req.headers) add(kv.first, kv.second);
    std::string canonical_headers, names;
    for (const auto &kv : headers) {
        canonical_headers += kv.first + ":" + kv.second + "\n";
        if (!names.empty()) names += ';';
        names += kv.first;
    }
    if (signed_headers) *signed_headers = names;

    std::string path = req.path.empty() ? "/" : req.path;
    return req.method + "\n" + uri_encode(path, true) + "\n" + canonical_query + "\n" + canonical_headers + "\n" +
           names + "\n" + sha256_hex(req.payload);
}

std::vector<std::string> sigv4_headers(const SigV4Request &req, const SigV4Credentials &cred, time_t now) {
    std::string amz_date = sigv4_amz_date(now);
    std::string date = amz_date.substr(0, 8);
    std::string names;
    std::string canonical = sigv4_canonical_request(req, amz_date, cred.session_token, &names);
    std::string scope = date + "/" + cred.region + "/" + cred.service + "/aws4_request";
    std::string canonical_hash = sha256_hex(canonical);
    if (canonical_hash.empty()) return {};
    std::string to_sign = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + canonical_hash;

    // The signing key: the secret HMAC-chained through date, region, service
    // and "aws4_request"; then the signature of the string to sign. Each key
    // is wiped after its one use (hmac_sha256_once keeps no copy of it).
    std::string key = "AWS4" + cred.secret_access_key;
    unsigned char md[32];
    bool ok = true;
    for (const std::string &part : {date, cred.region, cred.service, std::string("aws4_request"), to_sign}) {
        ok = ok && mailapi::hmac_sha256_once(key, part, md);
        OPENSSL_cleanse(key.data(), key.size());
        key.assign(reinterpret_cast<char *>(md), sizeof md);
    }
    OPENSSL_cleanse(key.data(), key.size());
    if (!ok) return {};

    std::vector<std::string> lines;
    lines.push_back("Authorization: AWS4-HMAC-SHA256 Credential=" + cred.access_key_id + "/" + scope +
                    ", SignedHeaders=" + names + ", Signature=" + hex(md, sizeof md));
    lines.push_back("X-Amz-Date: " + amz_date);
    if (!cred.session_token.empty()) lines.push_back("X-Amz-Security-Token: " + cred.session_token);
    if (req.content_sha256_header) lines.push_back("X-Amz-Content-Sha256: " + sha256_hex(req.payload));
    return lines;
}

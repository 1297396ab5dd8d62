#include "dkim.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <memory>

#include "base64.h"

namespace {

bool is_wsp(char c) { return c == ' ' || c == '\t'; }

std::string lower(std::string_view s) {
    std::string out(s);
    for (char &c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// The fields RFC 6376 5.4.1 recommends signing, those a message has; each
// listed once more than it occurs, so that one added later breaks the
// signature (5.4.2). Content-* are ours, the rest the caller's.
const char *const SIGNED[] = {"from", "reply-to", "subject", "date", "to", "cc", "message-id", "in-reply-to",
                              "references", "mime-version", "content-type", "content-transfer-encoding",
                              "list-id", "list-unsubscribe", "list-unsubscribe-post", "sender"};

struct Field {
    std::string name;       // lower case
    std::string_view text;  // the whole field, folded, with its CRLF
};

// The header's fields, and where the body starts.
std::vector<Field> split_header(const std::string &message, size_t &body) {
    std::vector<Field> fields;
    size_t pos = 0;
    while (pos < message.size()) {
        if (message.compare(pos, 2, "\r\n") == 0) {
            body = pos + 2;
            return fields;
        }
        size_t end = pos;
        while (true) {
            size_t crlf = message.find("\r\n", end);
            if (crlf == std::string::npos) {
                end = message.size();
                break;
            }
            end = crlf + 2;
            if (end >= message.size() || !is_wsp(message[end])) break;  // not folded: the field ends
        }
        std::string_view text(message.data() + pos, end - pos);
        fields.push_back({lower(text.substr(0, text.find(':'))), text});
        pos = end;
    }
    body = message.size();
    return fields;
}

// Signs the SHA-256 of `data` (RFC 8463: Ed25519 signs the hash, PureEdDSA;
// rsa-sha256 is PKCS#1 v1.5 over SHA-256 of the data).
bool sign_data(const DkimSigner::Key &k, const std::string &data, std::string &sig) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    if (!ctx) return false;
    size_t len = 0;
    if (k.ed25519) {
        unsigned char digest[SHA256_DIGEST_LENGTH];
        SHA256(reinterpret_cast<const unsigned char *>(data.data()), data.size(), digest);
        if (EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, k.pkey) != 1 ||
            EVP_DigestSign(ctx.get(), nullptr, &len, digest, sizeof digest) != 1) {
            return false;
        }
        sig.resize(len);
        if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(sig.data()), &len, digest, sizeof digest) != 1) {
            return false;
        }
    } else {
        if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, k.pkey) != 1 ||
            EVP_DigestSignUpdate(ctx.get(), data.data(), data.size()) != 1 ||
            EVP_DigestSignFinal(ctx.get(), nullptr, &len) != 1) {
            return false;
        }
        sig.resize(len);
        if (EVP_DigestSignFinal(ctx.get(), reinterpret_cast<unsigned char *>(sig.data()), &len) != 1) return false;
    }
    sig.resize(len);
    return true;
}

// "tag=value;" pieces on lines of at most 78, the b= value in lines of its own.
std::string fold_tags(const std::vector<std::string> &tags, const std::string &b) {
    std::string out = "DKIM-Signature:";
    size_t line = out.size();
    for (const std::string &t : tags) {
        if (line + 1 + t.size() > 78) {
            out += "\r\n";
            line = 0;
        }
        out += " " + t;
        line += 1 + t.size();
    }
    out += "\r\n b=";
    line = 3;
    for (size_t i = 0; i < b.size(); i += 72) {
        if (i > 0) out += "\r\n ";
        out += b.substr(i, 72);
    }
    return out + "\r\n";
}

}  // namespace

std::string dkim_relaxed_header(std::string_view field) {
    size_t colon = field.find(':');
    std::string name = lower(field.substr(0, colon));
    while (!name.empty() && is_wsp(name.back())) name.pop_back();
    std::string value;
    bool space = false;
    for (size_t i = colon + 1; i < field.size(); i++) {
        char c = field[i];
        if (c == '\r' || c == '\n') continue;  // unfolded
        if (is_wsp(c)) {
            space = true;
            continue;
        }
        if (space && !value.empty()) value.push_back(' ');
        space = false;
        value.push_back(c);
    }
    return name + ":" + value + "\r\n";
}

std::string dkim_relaxed_body(std::string_view body) {
    std::string out;
    out.reserve(body.size());
    size_t pos = 0;
    size_t blank_run = 0;  // empty lines not yet written: dropped if nothing follows
    while (pos < body.size()) {
        size_t crlf = body.find("\r\n", pos);
        size_t end = crlf == std::string_view::npos ? body.size() : crlf;
        std::string line;
        bool space = false;
        for (size_t i = pos; i < end; i++) {
            if (is_wsp(body[i])) {
                space = true;
                continue;
            }
            if (space) line.push_back(' ');
            space = false;
            line.push_back(body[i]);
        }
        if (line.empty()) {
            blank_run++;
        } else {
            for (; blank_run > 0; blank_run--) out += "\r\n";
            out += line;
            out += "\r\n";
        }
        pos = crlf == std::string_view::npos ? body.size() : crlf + 2;
    }
    return out;
}

std::shared_ptr<const DkimSigner> DkimSigner::load(const std::vector<DkimSpec> &specs, std::string &err) {
    std::shared_ptr<DkimSigner> s(new DkimSigner());
    for (const DkimSpec &spec : specs) {
        std::string what = "dkim " + spec.domain + " " + spec.selector + ": ";
        std::unique_ptr<FILE, decltype(&fclose)> f(std::fopen(spec.key_file.c_str(), "r"), fclose);
        if (!f) {
            err = what + "cannot read " + spec.key_file;
            return nullptr;
        }
        EVP_PKEY *pkey = PEM_read_PrivateKey(f.get(), nullptr, nullptr, nullptr);
        ERR_clear_error();
        if (pkey == nullptr) {
            err = what + spec.key_file + " holds no PEM private key (openssl genpkey -algorithm ed25519, or RSA)";
            return nullptr;
        }
        Key k{spec.domain, spec.selector, pkey, EVP_PKEY_id(pkey) == EVP_PKEY_ED25519};
        s->keys_.push_back(k);  // owned from here: freed with the signer
        if (!k.ed25519 && (EVP_PKEY_id(pkey) != EVP_PKEY_RSA || EVP_PKEY_get_bits(pkey) < 2048)) {
            err = what + "the key must be RSA of 2048 bits or more, or Ed25519";
            return nullptr;
        }
    }
    return s;
}

DkimSigner::~DkimSigner() {
    for (Key &k : keys_) EVP_PKEY_free(k.pkey);
}

std::string DkimSigner::sign(const std::string &message, std::string_view domain, time_t now) const {
    std::string out;
    size_t body_at = 0;
    std::vector<Field> fields;
    std::string bh;
    for (const Key &k : keys_) {
        if (k.domain != domain) continue;
        if (bh.empty()) {
            fields = split_header(message, body_at);
            std::string canon = dkim_relaxed_body(std::string_view(message).substr(body_at));
            unsigned char digest[SHA256_DIGEST_LENGTH];
            SHA256(reinterpret_cast<const unsigned char *>(canon.data()), canon.size(), digest);
            bh = mailapi::base64_encode(std::string_view(reinterpret_cast<char *>(digest), sizeof digest));
        }
        // h=: each signed field as often as it occurs, plus once, taken from
        // the bottom up as a verifier does (5.4.2)
        std::string h, data;
        for (const char *name : SIGNED) {
            std::vector<const Field *> present;
            for (const Field &f : fields) {
                if (f.name == name) present.push_back(&f);
            }
            if (present.empty() && std::string_view(name) != "from" && std::string_view(name) != "reply-to" &&
                std::string_view(name) != "cc" && std::string_view(name) != "subject") {
                continue;  // not there, and not one whose addition would mislead
            }
            for (auto it = present.rbegin(); it != present.rend(); ++it) {
                h += (h.empty() ? "" : ":") + std::string(name);
                data += dkim_relaxed_header((*it)->text);
            }
            h += (h.empty() ? "" : ":") + std::string(name);  // once more: none may be added
        }
        std::vector<std::string> tags = {"v=1;", std::string("a=") + (k.ed25519 ? "ed25519-sha256;" : "rsa-sha256;"),
                                         "c=relaxed/relaxed;", "d=" + k.domain + ";", "s=" + k.selector + ";",
                                         "t=" + std::to_string(static_cast<long long>(now)) + ";"};
        // h= folded after its colons (FWS is allowed there, 3.5)
        std::string piece = "h=";
        for (size_t start = 0; start < h.size();) {
            size_t colon = h.find(':', start);
            std::string name = h.substr(start, colon == std::string::npos ? std::string::npos : colon - start + 1);
            if (piece.size() + name.size() > 64) {
                tags.push_back(piece);
                piece.clear();
            }
            piece += name;
            start = colon == std::string::npos ? h.size() : colon + 1;
        }
        tags.push_back(piece + ";");
        tags.push_back("bh=" + bh + ";");
        // the signature covers this field as it will be, with b= empty (3.5),
        // canonicalised and without its final CRLF
        std::string unsigned_field = fold_tags(tags, "");
        std::string canon = dkim_relaxed_header(unsigned_field);
        data += canon.substr(0, canon.size() - 2);
        std::string sig;
        if (!sign_data(k, data, sig)) {
            ERR_clear_error();
            continue;  // unsigned rather than not sent; the verifier's policy decides
        }
        out += fold_tags(tags, mailapi::base64_encode(sig));
    }
    return out;
}

std::string DkimSigner::dns_records(std::string_view domain) const {
    std::string out;
    for (const Key &k : keys_) {
        if (k.domain != domain) continue;
        std::string p;
        if (k.ed25519) {
            unsigned char raw[32];
            size_t len = sizeof raw;
            if (EVP_PKEY_get_raw_public_key(k.pkey, raw, &len) != 1) continue;
            p = mailapi::base64_encode(std::string_view(reinterpret_cast<char *>(raw), len));
        } else {
            unsigned char *der = nullptr;
            int len = i2d_PUBKEY(k.pkey, &der);
            if (len <= 0) continue;
            p = mailapi::base64_encode(std::string_view(reinterpret_cast<char *>(der), static_cast<size_t>(len)));
            OPENSSL_free(der);
        }
        std::string txt = std::string("v=DKIM1; k=") + (k.ed25519 ? "ed25519" : "rsa") + "; p=" + p;
        // a TXT record's strings hold at most 255 characters each
        std::string quoted;
        for (size_t i = 0; i < txt.size(); i += 255) quoted += (i ? " \"" : "\"") + txt.substr(i, 255) + "\"";
        out += k.selector + "._domainkey." + k.domain + ". IN TXT ( " + quoted + " )\n";
    }
    return out;
}

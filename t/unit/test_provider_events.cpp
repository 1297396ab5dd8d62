// The providers' event webhooks: each documented body read into normalised
// events, and each signature checked (keys made here with OpenSSL).
#include <gtest/gtest.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <memory>

#include "base64.h"
#include "provider_events.h"

using namespace mailapi::pevents;

namespace {

const char MID[] = "msg_01M8YBGX923932RY9ZT44RCVAQ";

std::string sign(EVP_PKEY *key, const EVP_MD *md, const std::string &data) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    size_t len = 0;
    EVP_DigestSignInit(ctx.get(), nullptr, md, nullptr, key);
    EVP_DigestSign(ctx.get(), nullptr, &len, reinterpret_cast<const unsigned char *>(data.data()), data.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char *>(sig.data()), &len,
                   reinterpret_cast<const unsigned char *>(data.data()), data.size());
    sig.resize(len);
    return sig;
}

std::string spki_b64(EVP_PKEY *key) {
    unsigned char *der = nullptr;
    int len = i2d_PUBKEY(key, &der);
    std::string out = mailapi::base64_encode(std::string_view(reinterpret_cast<char *>(der), static_cast<size_t>(len)));
    OPENSSL_free(der);
    return out;
}

}  // namespace

TEST(ProviderEvents, SendgridBatchNormalised) {
    std::string body = std::string(R"([
      {"email":"a@example.org","timestamp":1800000000,"event":"processed","sg_event_id":"p1","mailapi_id":")") + MID + R"("},
      {"email":"a@example.org","timestamp":1800000001,"event":"delivered","response":"250 OK","sg_event_id":"d1","mailapi_id":")" + MID + R"("},
      {"email":"b@example.org","timestamp":1800000002,"event":"bounce","type":"bounce","reason":"550 5.1.1 <b@example.org>: no such user","sg_event_id":"b1","mailapi_id":")" + MID + R"("},
      {"email":"c@example.org","timestamp":1800000003,"event":"bounce","type":"blocked","reason":"421 try later","sg_event_id":"b2","mailapi_id":")" + MID + R"("},
      {"email":"a@example.org","timestamp":1800000004,"event":"spamreport","sg_event_id":"s1","mailapi_id":")" + MID + R"("},
      {"email":"a@example.org","timestamp":1800000005,"event":"click","url":"https://x/?t=secret","sg_event_id":"c1","mailapi_id":")" + MID + R"("},
      {"email":"z@example.org","timestamp":1800000006,"event":"delivered","sg_event_id":"other"}
    ])";
    std::vector<Event> ev;
    std::string err;
    ASSERT_TRUE(parse_sendgrid(body, ev, err)) << err;
    ASSERT_EQ(ev.size(), 5u);  // processed and the one that is not ours left out
    EXPECT_EQ(ev[0].type, DELIVERED);
    EXPECT_EQ(ev[0].code, 250);
    EXPECT_EQ(ev[0].at_ms, 1800000001000);
    EXPECT_EQ(ev[1].type, BOUNCED);
    EXPECT_EQ(ev[1].bounce, "hard");
    EXPECT_EQ(ev[1].code, 550);
    EXPECT_EQ(ev[1].reason, "550 5.1.1 <<address>>: no such user");
    EXPECT_EQ(ev[1].recipient, "b@example.org");
    EXPECT_EQ(ev[2].bounce, "soft");
    EXPECT_EQ(ev[3].type, COMPLAINED);
    EXPECT_EQ(ev[4].type, CLICKED);
    EXPECT_EQ(ev[4].reason, "");  // the link is not kept
    EXPECT_FALSE(parse_sendgrid("{}", ev, err));
    EXPECT_FALSE(parse_sendgrid("[{\"a\":1,\"a\":2}]", ev, err));  // duplicate keys
}

TEST(ProviderEvents, SendgridSignatureIsEcdsaOverTimestampAndBody) {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"), EVP_PKEY_free);
    ASSERT_TRUE(key);
    std::string body = "[{\"event\":\"delivered\"}]\r\n", ts = "1800000000";
    std::string sig = mailapi::base64_encode(sign(key.get(), EVP_sha256(), ts + body));
    std::string pub = spki_b64(key.get());
    EXPECT_TRUE(sendgrid_verify(pub, ts, body, sig));
    EXPECT_FALSE(sendgrid_verify(pub, "1800000001", body, sig));
    EXPECT_FALSE(sendgrid_verify(pub, ts, body + " ", sig));
    EXPECT_FALSE(sendgrid_verify(pub, ts, body, mailapi::base64_encode("garbage")));
    EXPECT_FALSE(sendgrid_verify("not base64!", ts, body, sig));
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> other(EVP_EC_gen("P-256"), EVP_PKEY_free);
    EXPECT_FALSE(sendgrid_verify(spki_b64(other.get()), ts, body, sig));
}

TEST(ProviderEvents, MailgunEventAndSignature) {
    std::string body = std::string(R"({"signature":{"timestamp":"1529006854","token":"a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
      "signature":"60de66bc807c4569f75daf3d09b760e009c20a11251daeb7615eb8c152a8a31c"},
      "event-data":{"event":"failed","severity":"permanent","id":"Ase7i2zsRYeDXztHGENqRA","timestamp":1529006854.329574,
      "recipient":"alice@example.com","user-variables":{"mailapi_id":")") + MID + R"("},
      "delivery-status":{"code":550,"message":"5.1.1 The email account does not exist"}}})";
    std::vector<Event> ev;
    MailgunSignature sig;
    std::string err;
    ASSERT_TRUE(parse_mailgun(body, ev, sig, err)) << err;
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].type, BOUNCED);
    EXPECT_EQ(ev[0].bounce, "hard");
    EXPECT_EQ(ev[0].code, 550);
    EXPECT_EQ(ev[0].at_ms, 1529006854330);
    EXPECT_EQ(ev[0].message_id, MID);
    EXPECT_TRUE(mailgun_verify("key-0123456789abcdef", sig));  // the vector: Python's hmac
    EXPECT_FALSE(mailgun_verify("key-0123456789abcdeg", sig));
    sig.token += "x";
    EXPECT_FALSE(mailgun_verify("key-0123456789abcdef", sig));
}

TEST(ProviderEvents, PostmarkRecordTypes) {
    auto one = [](const std::string &json) {
        std::vector<Event> ev;
        std::string err;
        EXPECT_TRUE(parse_postmark(json, ev, err)) << err;
        return ev;
    };
    std::string meta = std::string(R"("Metadata":{"mailapi_id":")") + MID + R"("})";
    auto d = one(R"({"RecordType":"Delivery","MessageID":"pm-1","Recipient":"a@example.org","DeliveredAt":"2026-12-03T16:33:54.9070259Z",)" + meta + "}");
    ASSERT_EQ(d.size(), 1u);
    EXPECT_EQ(d[0].type, DELIVERED);
    EXPECT_EQ(d[0].at_ms % 1000, 907);
    auto b = one(R"({"RecordType":"Bounce","ID":4323372036854775807,"Type":"SoftBounce","Email":"b@example.org","BouncedAt":"2026-12-03T16:33:54Z","Description":"mailbox full",)" + meta + "}");
    ASSERT_EQ(b.size(), 1u);
    EXPECT_EQ(b[0].bounce, "soft");
    EXPECT_EQ(b[0].id, "Bounce:4323372036854775807");
    auto h = one(R"({"RecordType":"Bounce","ID":7,"Type":"HardBounce","Email":"b@example.org",)" + meta + "}");
    EXPECT_EQ(h.at(0).bounce, "hard");
    auto s = one(R"({"RecordType":"SubscriptionChange","Recipient":"a@example.org","SuppressSending":true,"ChangedAt":"2026-12-03T16:33:54Z",)" + meta + "}");
    EXPECT_EQ(s.at(0).type, UNSUBSCRIBED);
    EXPECT_TRUE(one(R"({"RecordType":"Delivery","Recipient":"a@example.org"})").empty());  // not ours
}

TEST(ProviderEvents, SnsSignatureAndSesEvents) {
    std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_RSA_gen(2048), EVP_PKEY_free);
    std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), X509_free);
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
    X509_set_pubkey(cert.get(), key.get());
    X509_sign(cert.get(), key.get(), EVP_sha256());
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
    PEM_write_bio_X509(bio.get(), cert.get());
    char *pem_data = nullptr;
    long pem_len = BIO_get_mem_data(bio.get(), &pem_data);
    std::string pem(pem_data, static_cast<size_t>(pem_len));

    std::string ses = std::string(R"({"eventType":"Bounce","mail":{"messageId":"ses-1","destination":["a@example.org","b@example.org"],"tags":{"mailapi_id":[")") + MID +
                      R"("]}},"bounce":{"bounceType":"Permanent","timestamp":"2026-12-03T16:00:00.123Z","bouncedRecipients":[{"emailAddress":"a@example.org","diagnosticCode":"smtp; 550 5.1.1 user unknown"},{"emailAddress":"b@example.org"}]}})";
    SnsMessage m;
    m.type = "Notification";
    m.message_id = "sns-1";
    m.topic_arn = "arn:aws:sns:eu-west-1:123456789012:mail";
    m.message = ses;
    m.timestamp = "2026-12-03T16:00:01.000Z";
    for (const char *version : {"1", "2"}) {
        m.signature_version = version;
        m.signature = mailapi::base64_encode(sign(key.get(), *version == '1' ? EVP_sha1() : EVP_sha256(), sns_string_to_sign(m)));
        EXPECT_TRUE(sns_verify(pem, m)) << version;
        SnsMessage forged = m;
        forged.topic_arn += "x";
        EXPECT_FALSE(sns_verify(pem, forged));
    }
    m.signature_version = "3";
    EXPECT_FALSE(sns_verify(pem, m));
    std::vector<Event> ev;
    std::string err;
    ASSERT_TRUE(parse_ses(ses, "sns-1", ev, err)) << err;
    ASSERT_EQ(ev.size(), 2u);
    EXPECT_EQ(ev[0].type, BOUNCED);
    EXPECT_EQ(ev[0].bounce, "hard");
    EXPECT_EQ(ev[0].code, 550);
    EXPECT_EQ(ev[0].at_ms, 1796313600123);
    EXPECT_EQ(ev[1].id, "sns-1:1");
    EXPECT_EQ(ev[1].recipient, "b@example.org");
}

TEST(ProviderEvents, SnsCertificateUrlsAndFreshness) {
    const char *p = "sns.*.amazonaws.com";
    EXPECT_TRUE(sns_url_allowed("https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem", p));
    EXPECT_TRUE(sns_url_allowed("https://SNS.us-east-1.amazonaws.com:443/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("http://sns.eu-west-1.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.eu-west-1.amazonaws.com.evil.net/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://evil.net/sns.eu-west-1.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.a.b.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://user@sns.eu-west-1.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.eu-west-1.amazonaws.com:8443/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.eu-west-1.amazonaws.com/x.pem?x=1", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.eu-west-1.amazonaws.com/x.txt", p));
    // "*" is a region: S3 serves a bucket named "sns" on these names, with whatever certificate its owner puts there
    EXPECT_FALSE(sns_url_allowed("https://sns.s3.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.s3-us-west-2.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.s3-external-1.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.s3-accelerate.amazonaws.com/x.pem", p));
    EXPECT_FALSE(sns_url_allowed("https://sns.execute-api.amazonaws.com/x.pem", p));
    EXPECT_TRUE(sns_url_allowed("https://sns.us-gov-west-1.amazonaws.com/x.pem", p));
    EXPECT_TRUE(sns_url_allowed("https://sns.ap-southeast-2.amazonaws.com/x.pem", p));
    EXPECT_TRUE(sns_url_allowed("https://127.0.0.1:8443/c.pem", "127.0.0.1:8443"));
    EXPECT_FALSE(sns_url_allowed("https://127.0.0.1/c.pem", "127.0.0.1:8443"));
    EXPECT_FALSE(sns_url_allowed("https://127.0.0.1:8444/c.pem", "127.0.0.1:8443"));
    EXPECT_TRUE(fresh("1800000000", 1800000100, 300));
    EXPECT_FALSE(fresh("1800000000", 1800000400, 300));
    EXPECT_TRUE(fresh("2027-01-15T08:00:00.000Z", 1800000000, 60));
    EXPECT_FALSE(fresh("2027-01-15T08:05:00Z", 1800000000, 60));
    EXPECT_FALSE(fresh("soon", 1800000000, 60));
}

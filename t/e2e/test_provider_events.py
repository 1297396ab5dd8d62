"""Provider events in (issue 11), through nginx: each provider's webhook
signed by the test as the provider documents it (a real ECDSA P-256 key for
SendGrid, a real HMAC key for Mailgun, Basic credentials for Postmark, SNS
signatures v1 and v2 with a certificate served over HTTPS by a test CA for
SES), correlated through what deliveryd put in the provider's request, added
to the message's timeline once, and the status moving forward only. Every
forged, replayed, stale or unsigned variant is refused with nothing
recorded."""
import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import ssl
import threading
import time
import uuid

import pytest
import redis as redislib
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from conftest import message, tenants_stack
from test_providers import received

TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailapi-events"


# ---------------------------------------------------------------- the providers' keys

def cert_for(key, subject, issuer_key=None, issuer=None, san=None, ca=False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


class SnsHost:
    """The host of SNS's signing certificates and SubscribeURLs, over HTTPS with a test CA."""

    def __init__(self, directory):
        import ipaddress
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = cert_for(ca_key, "test CA", ca=True)
        key = ec.generate_private_key(ec.SECP256R1())
        server = cert_for(key, "127.0.0.1", ca_key, ca.subject, [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.ca_path = os.path.join(directory, "sns-ca.pem")
        with open(self.ca_path, "wb") as f:
            f.write(ca.public_bytes(serialization.Encoding.PEM))
        chain = os.path.join(directory, "sns-server.pem")
        with open(chain, "wb") as f:
            f.write(server.public_bytes(serialization.Encoding.PEM))
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        # SNS's own signing key and certificate
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_pem = cert_for(self.signing_key, "sns.amazonaws.com").public_bytes(serialization.Encoding.PEM)
        self.confirmed = []
        self.cert_fetches = 0
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.startswith("/slow"):
                    time.sleep(4)  # a cert host that keeps the fetch waiting
                if self.path.endswith(".pem"):
                    host.cert_fetches += 1
                    body = host.signing_pem
                else:
                    host.confirmed.append(self.path)
                    body = b"<ConfirmSubscriptionResponse/>"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(chain)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path):
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()


def sns_message(host, type_, message, version="2", **extra):
    m = {"Type": type_, "MessageId": str(uuid.uuid4()), "TopicArn": TOPIC, "Message": message,
         "Timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
         "SignatureVersion": version, "SigningCertURL": host.url("/SimpleNotificationService-test.pem")}
    m.update(extra)
    keys = (["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"] if type_ == "Notification"
            else ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"])
    text = "".join(f"{k}\n{m[k]}\n" for k in keys if k in m)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    m["Signature"] = base64.b64encode(host.signing_key.sign(text.encode(), padding.PKCS1v15(), digest)).decode()
    return m


@pytest.fixture
def ev(tmp_path):
    sg_key = ec.generate_private_key(ec.SECP256R1())
    sg_public = base64.b64encode(sg_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    mg_key = "key-" + os.urandom(16).hex()
    sns = SnsHost(str(tmp_path))

    def sources(s):
        with open(os.path.join(s.dir, "events"), "w") as f:
            f.write(f"sg sendgrid public_key={sg_public}\n"
                    f"mg mailgun signing_key={mg_key}\n"
                    f"pm postmark username=hooks password=pm-secret-{s.standin_keys['postmark'][:8]}\n"
                    f"ses ses topic_arn={TOPIC} cert_host=127.0.0.1:{sns.port} cacert={sns.ca_path}\n")
    tenants = ("sendgrid", "mailgun", "postmark", "ses")
    s, tokens, api = tenants_stack(tmp_path, tenants, standin=True, before_nginx=sources,
                                   extra_http=f"    mail_api_event_sources {tmp_path}/events;\n")
    mx = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"
    s.start_deliveryd(lines=s.standin_providers(("sendgrid", "mailgun", "postmark", "ses")) + [mx, "route * mx"] +
                      [f"route {t} {t}" for t in tenants])
    control = f"http://127.0.0.1:{s.standin.port}"
    keys = {"sg": sg_key, "mg": mg_key, "pm": ("hooks", f"pm-secret-{s.standin_keys['postmark'][:8]}"), "sns": sns}
    yield s, tokens, api, control, keys
    sns.stop()
    s.stop_all()


def post(api, source, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return api.http.post(api.base + "/v1/events/" + source, data=data, headers=headers or {}, timeout=10)


def sendgrid_post(api, key, events, ts=None, tamper=None):
    body = json.dumps(events) + "\r\n"
    ts = str(ts if ts is not None else int(time.time()))
    sig = base64.b64encode(key.sign((ts + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
    if tamper:
        body = tamper(body)
    return post(api, "sg", body, {"Content-Type": "application/json",
                                  "X-Twilio-Email-Event-Webhook-Signature": sig,
                                  "X-Twilio-Email-Event-Webhook-Timestamp": ts})


def mailgun_body(key, event_data, ts=None, token=None):
    ts = str(ts if ts is not None else int(time.time()))
    token = token or os.urandom(25).hex()
    sig = hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": event_data}


def timeline(api, token, mid, want, timeout=15):
    """The message once `want` (a list of event types) are all in its timeline."""
    deadline = time.time() + timeout
    while True:
        rec = api.get(mid, token).json()
        types = [e["type"] for e in rec.get("events", [])]
        if all(types.count(t) >= want.count(t) for t in want):
            return rec
        assert time.time() < deadline, f"{want} not in {types}"
        time.sleep(0.1)


def events_queued(s):
    return redislib.Redis(port=s.redis.port).xlen("mailapi:messages:events")


def settled(s, timeout=10):
    """deliveryd took every provider event off the stream."""
    deadline = time.time() + timeout
    while events_queued(s):
        assert time.time() < deadline
        time.sleep(0.05)


# ---------------------------------------------------------------- SendGrid

def test_sendgrid_events_are_verified_correlated_and_recorded_once(ev):
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    rcpt = f"sg-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    [req] = [b for b in received(control, "sendgrid")
             if b["personalizations"][0].get("custom_args", {}).get("mailapi_id") == mid]
    ours = req["personalizations"][0]["custom_args"]  # what SendGrid gives back with each event
    now = int(time.time())
    batch = [dict(ours, email=rcpt, timestamp=now, event="processed", sg_event_id="e-p"),
             dict(ours, email=rcpt, timestamp=now, event="delivered", response="250 2.0.0 OK", sg_event_id="e-d"),
             dict(ours, email=rcpt, timestamp=now + 5, event="open", sg_event_id="e-o"),
             dict(ours, email=rcpt, timestamp=now + 6, event="click", url="https://x.example/?t=s3cret",
                  sg_event_id="e-c")]
    r = sendgrid_post(api, keys["sg"], batch)
    assert r.status_code == 200 and r.json() == {"received": 3}, r.text
    rec = timeline(api, token, mid, ["delivered", "opened", "clicked"])
    assert rec["status"] == "delivered"
    [d] = [e for e in rec["events"] if e["type"] == "delivered"]
    assert (d["provider"], d["recipient"], d["code"]) == ("sg", rcpt, 250)
    assert rec["recipients"][0]["status"] == "delivered"
    assert "s3cret" not in json.dumps(rec)  # the link is not kept
    # the same batch again (SendGrid retries): nothing new
    assert sendgrid_post(api, keys["sg"], batch).status_code == 200
    settled(s)
    types = [e["type"] for e in api.get(mid, token).json()["events"]]
    assert (types.count("delivered"), types.count("opened"), types.count("clicked")) == (1, 1, 1), types


def test_sendgrid_forged_stale_and_unsigned_requests_record_nothing(ev):
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    rcpt = f"sg-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    bounce = [{"email": rcpt, "timestamp": int(time.time()), "event": "bounce", "type": "bounce",
               "reason": "550 5.1.1 no such user", "sg_event_id": "b-1", "mailapi_id": mid}]
    other = ec.generate_private_key(ec.SECP256R1())
    before = events_queued(s)
    cases = [
        (sendgrid_post(api, other, bounce), "signature_invalid"),                       # another key
        (sendgrid_post(api, keys["sg"], bounce, tamper=lambda b: b.replace("bounce\"", "delivered\"", 1)),
         "signature_invalid"),                                                         # body changed after signing
        (sendgrid_post(api, keys["sg"], bounce, ts=int(time.time()) - 3600), "signature_stale"),
        (post(api, "sg", bounce, {"Content-Type": "application/json"}), "signature_missing"),
    ]
    for r, code in cases:
        assert r.status_code == 401 and r.json()["error"]["code"] == code, r.text
        assert "WWW-Authenticate" in r.headers
    assert post(api, "nope", bounce).status_code == 404
    assert events_queued(s) == before
    time.sleep(1)
    assert [e["type"] for e in api.get(mid, token).json()["events"]] == ["queued", "sent"]


def test_status_moves_forward_only_whatever_order_events_come_in(ev):
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    rcpt = f"sg-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    now = int(time.time())
    bounce = {"email": rcpt, "timestamp": now, "event": "bounce", "type": "bounce", "reason": "550 5.1.1 gone",
              "sg_event_id": "o-b", "mailapi_id": mid}
    late = {"email": rcpt, "timestamp": now + 60, "event": "delivered", "sg_event_id": "o-d", "mailapi_id": mid}
    assert sendgrid_post(api, keys["sg"], [bounce]).status_code == 200
    rec = timeline(api, token, mid, ["bounced"])
    assert rec["status"] == "bounced" and rec["recipients"][0]["status"] == "bounced"
    assert [e.get("bounce") for e in rec["events"] if e["type"] == "bounced"] == ["hard"]
    assert sendgrid_post(api, keys["sg"], [late]).status_code == 200
    rec = timeline(api, token, mid, ["bounced", "delivered"])
    assert rec["status"] == "bounced", rec  # a late delivered never overwrites bounced
    assert rec["recipients"][0]["status"] == "bounced"


def suppressions(api, token):
    r = api.http.get(api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + token}, timeout=10)
    return {e["email"]: e["reason"] for e in r.json()["suppressions"]}


def test_hard_bounces_and_complaints_suppress_soft_bounces_do_not(ev):
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    hard, soft, spam = (f"{k}-{uuid.uuid4().hex[:8]}@example.org" for k in ("hard", "soft", "spam"))
    mid = api.send(message(hard, cc=[soft, spam]), token).json()["id"]
    api.wait_status(mid, token, "sent")
    now = int(time.time())
    batch = [{"email": hard, "timestamp": now, "event": "bounce", "type": "bounce", "reason": "550 5.1.1 gone",
              "sg_event_id": "s-h", "mailapi_id": mid},
             {"email": soft, "timestamp": now, "event": "bounce", "type": "blocked", "reason": "421 try later",
              "sg_event_id": "s-s", "mailapi_id": mid},
             {"email": spam, "timestamp": now, "event": "spamreport", "sg_event_id": "s-c", "mailapi_id": mid}]
    assert sendgrid_post(api, keys["sg"], batch).status_code == 200
    timeline(api, token, mid, ["bounced", "bounced", "complained"])
    settled(s)
    assert suppressions(api, token) == {hard: "bounced", spam: "complained"}
    # the next message to all three reaches the soft bounce alone
    again = api.send(message(hard, cc=[soft, spam]), token).json()["id"]
    rec = api.wait_status(again, token, "sent")
    assert {r["email"]: r["status"] for r in rec["recipients"]} == {hard: "suppressed", soft: "sent",
                                                                    spam: "suppressed"}
    sent = [b for b in received(control, "sendgrid")
            if b["personalizations"][0].get("custom_args", {}).get("mailapi_id") == again]
    assert len(sent) == 1
    to = [a["email"] for p in sent[0]["personalizations"] for k in ("to", "cc", "bcc") for a in p.get(k, [])]
    assert to == [soft], sent[0]["personalizations"]


# ---------------------------------------------------------------- Mailgun

def test_mailgun_events_with_their_replay_cache(ev):
    s, tokens, api, control, keys = ev
    token = tokens["mailgun"]
    rcpt = f"mg-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    [form] = [f for f in received(control, "mailgun") if f.get("v:mailapi_id") == mid]
    data = {"event": "failed", "severity": "permanent", "id": "mg-ev-1", "timestamp": time.time(),
            "recipient": rcpt, "user-variables": {"mailapi_id": form["v:mailapi_id"]},
            "delivery-status": {"code": 550, "message": "5.1.1 mailbox does not exist"}}
    body = mailgun_body(keys["mg"], data)
    r = post(api, "mg", body, {"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json() == {"received": 1}, r.text
    rec = timeline(api, token, mid, ["bounced"])
    assert rec["status"] == "bounced"
    [b] = [e for e in rec["events"] if e["type"] == "bounced"]
    assert (b["provider"], b["code"], b["bounce"], b["recipient"]) == ("mg", 550, "hard", rcpt)
    # the very same signed request again: a replay
    r = post(api, "mg", body, {"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "signature_replayed", r.text
    before = events_queued(s)
    forged = mailgun_body("key-" + "0" * 32, dict(data, id="mg-ev-2"))
    stale = mailgun_body(keys["mg"], dict(data, id="mg-ev-3"), ts=int(time.time()) - 3600)
    unsigned = {"event-data": dict(data, id="mg-ev-4")}
    for b, code in ((forged, "signature_invalid"), (stale, "signature_stale"), (unsigned, "signature_missing")):
        r = post(api, "mg", b, {"Content-Type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["code"] == code, r.text
    assert events_queued(s) == before
    settled(s)
    assert [e["type"] for e in api.get(mid, token).json()["events"]].count("bounced") == 1


# ---------------------------------------------------------------- Postmark

def test_postmark_events_need_their_basic_credentials(ev):
    s, tokens, api, control, keys = ev
    token = tokens["postmark"]
    rcpt = f"pm-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    [body] = [b for b in received(control, "postmark") if b["Metadata"].get("mailapi_id") == mid]
    delivery = {"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound", "MessageID": str(uuid.uuid4()),
                "Recipient": rcpt, "Tag": "", "DeliveredAt": "2026-12-03T16:33:54.9070259Z",
                "Details": "smtp;250 2.0.0 OK", "Metadata": body["Metadata"]}
    complaint = {"RecordType": "SpamComplaint", "ID": 42, "Type": "SpamComplaint", "TypeCode": 512,
                 "MessageID": delivery["MessageID"], "Email": rcpt, "BouncedAt": "2026-12-03T17:00:00Z",
                 "Metadata": body["Metadata"]}
    user, password = keys["pm"]
    before = events_queued(s)
    for auth in (None, (user, "wrong"), ("other", password)):
        r = api.http.post(api.base + "/v1/events/pm", json=delivery, auth=auth, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "credentials_invalid", r.text
        assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert events_queued(s) == before
    for e in (delivery, complaint):
        r = api.http.post(api.base + "/v1/events/pm", json=e, auth=(user, password), timeout=10)
        assert r.status_code == 200, r.text
    rec = timeline(api, token, mid, ["delivered", "complained"])
    assert rec["status"] == "complained" and rec["recipients"][0]["status"] == "complained"


# ---------------------------------------------------------------- SES through SNS

def test_ses_events_through_sns_signatures_v1_and_v2(ev):
    s, tokens, api, control, keys = ev
    sns = keys["sns"]
    token = tokens["ses"]
    rcpt = f"ses-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    [req] = [b for b in received(control, "ses") if {"Name": "mailapi_id", "Value": mid} in b.get("EmailTags", [])]
    tags = {t["Name"]: [t["Value"]] for t in req["EmailTags"]}
    # a subscription confirmation is signed too, and confirmed by fetching its SubscribeURL
    sub = sns_message(sns, "SubscriptionConfirmation", "You have chosen to subscribe", Token="tok-1",
                      SubscribeURL=sns.url("/?Action=ConfirmSubscription&Token=tok-1"))
    r = post(api, "ses", sub, {"Content-Type": "text/plain; charset=UTF-8"})
    assert r.status_code == 200 and r.json() == {"subscribed": True}, r.text
    assert len(sns.confirmed) == 1
    delivery = {"eventType": "Delivery", "mail": {"messageId": "ses-1", "destination": [rcpt], "tags": tags},
                "delivery": {"timestamp": "2026-12-03T16:00:00.000Z", "recipients": [rcpt],
                             "smtpResponse": "250 2.6.0 Message received"}}
    complaint = {"eventType": "Complaint", "mail": delivery["mail"],
                 "complaint": {"timestamp": "2026-12-03T17:00:00.000Z", "complainedRecipients": [{"emailAddress": rcpt}]}}
    for version, event in (("1", delivery), ("2", complaint)):
        r = post(api, "ses", sns_message(sns, "Notification", json.dumps(event), version=version))
        assert r.status_code == 200 and r.json() == {"received": 1}, r.text
    rec = timeline(api, token, mid, ["delivered", "complained"])
    assert rec["status"] == "complained"
    assert sns.cert_fetches == 1  # fetched once, then kept
    before = events_queued(s)
    good = sns_message(sns, "Notification", json.dumps(delivery))
    bad = [
        (dict(good, Message=good["Message"].replace("Delivery", "Bounce")), "signature_invalid"),
        (dict(good, TopicArn=TOPIC + "-other"), "topic_unknown"),
        (dict(good, SigningCertURL="https://evil.example/cert.pem"), "certificate_url_refused"),
        (sns_message(sns, "Notification", json.dumps(delivery), Timestamp="2026-01-01T00:00:00.000Z"),
         "signature_stale"),
        (dict(good, SignatureVersion="3"), "signature_invalid"),
    ]
    for body, code in bad:
        r = post(api, "ses", body)
        assert r.status_code == 401 and r.json()["error"]["code"] == code, (code, r.text)
    assert post(api, "ses", "not json").status_code == 400
    assert events_queued(s) == before


def test_an_event_that_comes_before_its_record_waits_for_it(ev):
    """A provider can report a delivery before deliveryd wrote the message's
    record: the event waits (on the events stream) and lands once it is there."""
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    # deliveryd stopped: the message is queued, its record not written
    d = [p for p in s.procs if p.name == "deliveryd"][0]
    d.stop()
    rcpt = f"early-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    r = sendgrid_post(api, keys["sg"], [{"email": rcpt, "timestamp": int(time.time()), "event": "delivered",
                                         "sg_event_id": "early-1", "mailapi_id": mid}])
    assert r.status_code == 200
    assert events_queued(s) == 1  # pending when deliveryd comes back
    mx = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"
    tenants = ("sendgrid", "mailgun", "postmark", "ses")
    s.start_deliveryd(name="deliveryd2", lines=s.standin_providers(tenants) + [mx, "route * mx"] +
                      [f"route {t} {t}" for t in tenants])
    rec = timeline(api, token, mid, ["sent", "delivered"], timeout=30)
    assert rec["status"] == "delivered"
    settled(s)


def test_an_event_for_a_message_we_never_had_does_not_wait_a_day(ev):
    """An id of the right shape that is neither queued (no hash in Redis) nor
    in the store (another system's mail through the same provider account, a
    message erased since, opens that come weeks late) has no record to wait
    for: it is dropped at once instead of holding one of deliveryd's working
    slots for a day (512 of them stopped every provider event behind them)."""
    s, tokens, api, control, keys = ev
    now = int(time.time())
    stranger = "msg_01M8YBGX923932RY9ZT44RCVAQ"
    r = sendgrid_post(api, keys["sg"], [{"email": "x@example.org", "timestamp": now, "event": "open",
                                         "sg_event_id": "stranger-1", "mailapi_id": stranger}])
    assert r.status_code == 200 and r.json() == {"received": 1}, r.text
    settled(s, timeout=10)
    # and the events of our own messages still land
    token = tokens["sendgrid"]
    rcpt = f"sg-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), token).json()["id"]
    api.wait_status(mid, token, "sent")
    r = sendgrid_post(api, keys["sg"], [{"email": rcpt, "timestamp": now, "event": "delivered",
                                         "sg_event_id": "ours-1", "mailapi_id": mid}])
    assert r.status_code == 200
    assert timeline(api, token, mid, ["delivered"])["status"] == "delivered"


def test_bodies_read_before_any_check_are_bounded(ev):
    """Mailgun's and SNS's proofs are inside the JSON, so their bodies are
    parsed before anything is verified: 8 MiB of "[[],[],...]" from anyone
    grew a worker by ~400 MB (kept after). Those two take 1 MiB (far above a
    Mailgun event or SNS's 256 KiB message); SendGrid's signed batches and
    Postmark's (credentials checked before the body is read) keep 8 MiB."""
    s, tokens, api, control, keys = ev
    junk = '{"signature":{"a":[' + ",".join(["[]"] * (3 * 1024 * 1024 // 3)) + ']}}'
    before = events_queued(s)
    for source in ("mg", "ses"):
        r = post(api, source, junk, {"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", (source, r.text[:200])
    # a Mailgun event of a fair size still goes in
    big = {"event": "opened", "id": "mg-big", "timestamp": time.time(), "recipient": "a@example.org",
           "user-variables": {"mailapi_id": "msg_01M8YBGX923932RY9ZT44RCVAQ"}, "padding": "x" * 500000}
    r = post(api, "mg", mailgun_body(keys["mg"], big), {"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    settled(s)
    assert events_queued(s) == before


def test_certificate_fetches_cannot_take_the_thread_pool(ev):
    """The SigningCertURL is fetched before anything is verified (the
    signature needs the certificate), in the thread pool the store's reads
    use too. Unsigned notifications naming slow URLs on the allowed host (a
    region that answers late) held every thread, and a GET of a stored
    message waited behind them: a worker fetches a few at a time, the rest
    are 503 with Retry-After (SNS retries)."""
    import concurrent.futures
    s, tokens, api, control, keys = ev
    sns = keys["sns"]
    token = tokens["ses"]
    mid = api.send(message(f"ses-{uuid.uuid4().hex[:8]}@example.org"), token).json()["id"]
    api.wait_status(mid, token, "sent")

    def slow(i):
        m = dict(sns_message(sns, "Notification", "{}"), SigningCertURL=sns.url(f"/slow-{i}.pem"))
        return post(api, "ses", m)
    with concurrent.futures.ThreadPoolExecutor(40) as pool:
        posts = [pool.submit(slow, i) for i in range(40)]
        time.sleep(1)
        t = time.time()
        got = api.get(mid, token)
        took = time.time() - t
        answers = [f.result() for f in posts]
    assert got.status_code == 200 and took < 2, took
    busy = [r for r in answers if r.status_code == 503]
    assert busy and all(r.headers.get("Retry-After") for r in busy), [r.status_code for r in answers]
    assert {r.status_code for r in answers} <= {200, 503}  # (signed with the real key: only the URL is odd)


def test_an_event_waiting_for_its_record_is_not_taken_over_from_a_live_instance(ev):
    """Two deliveryd instances on one events stream: an event waiting for its
    message's record (a scheduled message here) stays with the instance that
    has it while that one lives; taken over after claim_idle by the other,
    both worked on it, and each told the tenant's webhooks of it."""
    s, tokens, api, control, keys = ev
    token = tokens["sendgrid"]
    d = [p for p in s.procs if p.name == "deliveryd"][0]
    d.stop()
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    rcpt = f"wait-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt, send_at=later), token).json()["id"]
    r = sendgrid_post(api, keys["sg"], [{"email": rcpt, "timestamp": int(time.time()), "event": "delivered",
                                         "sg_event_id": "wait-1", "mailapi_id": mid}])
    assert r.status_code == 200
    mx = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"
    tenants = ("sendgrid", "mailgun", "postmark", "ses")
    lines = s.standin_providers(tenants) + [mx, "route * mx"] + [f"route {t} {t}" for t in tenants]
    for name in ("deliveryd-a", "deliveryd-b"):
        s.start_deliveryd(name=name, lines=lines, claim_idle="3", send_timeout="2")
    rd = redislib.Redis(port=s.redis.port)
    deadline = time.time() + 10
    while not rd.xpending("mailapi:messages:events", "deliveryd")["pending"]:
        assert time.time() < deadline
        time.sleep(0.1)
    time.sleep(10)  # more than three times claim_idle
    [p] = rd.xpending_range("mailapi:messages:events", "deliveryd", "-", "+", 10)
    assert p["times_delivered"] == 1, p

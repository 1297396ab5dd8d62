"""The stand-in for Mailgun, Postmark and SES (t/provider_standin.py) on its
own: it takes requests in each provider's documented form (the form
deliveryd's provider_formats.cpp builds, checked field by field in
t/unit/test_provider_formats.cpp), refuses what each provider refuses, with
each one's error format, and fails on command.

SES requests are signed with botocore, AWS's own SigV4 signer, so the
stand-in's verifier is checked against an implementation that is not ours;
it is also checked against AWS's published SigV4 test-suite vectors.
"""
import base64
import hashlib
import json
import os
import sys
import threading
import time

import pytest
import requests

try:  # Debian's python3-botocore
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
except ImportError:
    SigV4Auth = None
needs_botocore = pytest.mark.skipif(SigV4Auth is None, reason="python3-botocore is not installed")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import provider_standin  # noqa: E402
import stack as stackmod  # noqa: E402

PDF = b"%PDF-1.4\r\n\x00\x01\xff binary \n\r tail"  # CR, LF, NUL and high bytes must survive


def start(tmp_path, **kw):
    s = stackmod.Stack(str(tmp_path))
    s.start_standin(**kw)
    return s, f"http://127.0.0.1:{s.standin.port}"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    s, base = start(tmp_path_factory.mktemp("standin"))
    yield s, base
    s.stop_all()


def control(base, name, **cmd):
    requests.post(f"{base}/_control/{name}", json=cmd, timeout=5).raise_for_status()


def received(base, name):
    return requests.get(f"{base}/_received/{name}", timeout=5).json()


def requests_seen(base, name):
    return requests.get(f"{base}/_requests/{name}", timeout=5).json()["count"]


# -- Mailgun ------------------------------------------------------------------

def mailgun_fields(**overrides):
    fields = [("from", '"Shop, Inc." <sender@example.com>'), ("to", '"Ann" <ann@example.org>'),
              ("to", "=?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>"), ("cc", "<cc@example.org>"),
              ("subject", "Grüße"), ("text", "Hello"), ("html", "<p>Hello</p>"),
              ("h:Reply-To", '"Help" <help@example.com>'), ("h:X-Mailapi-Id", "msg_1"), ("v:mailapi_id", "msg_1"),
              ("v:order", "A-1"), ("o:tag", "welcome"), ("o:tag", "onboarding")]
    drop = {k for k, v in overrides.items() if v is None}
    fields = [(k, v) for k, v in fields if k not in drop and k not in overrides]
    fields += [(k, v) for k, v in overrides.items() if v is not None]
    return fields


def mailgun_post(base, s, fields, key=None, files=True):
    domain = stackmod.Stack.MAILGUN_DOMAIN
    parts = [(k, (None, v)) for k, v in fields]
    if files:
        parts.append(("attachment", ("invoice.pdf", PDF, "application/pdf")))
    return requests.post(f"{base}/v3/{domain}/messages", files=parts,
                         auth=("api", key or s.standin_keys["mailgun"]), timeout=5)


def test_mailgun_accepts_its_documented_form(standin):
    s, base = standin
    r = mailgun_post(base, s, mailgun_fields(**{"v:mailapi_id": "msg_mg_ok"}))
    assert r.status_code == 200, r.text
    assert r.json()["message"] == "Queued. Thank you."
    assert r.json()["id"].startswith("<") and r.json()["id"].endswith("@mg.example.com>")
    rec = [x for x in received(base, "mailgun") if x.get("v:mailapi_id") == "msg_mg_ok"]
    assert len(rec) == 1
    rec = rec[0]
    assert rec["_domain"] == "mg.example.com"
    assert rec["to"] == ['"Ann" <ann@example.org>', "=?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>"]
    assert rec["cc"] == ["<cc@example.org>"] and rec["subject"] == "Grüße"
    assert rec["o:tag"] == ["welcome", "onboarding"] and rec["v:order"] == "A-1"
    assert rec["attachment"] == [{"filename": "invoice.pdf", "content_type": "application/pdf", "size": len(PDF),
                                  "sha256": hashlib.sha256(PDF).hexdigest()}]


def test_mailgun_refuses_what_mailgun_refuses(standin):
    s, base = standin
    before = len(received(base, "mailgun"))
    r = mailgun_post(base, s, mailgun_fields(), key="key-wrong")
    assert r.status_code == 401 and r.text == "Forbidden"
    r = requests.post(f"{base}/v3/mg.example.com/messages", data={"from": "a@example.com"}, timeout=5)
    assert r.status_code == 401
    for fields, words in ((mailgun_fields(subject=None), "subject parameter is missing"),
                          (mailgun_fields(to=None), "to parameter is missing"),
                          (mailgun_fields(text=None, html=None), "Need at least one of"),
                          (mailgun_fields(cc="not an address"), "cc parameter is not a valid address"),
                          (mailgun_fields() + [("o:tag", "c"), ("o:tag", "d")], "Too many tags")):
        r = mailgun_post(base, s, fields)
        assert r.status_code == 400 and words in r.json()["message"], (fields, r.text)
    r = requests.post(f"{base}/v3/mg.example.com/messages", data={"from": "a@example.com"},
                      auth=("api", s.standin_keys["mailgun"]), timeout=5)  # urlencoded, not multipart
    assert r.status_code == 400 and "message" in r.json()
    assert len(received(base, "mailgun")) == before


def test_mailgun_scripted_failures(standin):
    s, base = standin
    control(base, "mailgun", status=500, count=1)
    r = mailgun_post(base, s, mailgun_fields())
    assert r.status_code == 500 and r.json() == {"message": "scripted failure 500"}
    assert mailgun_post(base, s, mailgun_fields()).status_code == 200
    control(base, "mailgun", status=429, count=1)
    r = mailgun_post(base, s, mailgun_fields())
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    control(base, "mailgun", status=401, count=1)
    r = mailgun_post(base, s, mailgun_fields())
    assert r.status_code == 401 and r.text == "Forbidden"


# -- Postmark -----------------------------------------------------------------

def postmark_body(**overrides):
    body = {"From": '"Shop, Inc." <sender@example.com>',
            "To": '"Ann" <ann@example.org>, =?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>',
            "Cc": "<cc@example.org>", "Subject": "Grüße", "TextBody": "Hello", "HtmlBody": "<p>Hello</p>",
            "ReplyTo": '"Help" <help@example.com>', "Headers": [{"Name": "X-Mailapi-Id", "Value": "msg_1"}],
            "Attachments": [{"Name": "invoice.pdf", "Content": base64.b64encode(PDF).decode(),
                             "ContentType": "application/pdf"}],
            "Tag": "welcome", "Metadata": {"mailapi_id": "msg_1"}, "MessageStream": "outbound"}
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def postmark_post(base, s, body, token=None, headers=None):
    h = {"Accept": "application/json", "Content-Type": "application/json",
         "X-Postmark-Server-Token": token or s.standin_keys["postmark"]}
    h.update(headers or {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}/email", data=data, headers=h, timeout=5)


def test_postmark_accepts_its_documented_body(standin):
    s, base = standin
    body = postmark_body(Metadata={"mailapi_id": "msg_pm_ok"})
    r = postmark_post(base, s, body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["ErrorCode"] == 0 and answer["Message"] == "OK" and answer["To"] == body["To"]
    assert answer["MessageID"] and answer["SubmittedAt"].endswith("Z")
    assert [b for b in received(base, "postmark") if b["Metadata"]["mailapi_id"] == "msg_pm_ok"] == [body]


def test_postmark_refuses_what_postmark_refuses(standin):
    s, base = standin
    r = postmark_post(base, s, postmark_body(), token="00000000-0000-0000-0000-000000000000")
    assert r.status_code == 401 and r.json()["ErrorCode"] == 10
    r = postmark_post(base, s, postmark_body(), headers={"Accept": "text/html"})
    assert r.status_code == 422 and r.json()["ErrorCode"] == 409
    r = postmark_post(base, s, b"{not json")
    assert r.status_code == 422 and r.json()["ErrorCode"] == 402
    many = ", ".join(f"<r{i}@example.org>" for i in range(51))
    for body in (postmark_body(To=None), postmark_body(Subject=None), postmark_body(TextBody=None, HtmlBody=None),
                 postmark_body(To="not an address"), postmark_body(To=many),
                 postmark_body(Metadata={"k": "1", "K": "2"}),
                 postmark_body(Attachments=[{"Name": "a", "Content": "***", "ContentType": "text/plain"}])):
        r = postmark_post(base, s, body)
        assert r.status_code == 422 and r.json()["ErrorCode"] == 300, (body, r.text)


def test_postmark_scripted_error_codes(standin):
    s, base = standin
    control(base, "postmark", status=422, error_code=406, count=1)
    r = postmark_post(base, s, postmark_body())
    assert r.status_code == 422 and r.json()["ErrorCode"] == 406
    assert postmark_post(base, s, postmark_body()).status_code == 200
    control(base, "postmark", status=500, count=1)
    r = postmark_post(base, s, postmark_body())
    assert r.status_code == 500 and "ErrorCode" not in r.json()


# -- SES ----------------------------------------------------------------------

SES_PATH = "/v2/email/outbound-emails"


def ses_body(**overrides):
    body = {"FromEmailAddress": '"Shop, Inc." <sender@example.com>',
            "Destination": {"ToAddresses": ["=?UTF-8?B?QmrDtnJuIMOWbHVuZA==?= <bob@example.net>"],
                            "CcAddresses": ["<cc@example.org>"]},
            "ReplyToAddresses": ['"Help" <help@example.com>'],
            "Content": {"Simple": {
                "Subject": {"Data": "Grüße", "Charset": "UTF-8"},
                "Body": {"Text": {"Data": "Hello", "Charset": "UTF-8"}},
                "Headers": [{"Name": "X-Mailapi-Id", "Value": "msg_1"}],
                "Attachments": [{"FileName": "invoice.pdf", "ContentType": "application/pdf",
                                 "RawContent": base64.b64encode(PDF).decode(), "ContentDisposition": "ATTACHMENT",
                                 "ContentTransferEncoding": "BASE64"}]}},
            "EmailTags": [{"Name": "mailapi_id", "Value": "msg_1"}]}
    body.update(overrides)
    return body


def ses_signed(base, s, data, secret=None, key_id=None, service="ses", token=None):
    """The headers botocore signs a SendEmail request with."""
    k = s.standin_keys
    creds = Credentials(key_id or k["ses_access_key_id"], secret or k["ses_secret_access_key"], token)
    req = AWSRequest(method="POST", url=base + SES_PATH, data=data, headers={"Content-Type": "application/json"})
    SigV4Auth(creds, service, stackmod.Stack.SES_REGION).add_auth(req)
    return dict(req.headers.items())


def ses_post(base, s, body, **kw):
    data = json.dumps(body).encode()
    return requests.post(base + SES_PATH, data=data, headers=ses_signed(base, s, data, **kw), timeout=5)


def ses_error(r):
    return r.headers.get("x-amzn-ErrorType", "").split(":")[0]


@needs_botocore
def test_ses_accepts_a_botocore_signed_send_email(standin):
    s, base = standin
    body = ses_body(EmailTags=[{"Name": "mailapi_id", "Value": "msg_ses_ok"}])
    r = ses_post(base, s, body)
    assert r.status_code == 200, (r.headers, r.text)
    assert r.json()["MessageId"]
    rec = [b for b in received(base, "ses") if b["EmailTags"][0]["Value"] == "msg_ses_ok"]
    assert rec == [dict(body, _region=stackmod.Stack.SES_REGION)]


@needs_botocore
def test_ses_refuses_bad_signatures_as_aws_does(standin):
    s, base = standin
    seen = requests_seen(base, "ses")
    r = ses_post(base, s, ses_body(), secret="wrong" + s.standin_keys["ses_secret_access_key"])
    assert r.status_code == 403 and ses_error(r) == "InvalidSignatureException" and "message" in r.json()
    r = ses_post(base, s, ses_body(), key_id="AKIAUNKNOWNUNKNOWN00")
    assert r.status_code == 403 and ses_error(r) == "UnrecognizedClientException"
    r = ses_post(base, s, ses_body(), service="email")
    assert r.status_code == 403 and ses_error(r) == "InvalidSignatureException"
    r = requests.post(base + SES_PATH, json=ses_body(), timeout=5)
    assert r.status_code == 403 and ses_error(r) == "MissingAuthenticationTokenException"
    assert requests_seen(base, "ses") == seen  # none of them got in


@needs_botocore
def test_ses_signature_covers_the_body_and_the_date(standin):
    s, base = standin
    data = json.dumps(ses_body()).encode()
    headers = ses_signed(base, s, data)
    r = requests.post(base + SES_PATH, data=data.replace(b"Hello", b"Hullo"), headers=headers, timeout=5)
    assert r.status_code == 403 and ses_error(r) == "InvalidSignatureException"
    stale = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 360))
    r = requests.post(base + SES_PATH, data=data, headers=dict(headers, **{"X-Amz-Date": stale}), timeout=5)
    assert r.status_code == 403 and ses_error(r) == "InvalidSignatureException"


@needs_botocore
def test_ses_refuses_what_ses_refuses(standin):
    s, base = standin
    simple = ses_body()["Content"]["Simple"]
    for body in (ses_body(FromEmailAddress=None), ses_body(Destination={}),
                 ses_body(FromEmailAddress='"Björn" <b@example.com>'),  # must be 7-bit: encoded words
                 ses_body(Content={"Simple": dict(simple, Headers=[{"Name": f"X-H{i}", "Value": "v"}
                                                                   for i in range(16)])}),
                 ses_body(Content={"Simple": dict(simple, Headers=[{"Name": "X-N", "Value": "naïve"}])}),
                 ses_body(Content={"Simple": dict(simple, Body={})}),
                 ses_body(EmailTags=[{"Name": "note", "Value": "two words"}])):
        r = ses_post(base, s, body)
        assert r.status_code == 400 and ses_error(r) == "BadRequestException", (body, r.text)


@needs_botocore
def test_ses_scripted_error_types(standin):
    s, base = standin
    control(base, "ses", status=400, error_type="MessageRejected", count=1)
    r = ses_post(base, s, ses_body())
    assert r.status_code == 400 and ses_error(r) == "MessageRejected"
    assert r.headers["x-amzn-ErrorType"].startswith("MessageRejected:http://")
    assert ses_post(base, s, ses_body()).status_code == 200
    control(base, "ses", status=429, count=1)
    r = ses_post(base, s, ses_body())
    assert r.status_code == 429 and ses_error(r) == "TooManyRequestsException"


@needs_botocore
def test_ses_with_temporary_credentials_needs_the_signed_token(tmp_path):
    s, base = start(tmp_path, ses_session_token=True)
    try:
        token = s.standin_keys["ses_session_token"]
        r = ses_post(base, s, ses_body())
        assert r.status_code == 403 and ses_error(r) == "UnrecognizedClientException"
        r = ses_post(base, s, ses_body(), token=token)
        assert r.status_code == 200, r.text
        assert any("session_token=" + token in line for line in s.standin_providers(["ses"]))
    finally:
        s.stop_all()


def test_standin_sigv4_verifier_against_the_aws_test_suite():
    """post-x-www-form-urlencoded from AWS's SigV4 test suite, verified by the stand-in's own code."""
    from email.message import Message
    headers = Message()
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    headers["Host"] = "example.amazonaws.com"
    headers["X-Amz-Date"] = "20150830T123600Z"
    headers["Authorization"] = ("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                                "SignedHeaders=content-type;host;x-amz-date, "
                                "Signature=ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a")
    keys = {"ses_access_key_id": "AKIDEXAMPLE", "ses_secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"}
    at = 1440938160  # 20150830T123600Z
    check = provider_standin.sigv4_check
    assert check("POST", "/", headers, b"Param1=value1", keys, now=at, want_service="service") is None
    assert check("POST", "/", headers, b"Param1=value2", keys, now=at, want_service="service")[1] == \
        "InvalidSignatureException"
    assert "expired" in check("POST", "/", headers, b"Param1=value1", keys, now=at + 301, want_service="service")[2]
    assert check("POST", "/", headers, b"Param1=value1", keys, now=at)[2].startswith("Credential should be scoped")


# -- all of them ----------------------------------------------------------------

def test_config_lines_for_deliveryd(standin):
    s, base = standin
    k = s.standin_keys
    lines = s.standin_providers()
    assert lines == [
        f"provider mailgun mailgun url={base} domain=mg.example.com api_key={k['mailgun']}",
        f"provider postmark postmark url={base} server_token={k['postmark']} message_stream=outbound",
        f"provider ses ses url={base} region=eu-west-1 access_key_id={k['ses_access_key_id']} "
        f"secret_access_key={k['ses_secret_access_key']}",
    ]
    assert all(" " not in v and "=" not in v for v in k.values())  # safe as key=value settings
    assert s.standin_providers(["sendgrid", "http"])[1] == f"provider http http url={base}/generic token={k['http']}"


def test_standin_stays_responsive_while_a_request_hangs(standin):
    s, base = standin
    control(base, "postmark", mode="timeout", count=1)

    def hang():
        try:
            postmark_post(base, s, postmark_body())
        except requests.exceptions.RequestException:
            pass  # held for 30 s: times out here, or is cut when the stand-in stops
    threading.Thread(target=hang, daemon=True).start()
    time.sleep(0.3)
    t0 = time.time()
    assert mailgun_post(base, s, mailgun_fields()).status_code == 200
    assert requests_seen(base, "postmark") >= 1
    assert time.time() - t0 < 2

"""Providers and failover, against the stand-in for the hosted APIs."""
import base64
import datetime
import subprocess
import time

import pytest
import redis as redislib
import requests

import stack as stackmod
from conftest import Api, Mailbox, message, private_stack, rfc2047, standin_deliveries, tenants_stack


@pytest.fixture
def providers(tmp_path):
    s, token, api = private_stack(tmp_path, standin=True)
    s.start_deliveryd(providers="sendgrid,smtp", **s.standin_conf())
    yield s, api, token, f"http://127.0.0.1:{s.standin.port}"
    s.stop_all()


def received(control, name):
    return requests.get(f"{control}/_received/{name}", timeout=5).json()


def test_first_provider_gets_the_mail_in_its_documented_format(providers):
    s, api, token, control = providers
    mid = api.send(message("first@example.org", cc=["c@example.org"], metadata={"order": "7"}), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    assert rec["events"][-1]["provider"] == "sendgrid" and rec["events"][-1]["code"] == 202
    body = [b for b in received(control, "sendgrid") if b["personalizations"][0]["custom_args"]["mailapi_id"] == mid]
    assert len(body) == 1
    p = body[0]["personalizations"][0]
    assert p["to"] == [{"email": "first@example.org"}] and p["cc"] == [{"email": "c@example.org"}]
    assert p["custom_args"]["order"] == "7"
    assert body[0]["from"] == {"email": "sender@example.com"} and body[0]["subject"] == "Hello"
    assert body[0]["content"] == [{"type": "text/plain", "value": "Hello there"}]
    assert Mailbox(s.maildir).count(mid) == 0  # not also sent by SMTP


@pytest.mark.parametrize("failure", [{"status": 500}, {"status": 429}, {"mode": "reset"}, {"status": 401}])
def test_a_failing_provider_is_invisible(providers, failure):
    s, api, token, control = providers
    requests.post(f"{control}/_control/sendgrid", json=dict(failure, count=-1), timeout=5)
    ids = [api.send(message(f"fo{i}@example.org"), token).json()["id"] for i in range(5)]
    for mid in ids:
        rec = api.wait_status(mid, token, "sent")
        types = [(e["type"], e.get("provider")) for e in rec["events"]]
        assert types == [("queued", None), ("provider_failed", "sendgrid"), ("sent", "smtp")], types
    counts = Mailbox(s.maildir).counts()
    assert all(counts.get(mid) == 1 for mid in ids)


def test_provider_timeout_fails_over(providers):
    s, api, token, control = providers
    requests.post(f"{control}/_control/sendgrid", json={"mode": "timeout", "count": 1}, timeout=5)
    t0 = time.time()
    mid = api.send(message("slowprovider@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=20)
    assert rec["events"][-1]["provider"] == "smtp"
    assert rec["events"][1]["type"] == "provider_failed" and "Timeout" in rec["events"][1]["reason"]
    assert time.time() - t0 < 12  # send_timeout 4 s, not the stand-in's 30 s
    assert Mailbox(s.maildir).count(mid) == 1


def test_permanent_error_does_not_fail_over(providers):
    s, api, token, control = providers
    requests.post(f"{control}/_control/sendgrid", json={"status": 400, "count": -1}, timeout=5)
    mid = api.send(message("bad@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "failed")
    assert [(e["type"], e.get("provider"), e.get("code")) for e in rec["events"]] == \
        [("queued", None, None), ("failed", "sendgrid", 400)]
    time.sleep(1)
    assert Mailbox(s.maildir).count(mid) == 0


def test_all_providers_down_retries_then_recovers(providers):
    s, api, token, control = providers
    requests.post(f"{control}/_control/sendgrid", json={"status": 503, "count": 2}, timeout=5)
    mid = api.send(message("tempfail+x@example.org"), token).json()["id"]  # SMTP refuses this one with 451
    rec = api.wait_status(mid, token, "sent", timeout=30)
    types = [(e["type"], e.get("provider")) for e in rec["events"]]
    assert types[0] == ("queued", None) and types[-1] == ("sent", "sendgrid")
    assert ("deferred", "smtp") in types and ("provider_failed", "sendgrid") in types
    assert standin_deliveries(control, "sendgrid").get(mid) == 1 and Mailbox(s.maildir).count(mid) == 0


def test_all_providers_down_retries_then_dead_letters(providers):
    s, api, token, control = providers
    requests.post(f"{control}/_control/sendgrid", json={"status": 503, "count": -1}, timeout=5)
    mid = api.send(message("tempfail+dead@example.org"), token).json()["id"]
    rec = api.wait_status(mid, token, "failed", timeout=40)  # max_attempts 4, retry_base 1 s
    types = [(e["type"], e.get("provider")) for e in rec["events"]]
    # every attempt tries both providers in order; the last gives up
    assert types == [("queued", None)] + [("provider_failed", "sendgrid"), ("deferred", "smtp")] * 3 + [
        ("provider_failed", "sendgrid"), ("failed", None)], types
    assert "gave up after 4 attempts" in rec["events"][-1]["reason"]
    dead = subprocess.run(["redis-cli", "-p", str(s.redis.port), "XRANGE", "mailapi:dead", "-", "+"],
                          capture_output=True, text=True).stdout
    assert mid in dead


def test_circuit_breaker_opens_then_probes_with_a_real_message(tmp_path):
    s, token, _ = private_stack(tmp_path, standin=True)
    try:
        s.start_deliveryd(providers="sendgrid,smtp", breaker_window="10", breaker_min_requests="4",
                          breaker_threshold="50", breaker_cooldown="2", max_in_flight="1", **s.standin_conf())
        api, control = Api(f"http://127.0.0.1:{s.nginx.port}"), f"http://127.0.0.1:{s.standin.port}"
        requests.post(f"{control}/_control/sendgrid", json={"status": 503, "count": -1}, timeout=5)
        ids = [api.send(message(f"cb{i}@example.org"), token).json()["id"] for i in range(12)]
        for mid in ids:
            api.wait_status(mid, token, "sent")
        tried = requests.get(f"{control}/_requests/sendgrid", timeout=5).json()["count"]
        assert tried == 4, f"the circuit should open after 4 failures, sendgrid saw {tried} requests"
        skipped = [api.get(mid, token).json()["events"][1]["reason"] for mid in ids[4:]]
        assert skipped == ["circuit open"] * 8
        counts = Mailbox(s.maildir).counts()
        assert all(counts.get(mid) == 1 for mid in ids), {mid: counts.get(mid) for mid in ids}
        assert '"msg":"circuit breaker","provider":"sendgrid","state":"open"' in open(f"{s.dir}/deliveryd.log").read()

        requests.post(f"{control}/_control/sendgrid", json={"mode": "ok"}, timeout=5)
        time.sleep(2.2)  # cooldown: the next message is the probe
        probe = api.send(message("probe@example.org"), token).json()["id"]
        assert api.wait_status(probe, token, "sent")["events"][-1]["provider"] == "sendgrid"
        after = api.send(message("after@example.org"), token).json()["id"]
        assert api.wait_status(after, token, "sent")["events"][-1]["provider"] == "sendgrid"
        accepted = standin_deliveries(control, "sendgrid")
        assert accepted.get(probe) == 1 and accepted.get(after) == 1 and not any(accepted.get(m) for m in ids)
    finally:
        s.stop_all()


def test_provider_rate_limit_is_respected(tmp_path):
    s, token, _ = private_stack(tmp_path, standin=True)
    try:
        s.start_deliveryd(providers="http", http_rate="5", **s.standin_conf())
        api, control = Api(f"http://127.0.0.1:{s.nginx.port}"), f"http://127.0.0.1:{s.standin.port}"
        t0 = time.time()
        ids = [api.send(message(f"rl{i}@example.org"), token).json()["id"] for i in range(15)]
        for mid in ids:
            api.wait_status(mid, token, "sent")
        elapsed = time.time() - t0
        # 5 at once (the burst), then 5 a second: the last of 15 no sooner than 2 s in
        assert elapsed >= 1.9, elapsed
        assert requests.get(f"{control}/_requests/generic", timeout=5).json()["count"] == 15
        accepted = standin_deliveries(control, "generic")
        assert all(accepted.get(mid) == 1 for mid in ids), accepted
    finally:
        s.stop_all()


RICH = {
    "from": {"email": "news@example.com", "name": "Zoë Ärger"},
    "to": [{"email": "rich@example.org", "name": "Rü Cipient"}], "cc": ["cc@example.org"],
    "bcc": ["bcc@example.org"], "reply_to": "replies@example.com", "subject": "Grüße",
    "text": "plain text", "html": "<p>html</p>", "headers": {"X-Campaign": "autumn"},
    "attachments": [{"filename": "report.csv", "content_type": "text/csv",
                     "content": base64.b64encode(b"a,b\n1,2\n").decode()}],
    "tags": ["welcome"], "metadata": {"user_id": "42"},
}


@pytest.fixture
def hosted(tmp_path):
    """Mailgun, Postmark and SES stand-ins, each the only provider of a tenant
    (with SMTP behind it), so one stack checks all three."""
    s, tokens, api = tenants_stack(tmp_path, ("mailgun", "postmark", "ses"), standin=True)
    try:
        mx = f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/mailapi.test"
        routes = ["route * mx"] + [f"route {t} {t}, mx" for t in tokens]
        s.start_deliveryd(lines=s.standin_providers() + [mx] + routes)
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    yield s, tokens, api, f"http://127.0.0.1:{s.standin.port}"
    s.stop_all()


def sent_by(api, token, mid, provider, code):
    rec = api.wait_status(mid, token, "sent")
    assert (rec["events"][-1]["provider"], rec["events"][-1]["code"]) == (provider, code), rec["events"]
    return rec


def test_mailgun_gets_a_documented_form(hosted):
    s, tokens, api, control = hosted
    mid = api.send(RICH, tokens["mailgun"]).json()["id"]
    sent_by(api, tokens["mailgun"], mid, "mailgun", 200)
    [form] = [f for f in received(control, "mailgun") if f.get("v:mailapi_id") == mid]
    assert form["_domain"] == "mg.example.com"
    assert [rfc2047(a) for a in form["to"]] == ["Rü Cipient <rich@example.org>"]
    assert form["cc"] == ["<cc@example.org>"] and form["bcc"] == ["<bcc@example.org>"]
    assert form["subject"] == "Grüße" and form["text"] == "plain text" and form["html"] == "<p>html</p>"
    assert form["h:Reply-To"] == "<replies@example.com>" and form["h:X-Campaign"] == "autumn"
    assert form["v:user_id"] == "42" and form["o:tag"] == ["welcome"]
    [att] = form["attachment"]
    assert (att["filename"], att["content_type"], att["size"]) == ("report.csv", "text/csv", 8)
    assert Mailbox(s.maildir).count(mid) == 0


def test_postmark_gets_a_documented_body(hosted):
    s, tokens, api, control = hosted
    mid = api.send(RICH, tokens["postmark"]).json()["id"]
    sent_by(api, tokens["postmark"], mid, "postmark", 200)
    [body] = [b for b in received(control, "postmark") if b["Metadata"].get("mailapi_id") == mid]
    assert rfc2047(body["To"]) == "Rü Cipient <rich@example.org>" and "=?UTF-8?" in body["To"]
    assert body["Cc"] == "<cc@example.org>" and body["Bcc"] == "<bcc@example.org>"
    assert body["Subject"] == "Grüße" and body["TextBody"] == "plain text" and body["HtmlBody"] == "<p>html</p>"
    assert body["ReplyTo"] == "<replies@example.com>" and body["Tag"] == "welcome"
    assert body["MessageStream"] == "outbound" and body["Metadata"]["user_id"] == "42"
    assert {"Name": "X-Campaign", "Value": "autumn"} in body["Headers"]
    assert body["Attachments"] == [{"Name": "report.csv", "Content": RICH["attachments"][0]["content"],
                                    "ContentType": "text/csv"}]


def test_ses_gets_a_signed_documented_request(hosted):
    s, tokens, api, control = hosted
    mid = api.send(RICH, tokens["ses"]).json()["id"]
    sent_by(api, tokens["ses"], mid, "ses", 200)
    [body] = [b for b in received(control, "ses")
              if {"Name": "mailapi_id", "Value": mid} in b.get("EmailTags", [])]
    assert body["_region"] == "eu-west-1"  # the stand-in verified the SigV4 signature for it
    dest = body["Destination"]
    assert [rfc2047(a) for a in dest["ToAddresses"]] == ["Rü Cipient <rich@example.org>"]
    assert dest["CcAddresses"] == ["<cc@example.org>"] and dest["BccAddresses"] == ["<bcc@example.org>"]
    simple = body["Content"]["Simple"]
    assert simple["Subject"] == {"Data": "Grüße", "Charset": "UTF-8"}
    assert simple["Body"]["Text"]["Data"] == "plain text" and simple["Body"]["Html"]["Data"] == "<p>html</p>"
    assert {"Name": "X-Campaign", "Value": "autumn"} in simple["Headers"]
    assert body["ReplyToAddresses"] == ["<replies@example.com>"]
    assert simple["Attachments"][0]["FileName"] == "report.csv"


@pytest.mark.parametrize("provider, failure, reason", [
    ("postmark", {"status": 422, "error_code": 406}, "406"),          # inactive recipient
    ("ses", {"status": 400, "error_type": "MessageRejected"}, "MessageRejected"),
    ("mailgun", {"status": 400}, "http 400"),
])
def test_a_refused_message_fails_without_failover(hosted, provider, failure, reason):
    s, tokens, api, control = hosted
    requests.post(f"{control}/_control/{provider}", json=dict(failure, count=1), timeout=5)
    mid = api.send(message("refused@example.org"), tokens[provider]).json()["id"]
    rec = api.wait_status(mid, tokens[provider], "failed")
    last = rec["events"][-1]
    assert last["provider"] == provider and reason in last["reason"], rec["events"]
    assert Mailbox(s.maildir).count(mid) == 0


@pytest.mark.parametrize("provider, failure", [
    ("postmark", {"status": 422, "error_code": 405}),   # account out of credits
    ("ses", {"status": 400, "error_type": "AccountSuspendedException"}),
    ("ses", {"status": 429, "error_type": "TooManyRequestsException"}),
    ("mailgun", {"status": 401}),
    ("mailgun", {"status": 503}),
])
def test_an_account_in_trouble_fails_over(hosted, provider, failure):
    s, tokens, api, control = hosted
    requests.post(f"{control}/_control/{provider}", json=dict(failure, count=-1), timeout=5)
    mid = api.send(message("over@example.org"), tokens[provider]).json()["id"]
    rec = api.wait_status(mid, tokens[provider], "sent")
    assert [(e["type"], e.get("provider")) for e in rec["events"]] == [
        ("queued", None), ("provider_failed", provider), ("sent", "mx")]
    assert Mailbox(s.maildir).count(mid) == 1


def test_ses_with_a_wrong_secret_is_refused_and_fails_over(tmp_path):
    s, token, api = private_stack(tmp_path, standin=True)
    try:
        [ses] = s.standin_providers(("ses",))
        ses = ses.replace("secret_access_key=", "secret_access_key=wrong")
        s.start_deliveryd(lines=[ses, f"provider mx smtp url=smtp://127.0.0.1:{s.smtp.port}/x", "route * ses, mx"])
        mid = api.send(message("badsig@example.org"), token).json()["id"]
        rec = api.wait_status(mid, token, "sent")
        failed = rec["events"][1]
        assert (failed["provider"], failed["code"]) == ("ses", 403) and "Signature" in failed["reason"]
        assert Mailbox(s.maildir).count(mid) == 1
    finally:
        s.stop_all()


def test_retry_after_is_respected(tmp_path):
    s, token, api = private_stack(tmp_path, standin=True)
    control = f"http://127.0.0.1:{s.standin.port}"
    try:
        requests.post(f"{control}/_control/sendgrid", json={"status": 429, "retry_after": 4, "count": 1},
                      timeout=5)
        s.start_deliveryd(providers="sendgrid", retry_base="1", **s.standin_conf())
        mid = api.send(message("later@example.org"), token).json()["id"]
        rec = api.wait_status(mid, token, "sent", timeout=20)
        deferred, sent = rec["events"][1], rec["events"][2]
        assert deferred["type"] == "deferred" and deferred["code"] == 429
        # retry_base 1 alone would retry within a second; the provider asked for 4
        assert at(sent) - at(deferred) >= 3.9
        assert standin_deliveries(control, "sendgrid").get(mid) == 1
    finally:
        s.stop_all()


def at(event):
    return datetime.datetime.fromisoformat(event["at"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("headers", [{"X-Long": "w" * 900}, {f"X-H{i}": "v" for i in range(15)}])
def test_a_message_ses_cannot_carry_goes_to_the_dead_letters_at_once(tmp_path, headers):
    """SES alone on the route, and a message it can never take (a header
    value over its 870, more than its 14 headers): no route can carry it,
    so it is dead-lettered at once (replayable once one can), not retried
    for max_attempts (12 by default: a day of backoff)."""
    s, token, api = private_stack(tmp_path, standin=True)
    try:
        s.start_deliveryd(lines=s.standin_providers(("ses",)) + ["route * ses"], max_attempts="12")
        t0 = time.time()
        mid = api.send(message("ses-cannot@example.org", headers=headers), token).json()["id"]
        rec = api.wait_status(mid, token, "failed", timeout=15)
        assert time.time() - t0 < 10
        assert "no route can carry" in rec["events"][-1]["reason"] and "SES" in rec["events"][-1]["reason"], rec
        assert [e["type"] for e in rec["events"]] == ["queued", "failed"], rec["events"]
        dead = redislib.Redis(port=s.redis.port).xrange("mailapi:dead")
        assert [d[1][b"id"].decode() for d in dead] == [mid]
    finally:
        s.stop_all()

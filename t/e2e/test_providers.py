"""Providers and failover, against the stand-in for the hosted APIs."""
import time

import pytest
import requests

import stack as stackmod
from conftest import Api, Mailbox, message, private_stack


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
        assert '"msg":"circuit breaker","provider":"sendgrid","state":"open"' in open(f"{s.dir}/deliveryd.log").read()

        requests.post(f"{control}/_control/sendgrid", json={"mode": "ok"}, timeout=5)
        time.sleep(2.2)  # cooldown: the next message is the probe
        probe = api.send(message("probe@example.org"), token).json()["id"]
        assert api.wait_status(probe, token, "sent")["events"][-1]["provider"] == "sendgrid"
        after = api.send(message("after@example.org"), token).json()["id"]
        assert api.wait_status(after, token, "sent")["events"][-1]["provider"] == "sendgrid"
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
    finally:
        s.stop_all()

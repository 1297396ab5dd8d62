"""Webhooks out (issue 11), through nginx and deliveryd: endpoints managed
through the API (scope "webhooks"), every timeline event delivered at least
once to a receiving server that checks the Standard Webhooks signature with
its own implementation (written here from the spec), retried on 5xx and
timeouts, the endpoint disabled on 410 or persistent failure (the reason
visible), loopback refused unless allowed, secrets rotated with both
signing during the overlap."""
import base64
import collections
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid

import pytest

import stack as stackmod
from conftest import Api, message


class Receiver:
    """A webhook endpoint: verifies each request's signature (any of the
    space-separated v1 signatures, against any of the secrets it knows) and
    answers as scripted: a status, or "sleep" (no answer in time)."""

    def __init__(self):
        self.secrets = []
        self.script = collections.deque()
        self.requests = []      # (webhook-id, payload, verified, signatures)
        self.raw = []           # (webhook-id, timestamp, body, [signature])
        self.lock = threading.Lock()
        rec = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                wid, ts = self.headers.get("webhook-id"), self.headers.get("webhook-timestamp")
                sigs = (self.headers.get("webhook-signature") or "").split()
                verified = any(rec.verify(s, wid, ts, body, sig) for s in rec.secrets for sig in sigs)
                with rec.lock:
                    action = rec.script.popleft() if rec.script else 200
                    rec.raw.append((wid, ts, body, sigs))
                if action == "sleep":
                    time.sleep(3)  # past webhook_timeout: deliveryd gave up on this one
                with rec.lock:
                    rec.requests.append((wid, json.loads(body), verified, len(sigs), action))
                if action == "sleep":
                    action = 200
                self.send_response(action)
                if action == 429:
                    self.send_header("Retry-After", "2")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mail"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def verify(secret, wid, ts, body, sig):
        """Standard Webhooks, from the spec: v1,base64(HMAC-SHA256(base64-decoded secret, id.ts.body))."""
        if not sig.startswith("v1,") or not secret.startswith("whsec_"):
            return False
        key = base64.b64decode(secret[len("whsec_"):])
        mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256).digest()
        return hmac.compare_digest(base64.b64encode(mac).decode(), sig[3:])

    def accepted(self, message_id=None):
        """The verified requests it answered 200 in time, for one message."""
        with self.lock:
            return [r for r in self.requests if r[2] and r[4] == 200 and
                    (message_id is None or r[1]["data"]["message_id"] == message_id)]

    def wait(self, pred, timeout=20):
        deadline = time.time() + timeout
        while not pred():
            assert time.time() < deadline, self.requests[-5:]
            time.sleep(0.1)

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def hooks(tmp_path):
    s = stackmod.Stack(str(tmp_path))
    full = s.add_key("all", "acme", "send+read+webhooks")
    plain = s.add_key("plain", "acme", "send+read")
    other = s.add_key("globex", "globex", "send+read+webhooks")
    s.start_redis()
    s.start_ferretdb()
    s.start_smtp()
    s.start_nginx()
    rec = Receiver()
    yield s, Api(f"http://127.0.0.1:{s.nginx.port}"), {"all": full.token(), "plain": plain.token(),
                                                         "other": other.token()}, rec
    rec.stop()
    s.stop_all()


def call(api, method, path, token, body=None):
    return api.http.request(method, api.base + path, json=body, headers={"Authorization": "Bearer " + token},
                            timeout=10)


def endpoint(api, token, rec, **extra):
    r = call(api, "POST", "/v1/webhooks", token, dict({"url": rec.url}, **extra))
    assert r.status_code == 201, r.text
    ep = r.json()
    assert ep["secret"].startswith("whsec_") and ep["status"] == "enabled"
    rec.secrets.append(ep["secret"])
    return ep


def start(s, **settings):
    return s.start_deliveryd(**dict(dict(webhook_allow_private="1", webhook_retry_schedule="1,1,1",
                                         webhook_timeout="2"), **settings))


def test_endpoints_are_managed_through_the_api_with_their_own_scope(hooks):
    s, api, tokens, rec = hooks
    assert call(api, "POST", "/v1/webhooks", tokens["plain"], {"url": rec.url}).status_code == 403
    for bad, field in [({"url": "ftp://x/y"}, "url"), ({"url": "http://user:pw@x/y"}, "url"), ({}, "url"),
                       ({"url": rec.url, "types": ["nope"]}, "types"), ({"url": rec.url, "extra": 1}, "extra")]:
        r = call(api, "POST", "/v1/webhooks", tokens["all"], bad)
        assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    ep = endpoint(api, tokens["all"], rec, types=["sent", "bounced"])
    assert ep["types"] == ["sent", "bounced"]
    listed = call(api, "GET", "/v1/webhooks", tokens["all"]).json()["webhooks"]
    assert [e["id"] for e in listed] == [ep["id"]] and "secret" not in listed[0]
    assert call(api, "GET", "/v1/webhooks", tokens["other"]).json()["webhooks"] == []  # per tenant
    assert call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["other"]).status_code == 404
    got = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()
    assert got["url"] == rec.url and got["deliveries"] == [] and "secret" not in got
    assert call(api, "DELETE", f"/v1/webhooks/{ep['id']}", tokens["other"]).status_code == 404
    assert call(api, "DELETE", f"/v1/webhooks/{ep['id']}", tokens["all"]).status_code == 200
    assert call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).status_code == 404
    for _ in range(20):
        call(api, "POST", "/v1/webhooks", tokens["all"], {"url": rec.url})
    r = call(api, "POST", "/v1/webhooks", tokens["all"], {"url": rec.url})
    assert r.status_code == 409 and r.json()["error"]["code"] == "too_many"


def test_every_timeline_event_arrives_signed_once_and_retries_survive_5xx_and_timeouts(hooks):
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec)
    start(s)
    rec.script.extend([500, "sleep", 429])  # the first three answers: fail, time out, slow down
    rcpt = f"wh-{uuid.uuid4().hex[:8]}@example.org"
    mid = api.send(message(rcpt), tokens["all"]).json()["id"]
    api.wait_status(mid, tokens["all"], "sent")
    rec.wait(lambda: len({r[0] for r in rec.accepted(mid)}) == 2, timeout=30)
    ok = rec.accepted(mid)
    assert all(r[2] for r in rec.requests)  # every request verified
    by_id = collections.Counter(r[0] for r in ok)
    assert sorted(by_id) == sorted([f"{mid}_q", f"{mid}_t0"]), by_id
    types = {r[0]: r[1]["type"] for r in ok}
    assert types[f"{mid}_q"] == "message.queued" and types[f"{mid}_t0"] == "message.sent"
    sent = next(r[1] for r in ok if r[0] == f"{mid}_t0")
    assert sent["data"]["message_id"] == mid and sent["data"]["provider"] == "smtp" and sent["data"]["code"] == 250
    attempts = len(rec.requests)
    assert attempts >= 5, rec.requests  # 2 events, 3 failed answers before them
    dups = sum(by_id.values()) - len(by_id)
    print(f"webhooks: {len(by_id)} events, {attempts} requests, {dups} duplicates")
    log = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()["deliveries"]
    assert [d["result"] for d in log].count("failed") >= 3 and log[0]["result"] == "delivered", log
    assert {d.get("status") for d in log if d["result"] == "failed"} >= {500, 429}


def test_types_filter_and_a_410_disables_until_enabled(hooks):
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec, types=["sent"])
    start(s)
    mid = api.send(message(f"f-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    rec.wait(lambda: rec.accepted(mid))
    time.sleep(1)
    assert [r[1]["type"] for r in rec.accepted(mid)] == ["message.sent"]  # not queued
    rec.script.append(410)
    gone = api.send(message(f"g-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    deadline = time.time() + 20
    while call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()["status"] != "disabled":
        assert time.time() < deadline
        time.sleep(0.2)
    got = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()
    assert "410" in got["disabled_reason"]
    later = api.send(message(f"h-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    api.wait_status(later, tokens["all"], "sent")
    time.sleep(2)
    assert rec.accepted(gone) == [] and rec.accepted(later) == []  # disabled: nothing goes
    assert call(api, "POST", f"/v1/webhooks/{ep['id']}/enable", tokens["all"]).status_code == 200
    again = api.send(message(f"i-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    rec.wait(lambda: rec.accepted(again))


def test_a_rotation_signs_with_both_secrets_then_the_new_one(hooks):
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec, types=["sent"])
    start(s)
    r = call(api, "POST", f"/v1/webhooks/{ep['id']}/rotate", tokens["all"])
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    assert new.startswith("whsec_") and new != ep["secret"]
    mid = api.send(message(f"r-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    rec.wait(lambda: rec.accepted(mid))
    [req] = rec.accepted(mid)
    assert req[3] == 2  # two signatures while the old secret is still honoured
    rec.secrets = [new]  # a receiver that already switched still verifies it
    assert Receiver.verify  # (the check above ran against both; now only the new one)
    rec.requests.clear()
    mid2 = api.send(message(f"r2-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    rec.wait(lambda: rec.accepted(mid2))


def test_loopback_is_refused_unless_allowed_and_persistent_failure_disables(hooks):
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec)
    s.start_deliveryd(webhook_allow_private="0", webhook_retry_schedule="1,1", webhook_timeout="2")
    mid = api.send(message(f"p-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
    api.wait_status(mid, tokens["all"], "sent")
    deadline = time.time() + 30
    while call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()["status"] != "disabled":
        assert time.time() < deadline
        time.sleep(0.2)
    got = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()
    assert "failed 3 times" in got["disabled_reason"] and "not public" in got["disabled_reason"], got
    assert all("not public" in d["error"] for d in got["deliveries"]), got["deliveries"]
    assert rec.requests == []  # not one request reached the loopback server


class KeepAliveServer:
    """An internal HTTP service on loopback that keeps connections open
    (HTTP/1.1), as a provider of type http behind the firewall would: it
    records the path of every request and whether it was a webhook."""

    def __init__(self):
        self.requests = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                srv.requests.append((self.path, self.headers.get("webhook-id")))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_webhook_never_rides_a_providers_open_connection_to_a_private_address(hooks):
    """The address check is made when a socket is opened; a webhook to the
    host and port of a provider on a private address must not reuse the
    provider's kept-alive connection and so skip it."""
    s, api, tokens, rec = hooks
    internal = KeepAliveServer()
    try:
        ep = call(api, "POST", "/v1/webhooks", tokens["all"], {"url": internal.base + "/admin/drop-tables"}).json()
        s.start_deliveryd(lines=[f"provider hook http url={internal.base}/generic", "route * hook"],
                          webhook_allow_private="0", webhook_retry_schedule="1,1", webhook_timeout="2")
        for i in range(3):
            mid = api.send(message(f"k{i}-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
            api.wait_status(mid, tokens["all"], "sent")
        deadline = time.time() + 20
        while call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()["status"] != "disabled":
            assert time.time() < deadline
            time.sleep(0.2)
        got = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()
        assert all("not public" in d["error"] for d in got["deliveries"]), got["deliveries"]
        assert [r for r in internal.requests if r[1]] == [], internal.requests  # no webhook reached it
        assert {r[0] for r in internal.requests} == {"/generic"}
    finally:
        internal.server.shutdown()


def test_a_tenants_endpoints_that_never_answer_do_not_hold_up_another_tenants(hooks):
    """globex's 20 endpoints accept connections and never answer; acme's
    webhooks still arrive promptly (deliveryd's transfers are not all taken
    by the one tenant's backlog)."""
    import socket
    s, api, tokens, rec = hooks
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)  # the kernel completes the handshakes; nothing is ever read or answered
    try:
        for i in range(20):
            r = call(api, "POST", "/v1/webhooks", tokens["other"],
                     {"url": f"http://127.0.0.1:{hole.getsockname()[1]}/hook{i}"})
            assert r.status_code == 201, r.text
        endpoint(api, tokens["all"], rec, types=["sent"])
        start(s, webhook_retry_schedule="60,60,60")
        for i in range(75):  # 2 events each, to 20 endpoints: 3000 deliveries
            api.send(message(f"n{i}-{uuid.uuid4().hex[:8]}@example.org"), tokens["other"])
        time.sleep(3)
        began = time.time()
        mid = api.send(message(f"v-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
        rec.wait(lambda: rec.accepted(mid), timeout=30)
        took = time.time() - began
        assert took < 8, f"acme's webhook took {took:.1f} s behind globex's"
    finally:
        hole.close()


def test_an_endpoint_that_stays_down_holds_a_bounded_backlog_then_is_disabled(hooks):
    """Each failed delivery waits in Redis for its retry; an endpoint down
    for long (here: answering 500) keeps at most webhook_queue_max of them
    and is then disabled with the reason, not the tenant's whole traffic."""
    import redis as redislib
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec)
    rec.script.extend([500] * 1000)
    start(s, webhook_retry_schedule="600,600", webhook_queue_max="10")
    for i in range(10):  # 20 events
        api.send(message(f"d{i}-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"])
    deadline = time.time() + 30
    while call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()["status"] != "disabled":
        assert time.time() < deadline
        time.sleep(0.2)
    got = call(api, "GET", f"/v1/webhooks/{ep['id']}", tokens["all"]).json()
    assert "waiting" in got["disabled_reason"], got
    r = redislib.Redis(port=s.redis.port)
    [retry_set] = r.keys("*:whretry")
    assert r.zcard(retry_set) <= 11


def test_rotations_at_once_lose_no_secret_they_handed_out(hooks):
    """Rotations at the same moment: each secret answered with a 200 signs
    (none overwrote another's), or the rotation is refused (409)."""
    s, api, tokens, rec = hooks
    ep = endpoint(api, tokens["all"], rec, types=["sent"])
    start(s)
    for _ in range(4):
        barrier, answers = threading.Barrier(2), []

        def rotate():
            barrier.wait()
            answers.append(call(api, "POST", f"/v1/webhooks/{ep['id']}/rotate", tokens["all"]))

        threads = [threading.Thread(target=rotate) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.status_code in (200, 409) for r in answers), [r.text for r in answers]
        ok = [r.json()["secret"] for r in answers if r.status_code == 200]
        assert ok
        rec.secrets = ok
        mid = api.send(message(f"rr-{uuid.uuid4().hex[:8]}@example.org"), tokens["all"]).json()["id"]
        rec.wait(lambda: rec.accepted(mid))
        wid, ts, body, sigs = next(raw for raw in rec.raw if raw[0].startswith(mid))
        for secret in ok:  # both handed out sign (three secrets are kept)
            assert any(Receiver.verify(secret, wid, ts, body, sig) for sig in sigs), (secret, len(sigs))

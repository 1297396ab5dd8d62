"""The suppression list (issue 12), through nginx: a hard bounce at the relay
puts the address on the tenant's list; a later send to it ends `suppressed`
without reaching the relay, and in a message to several recipients only that
one is left out. The list is listed (paginated, newest first), added to and
removed from through the API, per tenant, with the address sealed in Redis."""
import base64
import hashlib
import hmac
import json
import os
import time
import uuid

import redis as redislib

from conftest import Mailbox, message, tenants_stack


def index_key(s):
    with open(os.path.join(s.dir, "keyring")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.split()
            if name == "index":
                return base64.b64decode(value)
    raise AssertionError("no index key")


def rkey(s, tenant, address):
    """contract::recipient_key, written again from docs/storage.md."""
    md = hmac.new(index_key(s), tenant.encode() + b"\0" + address.lower().encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(md[:16]).rstrip(b"=").decode()


def supp(api, token, method="GET", body=None, **params):
    return api.http.request(method, api.base + "/v1/suppressions", json=body, params=params,
                            headers={"Authorization": "Bearer " + token}, timeout=10)


def delivered_to(s, mid):
    """The envelope recipients each delivered copy of `mid` went to."""
    import mailbox
    out = []
    for m in mailbox.Maildir(s.maildir, create=False):
        if mid in (m["Message-ID"] or ""):
            out += [a.strip() for a in m["X-RcptTo"].split(",")]
    return sorted(out)


def wait_suppressed(api, token, address, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        listed = supp(api, token, limit=100).json()["suppressions"]
        for e in listed:
            if e["email"] == address.lower():
                return e
        time.sleep(0.1)
    raise AssertionError(f"{address} was not suppressed")


def test_a_hard_bounce_suppresses_and_the_next_send_skips_only_that_recipient(tmp_path):
    s, tokens, api = tenants_stack(tmp_path, ("acme", "globex"))
    try:
        s.start_deliveryd()
        token = tokens["acme"]
        gone = f"reject+{uuid.uuid4().hex[:8]}@example.org"
        mid = api.send(message(gone), token).json()["id"]
        rec = api.wait_status(mid, token, "failed")
        assert rec["events"][-1]["code"] == 550
        entry = wait_suppressed(api, token, gone)
        assert entry["reason"] == "bounced"
        # the address is sealed in Redis, never in clear
        r = redislib.Redis(port=s.redis.port)
        raw = r.hgetall(f"mailapi:messages:supp:acme")
        assert list(raw) == [rkey(s, "acme", gone).encode()]
        assert gone.encode() not in b"".join(raw.values())
        # another tenant is not affected by acme's list
        assert supp(api, tokens["globex"]).json()["suppressions"] == []

        # one message to the suppressed address alone: suppressed, nothing sent
        before = Mailbox(s.maildir).counts()
        mid2 = api.send(message(gone.upper()), token).json()["id"]  # the same address, spelt otherwise
        rec2 = api.wait_status(mid2, token, "suppressed")
        assert [e["type"] for e in rec2["events"]] == ["queued", "suppressed"]
        assert rec2["recipients"][0]["status"] == "suppressed"
        # and to three, one of them suppressed: the two others get it, once each
        ok1, ok2 = f"a-{uuid.uuid4().hex[:6]}@example.org", f"b-{uuid.uuid4().hex[:6]}@example.org"
        mid3 = api.send(message(ok1, cc=[gone], bcc=[ok2]), token).json()["id"]
        rec3 = api.wait_status(mid3, token, "sent")
        assert delivered_to(s, mid3) == sorted([ok1, ok2])
        states = {x["email"]: x["status"] for x in rec3["recipients"]}
        assert states == {ok1: "sent", gone: "suppressed", ok2: "sent"}, states
        types = [e["type"] for e in rec3["events"]]
        assert types.count("recipient_suppressed") == 1 and types.count("sent") == 1, types
        assert Mailbox(s.maildir).counts().get(mid2, 0) == 0
        assert sum(Mailbox(s.maildir).counts().values()) == sum(before.values()) + 1

        # another tenant sends to the same address: not suppressed for it
        mid4 = api.send(message(gone.replace("reject+", "fine-")), tokens["globex"]).json()["id"]
        api.wait_status(mid4, tokens["globex"], "sent")
    finally:
        s.stop_all()


def test_the_api_adds_lists_in_pages_and_removes(tmp_path):
    s, tokens, api = tenants_stack(tmp_path, ("acme", "globex"))
    try:
        s.start_deliveryd()
        token = tokens["acme"]
        emails = [f"user{i:03d}@example.org" for i in range(120)]
        r = supp(api, token, "POST", {"emails": emails[:100]})
        assert r.status_code == 200 and r.json() == {"added": 100, "existing": 0}, r.text
        time.sleep(0.01)
        r = supp(api, token, "POST", {"emails": emails[90:] + ["USER000@example.org"], "reason": "complained"})
        assert r.json() == {"added": 20, "existing": 11}, r.text
        # pages of 50, newest first, every address once
        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 50} if cursor is None else {"limit": 50, "cursor": cursor}
            page = supp(api, token, **params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += body["suppressions"]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert pages == 3 and len(seen) == 120 and len({e["email"] for e in seen}) == 120
        assert {e["email"] for e in seen[:20]} == set(emails[100:])  # the newest
        assert all(e["reason"] == "manual" for e in seen[20:])      # kept: the first reason stays
        created = [e["created_at"] for e in seen]
        assert created == sorted(created, reverse=True)
        assert supp(api, tokens["globex"]).json() == {"suppressions": [], "next_cursor": None}

        # a send to a suppressed address: suppressed
        mid = api.send(message("User005@Example.org"), token).json()["id"]
        api.wait_status(mid, token, "suppressed")
        # removed: sent again
        r = supp(api, token, "DELETE", {"emails": ["user005@example.org", "nobody@example.org"]})
        assert r.status_code == 200 and r.json() == {"removed": 1}, r.text
        mid = api.send(message("user005@example.org"), token).json()["id"]
        api.wait_status(mid, token, "sent")
        assert len(seen) - 1 == sum(1 for _ in range(119))
    finally:
        s.stop_all()


def test_bad_requests_get_a_clear_error_and_change_nothing(tmp_path):
    s, tokens, api = tenants_stack(tmp_path, ("acme",))
    try:
        token = tokens["acme"]
        r = redislib.Redis(port=s.redis.port)
        cases = [
            ({"emails": ["not an address"]}, 422, "invalid_address"),
            ({"emails": []}, 400, "invalid_value"),
            ({"emails": ["a@example.org"] * 1001}, 400, "invalid_value"),
            ({"email": "a@example.org", "reason": "erased"}, 422, "invalid_value"),
            ({"email": "a@example.org", "reason": 5}, 422, "invalid_value"),
            ({}, 400, "required"),
            ({"email": "a@example.org", "emails": ["b@example.org"]}, 400, "required"),
        ]
        for body, status, code in cases:
            got = supp(api, token, "POST", body)
            assert got.status_code == status and got.json()["error"]["code"] == code, (body, got.text)
        for method, body in (("POST", {"emails": ["a@example.org"], "why": "x"}),
                             ("DELETE", {"emails": ["a@example.org"], "reason": "manual"}),
                             ("DELETE", {"emails": ["a@example.org"], "x-unknown": 42})):
            got = supp(api, token, method, body)
            assert got.status_code == 400 and got.json()["error"]["code"] == "unknown_field", (method, body, got.text)
        got = api.http.post(api.base + "/v1/suppressions", data="{not json", timeout=10,
                            headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        assert got.status_code == 400 and got.json()["error"]["code"] == "invalid_json"
        got = api.http.post(api.base + "/v1/suppressions", data="email=a@example.org", timeout=10,
                            headers={"Authorization": "Bearer " + token})
        assert got.status_code == 415
        assert supp(api, "").status_code == 401
        assert supp(api, token, cursor="nonsense").status_code == 400
        assert supp(api, token, limit=0).status_code == 400
        assert supp(api, token, limit=101).status_code == 400
        assert r.keys("mailapi:messages:supp*") == []
    finally:
        s.stop_all()


def test_a_read_only_key_lists_but_cannot_change(tmp_path):
    def keys(s):
        keys.ro = s.add_key("ro", "acme", "read").token()
    s, tokens, api = tenants_stack(tmp_path, ("acme",), before_nginx=keys)
    try:
        assert supp(api, keys.ro).status_code == 200
        r = supp(api, keys.ro, "POST", {"email": "a@example.org"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
        assert json.loads(supp(api, tokens["acme"]).text)["suppressions"] == []
    finally:
        s.stop_all()

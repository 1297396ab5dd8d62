"""Bad requests get the JSON error of DESIGN.md and enqueue nothing."""
import json

import pytest

from conftest import message

BAD_BODIES = [
    ("malformed JSON", b'{"from": "a@example.com",', 400, "invalid_json", None),
    ("not an object", b"[1,2]", 422, "invalid_type", None),
    ("empty body", b"", 400, "invalid_json", None),
    ("missing from", {"to": ["a@example.org"], "subject": "s", "text": "t"}, 422, "required", "from"),
    ("missing to", {"from": "a@example.com", "subject": "s", "text": "t"}, 422, "required", "to"),
    ("missing subject", {"from": "a@example.com", "to": ["a@example.org"], "text": "t"}, 422, "required", "subject"),
    ("no body", {"from": "a@example.com", "to": ["a@example.org"], "subject": "s"}, 422, "required", "text"),
    ("bad recipient", {"from": "a@example.com", "to": ["a@example.org", "junk"], "subject": "s", "text": "t"},
     422, "invalid_address", "to[1]"),
    ("header injection in subject", {"from": "a@example.com", "to": ["a@example.org"],
                                     "subject": "hi\r\nBcc: victim@example.net", "text": "t"},
     422, "invalid_value", "subject"),
    ("structural header", dict(message("a@example.org"), headers={"From": "ceo@example.com"}),
     422, "forbidden_header", "headers.From"),
    ("CRLF in header", dict(message("a@example.org"), headers={"X-A": "1\r\nBcc: x@example.net"}),
     422, "invalid_header", "headers.X-A"),
    ("unknown field", dict(message("a@example.org"), priority="high"), 422, "unknown_field", "priority"),
    ("too many recipients", dict(message("a@example.org"), to=[f"u{i}@example.org" for i in range(51)]),
     422, "too_many_recipients", "to"),
    ("bad attachment", dict(message("a@example.org"), attachments=[{"filename": "a", "content": "!!"}]),
     422, "invalid_base64", "attachments[0].content"),
    ("send_at too far", dict(message("a@example.org"), send_at="2099-01-01T00:00:00Z"),
     422, "invalid_value", "send_at"),
]


@pytest.mark.parametrize("case", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_bodies(api, keys, enqueued, case):
    _, body, status, code, field = case
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    before = enqueued()
    r = api.post_raw("/v1/messages", data, {"Authorization": "Bearer " + keys["acme_full"].token(),
                                             "Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    assert err.get("field") == field
    assert enqueued() == before


def test_wrong_content_type_and_size(api, keys, enqueued):
    token = keys["acme_full"].token()
    before = enqueued()
    r = api.post_raw("/v1/messages", json.dumps(message("a@example.org")),
                     {"Authorization": "Bearer " + token, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    big = json.dumps(message("a@example.org", text="x" * (11 * 1024 * 1024)))
    r = api.post_raw("/v1/messages", big, {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    assert enqueued() == before


def test_unknown_endpoints_and_methods(api, keys):
    r = api.http.get(api.base + "/v2/whatever")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.http.delete(api.base + "/v1/messages", headers={"Authorization": "Bearer " + keys["acme_full"].token()})
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_keepalive_survives_early_errors(api, keys, rcpt):
    """An error answered before the body was read must not leave the body to be
    parsed as the next request on the same connection."""
    s = api.http
    for _ in range(3):
        r = s.post(api.base + "/v1/messages", data=json.dumps(message(rcpt)),
                   headers={"Authorization": "Bearer bad", "Content-Type": "application/json"})
        assert r.status_code == 401
        r = s.post(api.base + "/v1/messages", json=message(rcpt),
                   headers={"Authorization": "Bearer " + keys["acme_full"].token()})
        assert r.status_code == 202, r.text


def test_health(api):
    r = api.http.get(api.base + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "queue": "up"}


def test_errors_nginx_raises_itself_are_json_too(api):
    import socket
    r = api.http.request("TRACE", api.base + "/v1/messages")
    assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = api.http.get(api.base + "/healthz", headers={"X-Big": "x" * 20000})
    assert r.status_code in (400, 494) and r.json()["error"]["code"] in ("bad_request", "headers_too_large")
    r = api.http.get(api.base + "/" + "a" * 9000)
    assert r.headers["Content-Type"] == "application/json" and "error" in r.json()
    with socket.create_connection(("127.0.0.1", int(api.base.rsplit(":", 1)[1]))) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        reply = s.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 400") and '"code":"bad_request"' in reply

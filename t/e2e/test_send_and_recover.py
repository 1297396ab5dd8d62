"""The walking skeleton, through nginx: accept, deliver over real SMTP, record
in MongoDB, recover decrypted."""
import base64
import glob
import os
import time
import uuid

from conftest import message


def test_accepted_message_is_delivered_and_recoverable(api, keys, inbox, rcpt):
    token = keys["acme_full"].token()
    r = api.send(message(rcpt, subject="Welcome aboard", text="Line one\nLine two"), token)
    assert r.status_code == 202, r.text
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert body["status"] == "queued" and body["id"].startswith("msg_")
    mid = body["id"]

    mail = inbox.find(mid)
    assert mail["From"] == "sender@example.com"
    assert mail["To"] == rcpt
    assert mail["Subject"] == "Welcome aboard"
    assert mail["Message-ID"] == f"<{mid}@mailapi.test>"
    assert mail["Date"]
    assert mail.get_body(("plain",)).get_content().replace("\r\n", "\n").strip() == "Line one\nLine two"
    assert rcpt in mail["X-RcptTo"]  # the SMTP envelope, as the server saw it
    assert inbox.count(mid) == 1

    record = api.wait_status(mid, token)
    assert record["id"] == mid
    assert record["subject"] == "Welcome aboard" and record["text"] == "Line one\nLine two"
    assert record["to"] == [{"email": rcpt}]
    assert [e["type"] for e in record["events"]] == ["queued", "sent"]
    assert record["events"][1]["provider"] == "smtp" and record["events"][1]["code"] == 250

    r = api.list(rcpt, token)
    assert r.status_code == 200, r.text
    listed = r.json()
    assert [m["id"] for m in listed["messages"]] == [mid]
    assert listed["messages"][0]["status"] == "sent"
    assert listed["next_cursor"] is None


def test_full_message_model_reaches_the_inbox(api, keys, inbox, rcpt):
    token = keys["acme_full"].token()
    cc, bcc = f"cc-{rcpt}", f"bcc-{rcpt}"
    r = api.send({
        "from": {"email": "news@example.com", "name": "Zoë Ärger"},
        "to": [{"email": rcpt, "name": "Rü Cipient"}], "cc": [cc], "bcc": [bcc],
        "reply_to": "replies@example.com",
        "subject": "Grüße aus Köln — " + "x" * 80,
        "text": "plain part", "html": "<p>html part</p>",
        "headers": {"X-Campaign": "autumn"},
        "attachments": [{"filename": "report.csv", "content_type": "text/csv",
                         "content": base64.b64encode(b"a,b\n1,2\n").decode()}],
        "tags": ["welcome"], "metadata": {"user_id": "42"},
    }, token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    mail = inbox.find(mid)
    assert str(mail["From"]) == "Zoë Ärger <news@example.com>"
    assert str(mail["To"]) == f"Rü Cipient <{rcpt}>"
    assert str(mail["Cc"]) == cc
    assert mail["Bcc"] is None                     # never in the headers ...
    assert bcc in mail["X-RcptTo"]                 # ... only in the envelope
    assert str(mail["Reply-To"]) == "replies@example.com"
    assert str(mail["Subject"]) == "Grüße aus Köln — " + "x" * 80
    assert mail["X-Campaign"] == "autumn"
    assert mail.get_body(("plain",)).get_content().strip() == "plain part"
    assert mail.get_body(("html",)).get_content().strip() == "<p>html part</p>"
    atts = list(mail.iter_attachments())
    assert [a.get_filename() for a in atts] == ["report.csv"]
    assert atts[0].get_content_type() == "text/csv"
    assert atts[0].get_payload(decode=True) == b"a,b\n1,2\n"
    assert inbox.count(mid) == 1  # one mail for to, cc and bcc together

    rec = api.wait_status(mid, token)
    assert rec["attachments"] == [{"filename": "report.csv", "content_type": "text/csv", "size": 8}]
    assert rec["tags"] == ["welcome"] and rec["metadata"] == {"user_id": "42"}
    # findable by every recipient, case-insensitively
    for who in (rcpt.upper(), cc, bcc):
        assert [m["id"] for m in api.list(who, token).json()["messages"]] == [mid]


def test_nothing_personal_is_stored_in_plaintext(stack, api, keys, redis_cli, rcpt):
    token = keys["acme_full"].token()
    marker = "body-" + uuid.uuid4().hex
    subject = "subject-" + uuid.uuid4().hex
    r = api.send(message(rcpt, subject=subject, text=marker, metadata={"m": marker}), token)
    assert r.status_code == 202
    mid = r.json()["id"]
    api.wait_status(mid, token)

    # Redis: the whole dataset as written to disk (rdbcompression is off), and
    # the append-only log of every write.
    assert redis_cli("SAVE") == "OK"
    with open(os.path.join(stack.dir, "redis-dump.rdb"), "rb") as f:
        dump = f.read()
    aof = glob.glob(os.path.join(stack.dir, "appendonlydir", "*"))
    assert aof
    dump += b"".join(open(p, "rb").read() for p in aof)
    assert mid.encode() in dump  # the routing fields are there ...
    for secret in (rcpt, marker, subject, rcpt.split("@")[0]):
        assert secret.encode() not in dump  # ... the message is not

    # The store: every byte PostgreSQL keeps on disk under FerretDB (tables,
    # indexes and the WAL), after a checkpoint wrote the buffers out.
    stack.psql("CHECKPOINT")
    files = glob.glob(os.path.join(stack.dir, "pg", "**", "*"), recursive=True)
    data = b"".join(open(p, "rb").read() for p in files if os.path.isfile(p))
    assert mid.encode() in data
    for secret in (rcpt, marker, subject, rcpt.split("@")[0]):
        assert secret.encode() not in data

    # ... and no log holds the address or the body.
    for log in glob.glob(os.path.join(stack.dir, "*.log")):
        text = open(log, "rb").read()
        assert rcpt.encode() not in text and marker.encode() not in text, log


def test_recover_pages_newest_first(api, keys, rcpt):
    token = keys["acme_full"].token()
    ids = []
    for i in range(5):
        r = api.send(message(rcpt, subject=f"n{i}"), token)
        assert r.status_code == 202
        ids.append(r.json()["id"])
    for mid in ids:
        api.wait_status(mid, token)
    seen, cursor = [], None
    while True:
        params = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.list(rcpt, token, **params).json()
        assert len(page["messages"]) <= 2
        seen += [m["id"] for m in page["messages"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))


def test_tenants_see_only_their_own_messages(api, keys, rcpt):
    acme, globex = keys["acme_full"].token(), keys["globex_full"].token()
    mid = api.send(message(rcpt), acme).json()["id"]
    api.wait_status(mid, acme)
    r = api.get(mid, globex)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.list(rcpt, globex)
    assert r.status_code == 200 and r.json()["messages"] == []
    assert [m["id"] for m in api.list(rcpt, acme).json()["messages"]] == [mid]


def test_read_and_send_scopes_are_enforced(api, keys, rcpt, enqueued):
    before = enqueued()
    r = api.send(message(rcpt), keys["acme_read"].token())
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert enqueued() == before
    r = api.list(rcpt, keys["acme_send"].token())
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    # a token cannot claim more than its key has: send+read minted for a read-only key
    r = api.send(message(rcpt), keys["acme_read"].token(scopes="send+read"))
    assert r.status_code == 403
    assert enqueued() == before


def test_recover_input_errors(api, keys):
    token = keys["acme_full"].token()
    cases = [({}, 422, "required", "recipient"),
             ({"recipient": "not-an-address"}, 422, "invalid_address", "recipient"),
             ({"recipient": ["a@example.org"]}, 422, "invalid_address", "recipient"),
             ({"recipient": "a@example.org", "limit": 0}, 422, "invalid_value", "limit"),
             ({"recipient": "a@example.org", "limit": 1001}, 422, "invalid_value", "limit"),
             ({"recipient": "a@example.org", "limit": "10"}, 422, "invalid_type", "limit"),
             ({"recipient": "a@example.org", "limit": 99999999999999999999999}, 422, "invalid_value", "limit"),
             ({"recipient": "a@example.org", "limit": 1.5}, 422, "invalid_value", "limit"),
             ({"recipient": "a@example.org", "cursor": "bogus"}, 422, "invalid_value", "cursor"),
             ({"recipient": "a@example.org", "cursor": 7}, 422, "invalid_value", "cursor"),
             ({"recipient": "a@example.org", "other": 1}, 422, "unknown_field", "other")]
    for body, status, code, field in cases:
        r = api.http.post(api.base + "/v1/messages/search", json=body, headers={"Authorization": "Bearer " + token})
        assert r.status_code == status, (body, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field, body
    for raw, code in ((b"{", "invalid_json"), (b"[]", "invalid_type"), (b'{"recipient": "a@example.org",'
                                                                       b' "recipient": "b@example.org"}', "invalid_json")):
        r = api.http.post(api.base + "/v1/messages/search", data=raw,
                          headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
        assert r.json()["error"]["code"] == code, (raw, r.text)
    r = api.http.post(api.base + "/v1/messages/search", data=b"x" * 5000,
                      headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    # the address never travels in a URL: the old form points to the new one
    r = api.http.get(api.base + "/v1/messages", params={"recipient": "a@example.org"},
                     headers={"Authorization": "Bearer " + token})
    assert r.status_code == 405 and r.json()["error"]["code"] == "use_search" and r.headers["Allow"] == "POST"
    for bad_id in ("nope", "msg_" + "0" * 25, "../../etc"):
        r = api.get(bad_id, token)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

"""Mail that every receiving server accepts and can verify (issue 10), through
nginx -> deliveryd -> real SMTP servers (one offering SMTPUTF8, one not; both
strict: a line over 998 octets, a bare CR or LF, or undeclared 8-bit data is
refused): internationalised addresses, folded header fields, CRLF bodies,
an outcome per recipient, sender domains per key, DKIM signatures checked
by an independent verifier (Debian's python3-dkim) against the DNS records
deliveryd prints."""
import email
import email.policy
import glob
import os
import signal
import subprocess
import time
import uuid

import dkim
import pytest
import redis as redislib

import stack as stackmod
from conftest import Api, message, private_stack


def raw_mail(maildir, mid, timeout=15):
    """The bytes a server stored for our message id (its own X-Test-* lines on top)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in glob.glob(os.path.join(maildir, "new", "*")):
            with open(path, "rb") as f:
                data = f.read()
            if f"<{mid}@".encode() in data:
                return data
        time.sleep(0.1)
    raise AssertionError(f"no mail with {mid} arrived in {maildir}")


def mails(maildir, mid):
    """Every stored mail of a message id, parsed strictly (a defect raises)."""
    out = []
    for path in glob.glob(os.path.join(maildir, "new", "*")):
        with open(path, "rb") as f:
            data = f.read()
        if f"<{mid}@".encode() in data:
            out.append(strict(data))
    return out


def strict(data):
    """Parsed strictly (a defect raises); a message with UTF-8 header fields
    (SMTPUTF8, RFC 6532) is read as the UTF-8 text it is."""
    if any(b >= 0x80 for b in data):
        return email.message_from_string(data.decode("utf-8"), policy=email.policy.strict)
    return email.message_from_bytes(data, policy=email.policy.strict)


def stream_length(s):
    return redislib.Redis(port=s.redis.port).xlen("mailapi:messages")


def provider(name, port, opts=""):
    return f"provider {name} smtp url=smtp://127.0.0.1:{port}/mailapi.test {opts}".strip()


@pytest.fixture
def intl(tmp_path):
    """A stack whose first SMTP server offers SMTPUTF8."""
    s, token, api = private_stack(tmp_path)
    utf8 = s.start_smtp(name="utf8", smtputf8=True)
    yield s, token, api, utf8
    s.stop_all()


def body_of(m, kind):
    return m.get_body((kind,)).get_content().replace("\r\n", "\n")


# ---------------------------------------------------------------- addresses

def test_utf8_and_idn_addresses_reach_a_relay_that_offers_smtputf8(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd(lines=[provider("utf8", utf8.port), "route * utf8"])
    r = api.send({"from": {"email": "zoë@exämple.com", "name": "Zoë"}, "to": ["ålice@example.net"],
                  "cc": ["bob@bücher.example"], "subject": "Grüße", "text": "Hallo Ålice"}, token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    rec = api.wait_status(mid, token, "sent")
    assert [x["status"] for x in rec["recipients"]] == ["sent", "sent"]
    raw = raw_mail(utf8.maildir, mid)
    m = strict(raw)
    assert m["X-Test-SMTPUTF8"] == "yes"
    assert m["X-MailFrom"] == "zoë@xn--exmple-cua.com"  # the domain as A-labels, the local part as it is
    assert m["X-RcptTo"] == "ålice@example.net, bob@xn--bcher-kva.example"
    assert m["To"].addresses[0].addr_spec == "ålice@example.net"
    assert m["Cc"].addresses[0].addr_spec == "bob@xn--bcher-kva.example"
    assert m["From"].addresses[0].display_name == "Zoë"
    assert body_of(m, "plain") == "Hallo Ålice"


def test_an_idn_domain_alone_needs_no_smtputf8(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd(lines=[provider("plain", s.smtp.port), "route * plain"])
    mid = api.send(message("kunde@bücher.example", **{"from": "news@exämple.com"}), token).json()["id"]
    api.wait_status(mid, token, "sent")
    m = strict(raw_mail(s.maildir, mid))
    assert m["X-Test-SMTPUTF8"] == "no"
    assert m["X-RcptTo"] == "kunde@xn--bcher-kva.example" and m["X-MailFrom"] == "news@xn--exmple-cua.com"
    assert str(m["To"]) == "kunde@xn--bcher-kva.example"


def test_a_utf8_local_part_fails_over_to_a_relay_that_offers_smtputf8(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd(lines=[provider("plain", s.smtp.port), provider("utf8", utf8.port), "route * plain, utf8"])
    mid = api.send(message("ålice@example.net"), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    failed = [e for e in rec["events"] if e["type"] == "provider_failed"]
    assert [e["provider"] for e in failed] == ["plain"] and "SMTPUTF8" in failed[0]["reason"], rec["events"]
    assert rec["events"][-1]["provider"] == "utf8"
    assert len(mails(utf8.maildir, mid)) == 1 and mails(s.maildir, mid) == []


def test_a_utf8_local_part_no_route_can_carry_is_given_up_at_once(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd(lines=[provider("plain", s.smtp.port), "route * plain"], max_attempts="12")
    t0 = time.time()
    mid = api.send(message("ålice@example.net"), token).json()["id"]
    rec = api.wait_status(mid, token, "failed", timeout=15)
    assert time.time() - t0 < 10  # not after a day of retries
    assert "no route can carry" in rec["events"][-1]["reason"] and "SMTPUTF8" in rec["events"][-1]["reason"]
    dead = redislib.Redis(port=s.redis.port).xrange("mailapi:dead")
    assert [d[1][b"id"].decode() for d in dead] == [mid]  # replayable once a route can carry it
    assert mails(s.maildir, mid) == []


@pytest.mark.parametrize("bad", ["a@xn--zz.example", "a@☃.example", "a@bü--cher.example", "a@-bücher.example"])
def test_a_domain_that_is_not_valid_idna_is_refused_at_the_edge(intl, bad):
    s, token, api, utf8 = intl
    before = stream_length(s)
    r = api.send(message(bad), token)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_address", r.text
    assert r.json()["error"]["field"] == "to[0]"
    assert stream_length(s) == before


# ---------------------------------------------------------------- fields and bodies

def test_a_998_byte_subject_and_long_header_values_are_folded(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd()
    one_word = "x" * 998
    words = " ".join(f"word{i}" for i in range(150))[:998]
    value = " ".join(["ünïcödé"] * 45)  # 494 bytes, words that need encoding
    ids = []
    for subject in (one_word, words):
        r = api.send(message(f"fold-{uuid.uuid4().hex[:8]}@example.org", subject=subject,
                             headers={"X-Long": value, "X-Words": words}), token)
        assert r.status_code == 202, r.text
        ids.append((r.json()["id"], subject))
    for mid, subject in ids:
        raw = raw_mail(s.maildir, mid)  # the strict server took it: no line over 998
        header = raw.split(b"\r\n\r\n", 1)[0]
        lines = header.split(b"\r\n")
        assert max(len(l) for l in lines) <= 998
        # where whitespace allows, at most 78
        assert all(len(l) <= 78 for l in lines if not l.startswith(b"X-Test") and not l.startswith(b"X-RcptTo")
                   and b" " in l.strip()[:70] and subject != one_word), [l for l in lines if len(l) > 78]
        m = strict(raw)
        assert m["Subject"] == subject and m["X-Long"] == value and m["X-Words"] == words


def test_a_long_word_in_a_callers_header_reaches_a_strict_server(intl):
    """A header of the caller's whose one word (a long List-Unsubscribe URL)
    fits the 998 bytes a value may have, but not the line behind its name:
    the strict server took it (no line over 998), and the URL is as it was
    (folded after the colon, not encoded: Python's parser keeps the space
    of that fold, which unfolding gives as any field's ": ")."""
    s, token, api, utf8 = intl
    s.start_deliveryd()
    url = "<https://example.com/unsubscribe/" + "t" * 950 + ">"
    r = api.send(message("long-word@example.org", headers={"List-Unsubscribe": url, "X-" + "n" * 74: "y" * 990}),
                 token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    rec = api.wait_status(mid, token, "sent")
    raw = raw_mail(s.maildir, mid)
    assert max(len(l) for l in raw.split(b"\r\n")) <= 998
    m = strict(raw)
    assert m["List-Unsubscribe"].lstrip() == url and m["X-" + "n" * 74].lstrip() == "y" * 990, rec["events"]
    assert b"=?" not in raw.split(b"\r\n\r\n", 1)[0].split(b"List-Unsubscribe:", 1)[1][:20]


def test_text_line_breaks_leave_as_crlf(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd()
    text = "one\ntwo\r\nthree\rfour\n.\n.. dots\nFrom the start\n" + "long line " * 200 + "\nend\n"
    html = "<p>" + "é" * 2000 + "</p>\n<p>two</p>"
    mid = api.send(message(f"crlf-{uuid.uuid4().hex[:8]}@example.org", text=text, html=html), token).json()["id"]
    raw = raw_mail(s.maildir, mid)
    assert b"\n" not in raw.replace(b"\r\n", b"") and b"\r" not in raw.replace(b"\r\n", b"")
    m = strict(raw)
    assert body_of(m, "plain") == text.replace("\r\n", "\n").replace("\r", "\n")
    assert body_of(m, "html") == html
    # the received text keeps dots and a leading "From " as sent
    assert "\n.\n.. dots\nFrom the start\n" in body_of(m, "plain")


# ---------------------------------------------------------------- recipients

def test_one_refused_recipient_does_not_fail_the_others(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd()
    tag = uuid.uuid4().hex[:8]
    ok1, bad, ok2 = f"ok1-{tag}@example.org", f"reject+{tag}@example.org", f"ok2-{tag}@example.org"
    mid = api.send(message(ok1, cc=[bad], bcc=[ok2]), token).json()["id"]
    rec = api.wait_status(mid, token, "sent")
    states = {x["email"]: (x["status"], x["code"]) for x in rec["recipients"]}
    assert states == {ok1: ("sent", 250), bad: ("failed", 550), ok2: ("sent", 250)}, rec["recipients"]
    [refused] = [e for e in rec["events"] if e["type"] == "recipient_failed"]
    assert refused["recipient"] == bad and refused["code"] == 550 and "5.1.1" in refused["reason"]
    assert "@" not in refused["reason"]  # the relay's words, without an address
    [m] = mails(s.maildir, mid)
    assert m["X-RcptTo"] == f"{ok1}, {ok2}"  # one mail, both accepted recipients
    # the list shows it for each of them, with the same per-recipient story
    listed = api.list(bad, token).json()["messages"]
    assert [x["id"] for x in listed] == [mid]
    assert {x["email"]: x["status"] for x in listed[0]["recipients"]}[bad] == "failed"


def test_a_recipient_refused_for_now_is_retried_alone(intl):
    s, token, api, utf8 = intl
    s.start_deliveryd(retry_base="1")
    tag = uuid.uuid4().hex[:8]
    ok, later = f"ok-{tag}@example.org", f"flaky1+{tag}@example.org"
    mid = api.send(message(ok, to=[ok, later]), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=30)
    types = [e["type"] for e in rec["events"]]
    assert types[:4] == ["queued", "recipient_sent", "recipient_deferred", "deferred"], types
    assert types[-1] == "sent"
    assert [e["recipient"] for e in rec["events"] if e["type"] == "recipient_deferred"] == [later]
    assert [x["status"] for x in rec["recipients"]] == ["sent", "sent"]
    got = sorted(m["X-RcptTo"] for m in mails(s.maildir, mid))
    assert got == sorted([ok, later])  # each exactly once: the retry went to the deferred one alone


def test_a_retry_after_a_crash_sends_only_to_whom_is_left(intl):
    """The recipients finished in an attempt stay in Redis (the hash's
    'done'): an instance killed while the retry waits is followed by one that
    sends to the deferred recipient alone."""
    s, token, api, utf8 = intl
    d = s.start_deliveryd(retry_base="4")
    tag = uuid.uuid4().hex[:8]
    ok, later = f"ok-{tag}@example.org", f"flaky1+{tag}@example.org"
    mid = api.send(message(ok, to=[ok, later]), token).json()["id"]
    deadline = time.time() + 15
    r = redislib.Redis(port=s.redis.port)
    while r.hget(f"mailapi:messages:{mid}", "done") is None:
        assert time.time() < deadline, "the first attempt did not finish"
        time.sleep(0.05)
    assert r.zscore("mailapi:scheduled", mid) is not None  # pending: the retry waits
    d.stop(signal.SIGKILL)
    s.start_deliveryd(name="deliveryd2", retry_base="4")
    api.wait_status(mid, token, "sent", timeout=30)
    assert sorted(m["X-RcptTo"] for m in mails(s.maildir, mid)) == sorted([ok, later])


# ---------------------------------------------------------------- headers and senders

@pytest.mark.parametrize("name", ["Content-ID", "Content-Description", "Content-Language", "content-location",
                                  "X-Mailapi-Id", "x-mailapi-anything", "ARC-Seal", "Authentication-Results"])
def test_structural_and_our_own_headers_are_refused(intl, name):
    s, token, api, utf8 = intl
    before = stream_length(s)
    r = api.send(message("a@example.org", headers={name: "x"}), token)
    assert r.status_code == 422 and r.json()["error"]["code"] == "forbidden_header", r.text
    assert r.json()["error"]["field"] == f"headers.{name}"
    assert stream_length(s) == before


def test_a_header_given_twice_is_refused(intl):
    s, token, api, utf8 = intl
    r = api.post_raw("/v1/messages", '{"from":"a@example.com","to":["b@example.org"],"subject":"s","text":"t",'
                     '"headers":{"X-A":"1","x-a":"2"}}',
                     {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_header", r.text


def test_a_key_sends_only_from_its_listed_domains(tmp_path):
    s = stackmod.Stack(str(tmp_path))
    key = s.add_key("shop", "acme", "send+read", "senders=example.com,*.example.org,bücher.example")
    try:
        s.start_redis()
        s.start_ferretdb()
        s.start_smtp()
        s.start_nginx()
        api = Api(f"http://127.0.0.1:{s.nginx.port}")
        token = key.token()
        for sender, status in [("a@example.com", 202), ("a@EXAMPLE.COM", 202), ("a@news.example.org", 202),
                               ("a@xn--bcher-kva.example", 202), ("a@example.org", 403),
                               ("a@evil.example.com", 403), ("a@example.com.evil.net", 403), ("a@evil.com", 403)]:
            before = stream_length(s)
            r = api.send(message("b@example.net", **{"from": sender}), token)
            assert r.status_code == status, (sender, r.text)
            if status == 403:
                assert r.json()["error"]["code"] == "sender_not_allowed" and r.json()["error"]["field"] == "from"
                assert stream_length(s) == before
            else:
                assert stream_length(s) == before + 1
    finally:
        s.stop_all()


# ---------------------------------------------------------------- DKIM

def dkim_keys(s):
    paths = {}
    for kind, args in (("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                       ("ed25519", ["-algorithm", "ed25519"])):
        path = os.path.join(s.dir, f"dkim-{kind}.pem")
        subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
        paths[kind] = path
    return paths


def dns_from_records(text):
    """A dnsfunc for dkimpy from deliveryd --dkim-record's lines."""
    records = {}
    for line in text.strip().splitlines():
        name, rest = line.split(" IN TXT ", 1)
        records[name.rstrip(".")] = "".join(rest.split('"')[1::2]).encode()  # the quoted strings, joined

    def dnsfunc(name, timeout=5):
        return records.get(name.decode().rstrip(".") if isinstance(name, bytes) else name.rstrip("."))
    return dnsfunc


def verified_selectors(raw, dnsfunc):
    d = dkim.DKIM(raw)
    sigs = [l for l in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if l.lower().startswith(b"dkim-signature:")]
    ok = []
    for i in range(len(sigs)):
        if d.verify(idx=i, dnsfunc=dnsfunc):
            ok.append(d.selector.decode())
    return ok, len(sigs)


def test_dkim_signatures_verify_and_rotate_by_selector(intl):
    s, token, api, utf8 = intl
    keys = dkim_keys(s)
    lines = [f"dkim example.com s2026r key_file={keys['rsa']}", f"dkim example.com s2026e key_file={keys['ed25519']}"]
    d = s.start_deliveryd(lines=lines)
    out = subprocess.run([stackmod.DELIVERYD, "-c", d.conf, "--dkim-record", "example.com"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "s2026r._domainkey.example.com. IN TXT" in out.stdout and "k=ed25519" in out.stdout
    dnsfunc = dns_from_records(out.stdout)
    mid = api.send(message(f"d-{uuid.uuid4().hex[:8]}@example.org", subject="Grüße " * 30,
                           text="Zeile\n.\nFrom here  \n", html="<p>x</p>",
                           headers={"X-Campaign": "herbst"}), token).json()["id"]
    raw = raw_mail(s.maildir, mid)
    assert verified_selectors(raw, dnsfunc) == (["s2026r", "s2026e"], 2)
    # another domain's mail is not signed
    other = api.send(message(f"d-{uuid.uuid4().hex[:8]}@example.org", **{"from": "a@other.example"}),
                     token).json()["id"]
    assert b"DKIM-Signature" not in raw_mail(s.maildir, other)
    # a tampered body fails
    with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
        dkim.DKIM(raw.replace(b"Zeile", b"Zeila")).verify(idx=0, dnsfunc=dnsfunc)
    # rotation: a new selector added and the old one dropped, by SIGHUP
    new_key = os.path.join(s.dir, "dkim-new.pem")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", new_key], check=True, capture_output=True)
    with open(d.conf, "a") as f:
        f.write(f"\ndkim example.com s2027 key_file={new_key}\n")
    with open(d.conf) as f:
        text = f.read().replace(lines[0] + "\n", "")
    with open(d.conf, "w") as f:
        f.write(text)
    d.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while "reloaded" not in d.log_tail():
        assert time.time() < deadline, d.log_tail()
        time.sleep(0.1)
    out = subprocess.run([stackmod.DELIVERYD, "-c", d.conf, "--dkim-record", "example.com"],
                         capture_output=True, text=True)
    mid = api.send(message(f"d-{uuid.uuid4().hex[:8]}@example.org"), token).json()["id"]
    assert verified_selectors(raw_mail(s.maildir, mid), dns_from_records(out.stdout)) == (["s2026e", "s2027"], 2)


def test_a_dkim_key_that_is_too_weak_or_missing_is_refused(tmp_path):
    weak = tmp_path / "weak.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(weak)],
                   check=True, capture_output=True)
    for line, why in [(f"dkim example.com s1 key_file={weak}", "2048"),
                      (f"dkim example.com s1 key_file={tmp_path}/none.pem", "cannot read"),
                      ("dkim example.com s1", "key_file"), ("dkim exa mple s1 key_file=x", "expected"),
                      (f"dkim example.com bad_selector! key_file={weak}", "selector")]:
        conf = tmp_path / "d.conf"
        conf.write_text(line + "\n")
        r = subprocess.run([stackmod.DELIVERYD, "-c", str(conf), "--check-config"], capture_output=True, text=True)
        assert r.returncode == 1 and why in r.stderr, (line, r.stderr)

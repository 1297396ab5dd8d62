"""Links for each recipient (issue 12), through nginx: one-click unsubscribe
(RFC 8058: List-Unsubscribe with a signed, expiring URL and
List-Unsubscribe-Post), and response links ("Approve / Reject"). Each is
recorded once, goes into the message's timeline, suppresses (unsubscribe),
and a tampered, forged, replayed or expired link records nothing. The pages
are looked at in a real browser (headless Chromium from Debian)."""
import base64
import email
import email.policy
import hashlib
import hmac
import mailbox
import os
import re
import shutil
import time
import urllib.parse
import uuid

import pytest
import redis as redislib
import requests

import stack as stackmod
from conftest import Mailbox, message, tenants_stack


def keyring(s):
    keys = {}
    with open(os.path.join(s.dir, "keyring")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, value = line.split()
                keys[name] = base64.b64decode(value)
    return keys


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def link_token(key, kid, kind, tenant, mid, rcpt, response, expires):
    """common/links.h's token, written again from its comment."""
    payload = f"1|{kid}|{kind}|{tenant}|{mid}|{rcpt}|{response}|{expires}".encode()
    link_key = hmac.new(key, b"mailapi-v1 links", hashlib.sha256).digest()
    return b64url(payload) + "." + b64url(hmac.new(link_key, payload, hashlib.sha256).digest()[:16])


@pytest.fixture
def linked(tmp_path):
    port = stackmod.free_port()

    def keys(s):
        keys.redirect = s.add_key("redirecting", "initech", "send+read",
                                  "responses_url=https://app.example.com/answered?src=mail").token()
    s, tokens, api = tenants_stack(tmp_path, ("acme", "globex"), before_nginx=keys, port=port,
                                   extra_http=f"    mail_api_link_url http://127.0.0.1:{port};\n"
                                              "    mail_api_link_ttl 7d;\n")
    s.start_deliveryd()
    tokens["initech"] = keys.redirect
    yield s, tokens, api
    s.stop_all()


def copies(s, mid, n, timeout=15):
    """The delivered copies of `mid`, by envelope recipient."""
    deadline = time.time() + timeout
    while True:
        got = {}
        for m in mailbox.Maildir(s.maildir, create=False):
            if mid in (m["Message-ID"] or ""):
                raw = bytes(m)
                got[m["X-RcptTo"].strip()] = email.message_from_bytes(raw, policy=email.policy.default)
        if len(got) >= n:
            return got
        assert time.time() < deadline, f"{len(got)} of {n} copies of {mid}"
        time.sleep(0.1)


def parts(msg):
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    return text, html


def unsubscribe_url(msg):
    m = re.fullmatch(r"<(http://[^>]+)>", str(msg["List-Unsubscribe"]).strip())
    assert m, msg["List-Unsubscribe"]
    return m.group(1)


def timeline(api, token, mid, want, timeout=15):
    deadline = time.time() + timeout
    while True:
        rec = api.get(mid, token).json()
        types = [e["type"] for e in rec["events"]]
        if all(types.count(t) >= want.count(t) for t in want):
            return rec
        assert time.time() < deadline, f"{want} not in {types}"
        time.sleep(0.1)


def events_waiting(s):
    return redislib.Redis(port=s.redis.port).xlen("mailapi:messages:events")


def settled(s, timeout=15):
    deadline = time.time() + timeout
    while events_waiting(s):
        assert time.time() < deadline
        time.sleep(0.05)


def browser():
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        pytest.fail("chromium and chromedriver are missing: run ./build.sh deps")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def shown(driver, title=None, timeout=10):
    """What a person sees: the heading and the text of the page (once its
    heading is `title`, when given: a click loads the next page meanwhile)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    deadline = time.time() + timeout
    while True:
        try:
            got = driver.find_element(By.TAG_NAME, "h1").text, driver.find_element(By.TAG_NAME, "main").text
            if title is None or got[0] == title:
                return got
        except WebDriverException:
            got = None
        if time.time() > deadline:
            return got or ("", driver.page_source[:300])
        time.sleep(0.1)


LINKED = {"unsubscribe": True, "responses": ["Approve", "Reject"],
          "text": "Please decide: {{response_url:Approve}}\nStop these: {{unsubscribe_url}}",
          "html": "<html><body><p>Please decide.</p></body></html>"}


def test_each_recipient_gets_its_own_signed_links_and_headers(linked):
    s, tokens, api = linked
    a, b = f"a-{uuid.uuid4().hex[:6]}@example.org", f"b-{uuid.uuid4().hex[:6]}@example.org"
    r = api.send(message(a, cc=[b], **LINKED), tokens["acme"])
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    api.wait_status(mid, tokens["acme"], "sent")
    got = copies(s, mid, 2)
    assert sorted(got) == sorted([a, b])  # one copy each, each to its recipient alone
    urls = {}
    for rcpt, msg in got.items():
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        u = unsubscribe_url(msg)
        assert u.startswith(f"http://127.0.0.1:{s.nginx.port}/u/")
        text, html = parts(msg)
        approve = re.search(r"Please decide: (\S+)", text).group(1)
        reject = re.search(r"Reject: (\S+)", text).group(1)  # no placeholder: a block at the end
        assert f"Stop these: {u}" in text
        assert approve.startswith(f"http://127.0.0.1:{s.nginx.port}/r/") and approve != reject
        assert f'<a href="{approve}">Approve</a>' in html and f'<a href="{reject}">Reject</a>' in html
        assert html.index("Please decide.") < html.index(approve) < html.index("</body>")
        urls[rcpt] = (u, approve, reject)
    assert len({x for v in urls.values() for x in v}) == 6  # no two links alike
    # the copies went out as one message each: one SMTP transaction a recipient
    assert Mailbox(s.maildir).count(mid) == 2
    # the address is in no link
    assert all(a not in x and b not in x and "acme" not in x for v in urls.values() for x in v)


def test_one_click_unsubscribe_records_once_and_suppresses(linked):
    s, tokens, api = linked
    token = tokens["acme"]
    a, b = f"a-{uuid.uuid4().hex[:6]}@example.org", f"b-{uuid.uuid4().hex[:6]}@example.org"
    mid = api.send(message(a, cc=[b], **LINKED), token).json()["id"]
    api.wait_status(mid, token, "sent")
    got = copies(s, mid, 2)
    ua, ub = unsubscribe_url(got[a]), unsubscribe_url(got[b])
    # what a mail client does (RFC 8058): a POST with the one-click body
    one_click = {"Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(ua, data="List-Unsubscribe=One-Click", headers=one_click, timeout=10)
    assert r.status_code == 200 and "You are unsubscribed" in r.text, r.text
    assert r.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    r = requests.post(ua, data="List-Unsubscribe=One-Click", headers=one_click, timeout=10)
    assert r.status_code == 200 and "already" in r.text  # a replay: recorded once
    # a GET shows the button and records nothing (a scanner fetching links)
    before = events_waiting(s)
    assert "Unsubscribe" in requests.get(ub, timeout=10).text
    assert events_waiting(s) == before
    # the other recipient, in a real browser: the page, its button, the answer
    from selenium.webdriver.common.by import By
    d = browser()
    try:
        d.get(ub)
        title, text = shown(d, "Unsubscribe")
        assert title == "Unsubscribe" and "Stop getting these messages" in text
        d.find_element(By.TAG_NAME, "button").click()
        title, text = shown(d, "You are unsubscribed")
        assert title == "You are unsubscribed" and "will not get these messages" in text, text
    finally:
        d.quit()
    rec = timeline(api, token, mid, ["unsubscribed", "unsubscribed"])
    settled(s)
    rec = api.get(mid, token).json()
    unsubs = [e for e in rec["events"] if e["type"] == "unsubscribed"]
    assert sorted(e["recipient"] for e in unsubs) == sorted([a, b]), unsubs
    listed = {e["email"]: e["reason"] for e in requests.get(
        api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + token}, timeout=10).json()["suppressions"]}
    assert listed == {a: "unsubscribed", b: "unsubscribed"}
    # the next send to them: suppressed, nothing sent
    mid2 = api.send(message(a, cc=[b]), token).json()["id"]
    api.wait_status(mid2, token, "suppressed")
    assert Mailbox(s.maildir).count(mid2) == 0


def test_responses_record_the_first_once_and_show_it(linked):
    s, tokens, api = linked
    token = tokens["acme"]
    a, b = f"a-{uuid.uuid4().hex[:6]}@example.org", f"b-{uuid.uuid4().hex[:6]}@example.org"
    mid = api.send(message(a, cc=[b], **LINKED), token).json()["id"]
    api.wait_status(mid, token, "sent")
    got = copies(s, mid, 2)

    def links_of(msg):
        text, _ = parts(msg)
        return re.search(r"Please decide: (\S+)", text).group(1), re.search(r"Reject: (\S+)", text).group(1)
    a_yes, a_no = links_of(got[a])
    b_yes, b_no = links_of(got[b])
    # a link checker's HEAD records nothing
    before = events_waiting(s)
    assert requests.head(a_no, timeout=10).status_code == 200
    assert events_waiting(s) == before
    d = browser()
    try:
        d.get(a_yes)
        title, text = shown(d, "Thank you")
        assert title == "Thank you" and "\u201cApprove\u201d was recorded" in text, text
        d.get(a_no)  # changing one's mind: the first response stays
        title, text = shown(d, "You have already responded")
        assert title == "You have already responded" and "\u201cApprove\u201d" in text, text
    finally:
        d.quit()
    r = requests.get(b_no, timeout=10)
    assert r.status_code == 200 and "Reject" in r.text
    rec = timeline(api, token, mid, ["responded", "responded"])
    settled(s)
    rec = api.get(mid, token).json()
    responses = {x["email"]: x.get("response") for x in rec["recipients"]}
    assert responses == {a: "Approve", b: "Reject"}, rec["recipients"]
    assert [e["type"] for e in rec["events"]].count("responded") == 2
    # responding suppresses nobody
    assert requests.get(api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + token},
                        timeout=10).json()["suppressions"] == []


def test_a_tenant_can_send_responses_on_to_its_own_page(linked):
    s, tokens, api = linked
    token = tokens["initech"]
    a = f"a-{uuid.uuid4().hex[:6]}@example.org"
    r = api.send(message(a, responses=["Yes, please", "No"], text="Come?"), token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    api.wait_status(mid, token, "sent")
    text = copies(s, mid, 1)[a].get_body(("plain",)).get_content()
    yes = re.search(r"Yes, please: (\S+)", text).group(1)
    r = requests.get(yes, allow_redirects=False, timeout=10)
    assert r.status_code == 303, r.text
    loc = urllib.parse.urlsplit(r.headers["Location"])
    assert (loc.scheme, loc.netloc, loc.path) == ("https", "app.example.com", "/answered")
    assert urllib.parse.parse_qs(loc.query) == {"src": ["mail"], "message_id": [mid], "response": ["Yes, please"],
                                                "first": ["1"]}
    r = requests.get(yes, allow_redirects=False, timeout=10)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["Location"]).query)["first"] == ["0"]


def test_tampered_forged_and_expired_links_record_nothing(linked):
    s, tokens, api = linked
    token = tokens["acme"]
    a = f"a-{uuid.uuid4().hex[:6]}@example.org"
    mid = api.send(message(a, **LINKED), token).json()["id"]
    api.wait_status(mid, token, "sent")
    msg = copies(s, mid, 1)[a]
    base = f"http://127.0.0.1:{s.nginx.port}"
    keys = keyring(s)
    real = unsubscribe_url(msg).rsplit("/", 1)[1]
    payload, mac = real.split(".")
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    now = int(time.time())
    cases = [
        (f"/u/{flipped}.{mac}", 400),                                          # changed after signing
        (f"/u/{payload}", 400),                                                 # cut short
        (f"/u/{payload}.{mac[:-2]}", 400),
        (f"/u/{link_token(os.urandom(32), 'k1', 'u', 'acme', mid, 0, '', now + 3600)}", 400),  # another key
        (f"/u/{link_token(keys['k1'], 'k1', 'u', 'acme', mid, 0, '', now - 1)}", 410),        # expired
        (f"/r/{link_token(keys['k1'], 'k1', 'r', 'acme', mid, 0, 'Approve', now - 1)}", 410),
        (f"/r/{link_token(keys['k1'], 'k1', 'u', 'acme', mid, 0, '', now + 3600)}", 400),     # an unsubscribe on /r/
        (f"/u/{link_token(keys['k1'], 'k9', 'u', 'acme', mid, 0, '', now + 3600)}", 400),     # a key not in the ring
        (f"/u/{link_token(keys['k1'], 'k1', 'u', 'acme', 'msg_x', 0, '', now + 3600)}", 400),
        ("/u/" + "A" * 2000, 400),
    ]
    before = events_waiting(s)
    d = browser()
    try:
        for path, status in cases:
            method = requests.post if path.startswith("/u/") else requests.get
            r = method(base + path, data="List-Unsubscribe=One-Click", timeout=10)
            assert r.status_code == status, (path, r.status_code, r.text[:200])
            assert "Nothing was recorded" in r.text
        d.get(base + cases[4][0])
        assert shown(d, "This link has expired")[0] == "This link has expired"
        d.get(base + cases[0][0])
        assert shown(d, "This link is not valid")[0] == "This link is not valid"
    finally:
        d.quit()
    assert events_waiting(s) == before
    assert redislib.Redis(port=s.redis.port).keys("mailapi:messages:link:*") == []
    # a link signed by us for another tenant's message is not recorded on it
    other = api.send(message(f"g-{uuid.uuid4().hex[:6]}@example.org"), tokens["globex"]).json()["id"]
    api.wait_status(other, tokens["globex"], "sent")
    r = requests.post(base + "/u/" + link_token(keys["k1"], "k1", "u", "acme", other, 0, "", now + 3600), timeout=10)
    assert r.status_code == 200  # signed: taken, and dropped by deliveryd for the tenant mismatch
    settled(s)
    rec = api.get(other, tokens["globex"]).json()
    assert "unsubscribed" not in [e["type"] for e in rec["events"]]
    assert requests.get(api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + tokens["globex"]},
                        timeout=10).json()["suppressions"] == []


def test_links_are_refused_at_send_when_the_service_has_no_url_or_they_are_wrong(linked, api, keys):
    # the shared stack has no mail_api_link_url
    r = api.send(message("a@example.org", unsubscribe=True), keys["acme_full"].token())
    assert r.status_code == 422 and r.json()["error"]["code"] == "links_unavailable", r.text
    s, tokens, lapi = linked
    cases = [
        ({"responses": []}, "invalid_value"),
        ({"responses": ["a"] * 6}, "invalid_value"),
        ({"responses": ["yes", "yes"]}, "invalid_value"),
        ({"responses": ["x" * 33]}, "invalid_value"),
        ({"responses": ["a|b"]}, "invalid_value"),
        ({"responses": [" yes"]}, "invalid_value"),
        ({"responses": "yes"}, "invalid_type"),
        ({"unsubscribe": "yes"}, "invalid_type"),
        ({"unsubscribe": True, "headers": {"List-Unsubscribe": "<mailto:x@example.org>"}}, "conflict"),
        ({"links": {"base": "http://evil.example", "expires": 1}}, "unknown_field"),
    ]
    for extra, code in cases:
        r = lapi.send(message("a@example.org", **extra), tokens["acme"])
        assert r.status_code in (400, 422) and r.json()["error"]["code"] == code, (extra, r.text)


@pytest.fixture
def hosted_linked(tmp_path):
    """Each hosted API stand-in the only provider of a tenant, links on."""
    port = stackmod.free_port()
    names = ("sendgrid", "mailgun", "postmark", "ses")
    s, tokens, api = tenants_stack(tmp_path, names, standin=True, port=port,
                                   extra_http=f"    mail_api_link_url http://127.0.0.1:{port};\n")
    try:
        routes = [f"route {t} {t}" for t in names] + ["route * sendgrid"]
        s.start_deliveryd(lines=s.standin_providers(names) + routes)
    except Exception:
        print(s.failure_report())
        s.stop_all()
        raise
    yield s, tokens, api, f"http://127.0.0.1:{s.standin.port}"
    s.stop_all()


def hosted_copies(control, provider, mid):
    """What each request to `provider` for `mid` carried: {recipient: (headers, text, html)}."""
    got = {}
    for b in requests.get(f"{control}/_received/{provider}", timeout=5).json():
        if provider == "sendgrid":
            if b["personalizations"][0]["custom_args"].get("mailapi_id") != mid:
                continue
            p = b["personalizations"][0]
            rcpts = [a["email"] for k in ("to", "cc", "bcc") for a in p.get(k, [])]
            content = {c["type"]: c["value"] for c in b["content"]}
            got[tuple(rcpts)] = (b.get("headers", {}), content.get("text/plain"), content.get("text/html"))
        elif provider == "mailgun":
            if b.get("v:mailapi_id") != mid:
                continue
            rcpts = [re.sub(r".*<|>.*", "", a) for k in ("to", "cc", "bcc") for a in b.get(k, [])]
            heads = {k[2:]: v for k, v in b.items() if k.startswith("h:")}
            got[tuple(rcpts)] = (heads, b.get("text"), b.get("html"))
        elif provider == "postmark":
            if b["Metadata"].get("mailapi_id") != mid:
                continue
            rcpts = [re.sub(r".*<|>.*", "", a.strip()) for k in ("To", "Cc", "Bcc") for a in b.get(k, "").split(",")
                     if a.strip()]
            got[tuple(rcpts)] = ({h["Name"]: h["Value"] for h in b["Headers"]}, b.get("TextBody"), b.get("HtmlBody"))
        else:
            if {"Name": "mailapi_id", "Value": mid} not in b.get("EmailTags", []):
                continue
            d = b["Destination"]
            rcpts = [re.sub(r".*<|>.*", "", a) for k in ("ToAddresses", "CcAddresses", "BccAddresses")
                     for a in d.get(k, [])]
            simple = b["Content"]["Simple"]
            got[tuple(rcpts)] = ({h["Name"]: h["Value"] for h in simple.get("Headers", [])},
                                 simple["Body"].get("Text", {}).get("Data"), simple["Body"].get("Html", {}).get("Data"))
    return got


@pytest.mark.parametrize("provider", ["sendgrid", "mailgun", "postmark", "ses"])
def test_hosted_providers_carry_one_copy_a_recipient_with_its_own_links(hosted_linked, provider):
    s, tokens, api, control = hosted_linked
    token = tokens[provider]
    a, b, c = (f"{x}-{uuid.uuid4().hex[:6]}@example.org" for x in "abc")
    r = api.send(message(a, cc=[b], bcc=[c], **LINKED), token)
    assert r.status_code == 202, r.text
    mid = r.json()["id"]
    rec = api.wait_status(mid, token, "sent")
    assert rec["events"][-1]["provider"] == provider, rec["events"]
    got = hosted_copies(control, provider, mid)
    assert sorted(got) == sorted([(a,), (b,), (c,)]), got  # one request a recipient, to it alone
    seen = set()
    for (rcpt,), (headers, text, html) in got.items():
        u = re.fullmatch(r"<(http://[^>]+)>", headers["List-Unsubscribe"]).group(1)
        assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f"Stop these: {u}" in text and "{{" not in text
        assert "Reject</a>" in html
        seen.add(u)
    assert len(seen) == 3
    # the link of the bcc recipient's copy unsubscribes it, and only it
    u = re.fullmatch(r"<(http://[^>]+)>", got[(c,)][0]["List-Unsubscribe"]).group(1)
    assert requests.post(u, data="List-Unsubscribe=One-Click", timeout=10).status_code == 200
    timeline(api, token, mid, ["unsubscribed"])
    settled(s)
    listed = requests.get(api.base + "/v1/suppressions", headers={"Authorization": "Bearer " + token},
                          timeout=10).json()["suppressions"]
    assert [e["email"] for e in listed] == [c]


def test_a_retry_of_a_personal_send_goes_to_the_pending_recipients_only(hosted_linked):
    """The first copy is refused for now (a 500), the others taken: the retry
    sends that one alone, with the same links' shape, and nobody gets two."""
    s, tokens, api, control = hosted_linked
    token = tokens["sendgrid"]
    a, b, c = (f"{x}-{uuid.uuid4().hex[:6]}@example.org" for x in "abc")
    requests.post(f"{control}/_control/sendgrid", json={"status": 500, "count": 1}, timeout=5).raise_for_status()
    mid = api.send(message(a, cc=[b, c], **LINKED), token).json()["id"]
    rec = api.wait_status(mid, token, "sent", timeout=60)
    types = [e["type"] for e in rec["events"]]
    assert "deferred" in types and types.count("recipient_sent") >= 2, types
    got = requests.get(f"{control}/_received/sendgrid", timeout=5).json()
    mine = [b_ for b_ in got if b_["personalizations"][0]["custom_args"].get("mailapi_id") == mid]
    to = sorted(x["email"] for m in mine for k in ("to", "cc", "bcc") for x in m["personalizations"][0].get(k, []))
    assert to == sorted([a, b, c]), to  # each once

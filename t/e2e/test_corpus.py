"""A corpus of generated messages through nginx -> deliveryd -> a strict SMTP
server (issue 10): random Unicode names, subjects and bodies (long lines,
dots, "From ", every kind of line break), text and html, attachments of
every size class, up to the recipient limit. Each must arrive once, parse
with Python's email.policy.strict without a defect, give back its subject,
bodies and attachments byte for byte (line breaks as CRLF), and carry DKIM
signatures (rsa-sha256 and ed25519-sha256) that python3-dkim verifies
against the records deliveryd prints."""
import base64
import concurrent.futures
import os
import random
import subprocess

import dkim

import stack as stackmod
from conftest import Api, private_stack, rfc2047
from test_international import dns_from_records, strict

N = int(os.environ.get("MAILAPI_CORPUS", "200"))
MAX_RCPTS = 50

WORDS = ["Grüße", "Straße", "naïve", "café", "日本語", "テスト", "Ελληνικά", "Привет", "😀", "🚀", "ok", "the",
         "=?utf-8?q?no?=", "a_b", "x=y", "\"quoted\"", "(paren)", "semi;colon", "tab\there", "-" * 40,
         "https://example.com/a/very/long/path/with/no/spaces/at/all/" + "z" * 60, "UPPER", "äöü"]
NAMES = ["Zoë Ärger", "José Núñez", "李小龍", "Ann \"A\" B", "O'Brien, Pat", "Mr. Smith (work)", "Björk",
         "=?x?=", "Ñandú Ñoño", "Αλέξανδρος", "Anna-Lena Müller-Lüdenscheidt von und zu Hohenzollern-Sigmaringen"]
DOMAINS = ["example.org", "example.net", "bücher.example", "exämple.org", "日本.example"]
LOCALS = ["user", "first.last", "x+tag", "o'neil", "ålice", "δοκιμή", "用户"]
SIZES = [0, 1, 2, 3, 57, 76, 77, 1000, 4096, 65535, 300000]


def text_of(rng, lines, max_line):
    out = []
    for _ in range(lines):
        kind = rng.random()
        if kind < 0.1:
            line = "." * rng.randint(1, 3) + " dots"
        elif kind < 0.15:
            line = "From the start of a line"
        elif kind < 0.25:
            line = rng.choice(WORDS) * rng.randint(20, max_line // 4 + 21)  # long, no spaces
        else:
            line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 25)))
        if rng.random() < 0.1:
            line += "  "  # trailing spaces
        out.append(line)
    seps = ["\n", "\r\n", "\r"]
    return "".join(l + rng.choice(seps) for l in out[:-1]) + out[-1] + (rng.choice(seps) if rng.random() < 0.5 else "")


def subject_of(rng):
    s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60)))
    s = s.replace("\t", " ")
    while len(s.encode()) > 998:
        s = s[:-1]
    return s.strip() or "x"


def address(rng, i, ascii_local=False):
    local = rng.choice(LOCALS[:4] if ascii_local else LOCALS)
    return f"{local}{i}@{rng.choice(DOMAINS)}"


def generate(rng, n):
    msgs = []
    for k in range(n):
        total = rng.choice([1, 1, 2, 3, 7, rng.randint(1, MAX_RCPTS), MAX_RCPTS])
        rcpts = [address(rng, f"{k}x{i}") for i in range(total)]
        cut1 = rng.randint(1, total)
        cut2 = rng.randint(cut1, total)
        to, cc, bcc = rcpts[:cut1], rcpts[cut1:cut2], rcpts[cut2:]
        body = {"from": {"email": f"sender{k}@" + rng.choice(["example.com", "bücher.example"]),
                         "name": rng.choice(NAMES)},
                "to": [{"email": a, "name": rng.choice(NAMES)} if rng.random() < 0.5 else a for a in to],
                "subject": subject_of(rng)}
        if cc:
            body["cc"] = cc
        if bcc:
            body["bcc"] = bcc
        kinds = rng.choice([("text",), ("html",), ("text", "html")])
        if "text" in kinds:
            body["text"] = text_of(rng, rng.randint(1, 40), 1200)
        if "html" in kinds:
            body["html"] = "<html><body>" + text_of(rng, rng.randint(1, 20), 3000) + "</body></html>"
        if rng.random() < 0.3:
            body["headers"] = {f"X-Corpus-{i}": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))[:400]
                               for i in range(rng.randint(1, 3))}
        atts = []
        budget = 10 << 20
        for i in range(rng.choice([0, 0, 1, 2, 3])):
            size = rng.choice(SIZES) if k % 40 else rng.randint(1 << 20, 4 << 20)  # a few large ones
            size = min(size, budget)
            budget -= size
            data = rng.randbytes(size)
            name = rng.choice(["report.csv", "Übersicht 2026.pdf", "日本語のファイル.txt", "a" * 200 + ".bin",
                               "with \"quotes\" and ; semicolons.txt", "=?utf-8?q?x?=.dat"])
            atts.append({"filename": name, "content_type": rng.choice(["text/csv", "application/pdf",
                                                                       "application/octet-stream", "image/png"]),
                         "content": base64.b64encode(data).decode()})
        if atts:
            body["attachments"] = atts
        msgs.append(body)
    return msgs


def squeeze(name):
    return "".join(name.split())


def crlf_normalised(text):
    return text.replace("\r\n", "\n").replace("\r", "\n")


def ascii_domain(addr):
    local, domain = addr.rsplit("@", 1)
    return local + "@" + domain.encode("idna").decode()


def check(stored, body, dnsfunc):
    server_lines = stored.split(b"\r\n", 4)  # the four lines the test server puts on top
    raw = server_lines[4]
    for line in raw.split(b"\r\n"):
        assert len(line) <= 998 and b"\r" not in line and b"\n" not in line
    m = strict(stored)  # any defect raises
    assert m["Subject"] == body["subject"]
    # Python's address parser keeps the whitespace between two encoded words
    # of a display name, which RFC 2047 6.2 drops: names are checked by a
    # reader that follows the RFC (the raw field decoded), and by Python's
    # parser up to that whitespace
    name, addr = body["from"]["name"], ascii_domain(body["from"]["email"])
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    assert rfc2047(dict(m.raw_items())["From"]).strip() in (f"{name} <{addr}>", f"{quoted} <{addr}>")
    assert squeeze(m["From"].addresses[0].display_name) == squeeze(body["from"]["name"])
    assert m["From"].addresses[0].addr_spec == ascii_domain(body["from"]["email"])
    shown = [a if isinstance(a, str) else a["email"] for a in body["to"]]
    assert [a.addr_spec for a in m["To"].addresses] == [ascii_domain(a) for a in shown]
    for a, got in zip(body["to"], m["To"].addresses):
        if not isinstance(a, str):
            assert squeeze(got.display_name) == squeeze(a["name"])
    if "cc" in body:
        assert [a.addr_spec for a in m["Cc"].addresses] == [ascii_domain(a) for a in body["cc"]]
    assert m["Bcc"] is None
    envelope = m["X-RcptTo"].split(", ")
    assert envelope == [ascii_domain(a) for a in shown + body.get("cc", []) + body.get("bcc", [])]
    for name, value in body.get("headers", {}).items():
        assert m[name] == value, name
    if "text" in body:
        assert crlf_normalised(m.get_body(("plain",)).get_content()) == crlf_normalised(body["text"])
    if "html" in body:
        assert crlf_normalised(m.get_body(("html",)).get_content()) == crlf_normalised(body["html"])
    atts = list(m.iter_attachments())
    assert len(atts) == len(body.get("attachments", []))
    for got, sent in zip(atts, body.get("attachments", [])):
        assert got.get_filename() == sent["filename"]
        assert got.get_content_type() == sent["content_type"]
        assert got.get_payload(decode=True) == base64.b64decode(sent["content"])
    d = dkim.DKIM(raw)
    sigs = (b"\r\n" + raw.split(b"\r\n\r\n", 1)[0]).lower().count(b"\r\ndkim-signature:")
    assert sigs == 2
    assert all(d.verify(idx=i, dnsfunc=dnsfunc) for i in range(sigs))


def test_a_corpus_of_generated_messages_arrives_strictly_valid_whole_and_signed(tmp_path):
    s, token, api = private_stack(tmp_path)
    try:
        utf8 = s.start_smtp(name="utf8", smtputf8=True)
        keys = {}
        for domain, kind, args in (("example.com", "rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                                   ("example.com", "ed", ["-algorithm", "ed25519"]),
                                   ("bücher.example", "rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
                                   ("bücher.example", "ed", ["-algorithm", "ed25519"])):
            path = os.path.join(s.dir, f"{kind}-{len(keys)}.pem")
            subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True, capture_output=True)
            keys[(domain, kind)] = path
        lines = [f"dkim {d} sel-{k} key_file={p}" for (d, k), p in keys.items()]
        lines += [f"provider utf8 smtp url=smtp://127.0.0.1:{utf8.port}/mailapi.test", "route * utf8"]
        d = s.start_deliveryd(lines=lines, max_in_flight="64")
        records = ""
        for domain in ("example.com", "bücher.example"):
            out = subprocess.run([stackmod.DELIVERYD, "-c", d.conf, "--dkim-record", domain], capture_output=True,
                                 text=True, check=True)
            records += out.stdout
        dnsfunc = dns_from_records(records)
        rng = random.Random(20261203)
        corpus = generate(rng, N)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda b: Api(api.base).send(b, token), corpus))
        assert [r.status_code for r in answers] == [202] * N, [r.text for r in answers if r.status_code != 202][:3]
        ids = [r.json()["id"] for r in answers]
        for mid in ids:
            rec = api.wait_status(mid, token, "sent", timeout=120)
            assert [x["status"] for x in rec["recipients"]] == ["sent"] * len(rec["recipients"])
        by_id = {}
        for entry in os.scandir(os.path.join(utf8.maildir, "new")):
            with open(entry.path, "rb") as f:
                head = f.read(1 << 16)
            mid = head.split(b"\r\nMessage-ID: <", 1)[1].split(b"@", 1)[0].decode()
            by_id.setdefault(mid, []).append(entry.path)
        assert sorted(by_id) == sorted(ids) and all(len(v) == 1 for v in by_id.values())
        for mid, body in zip(ids, corpus):
            with open(by_id[mid][0], "rb") as f:
                try:
                    check(f.read(), body, dnsfunc)
                except Exception as e:
                    raise AssertionError(f"{mid} ({by_id[mid][0]}): {e!r}") from e
    finally:
        s.stop_all()

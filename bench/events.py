"""Provider events in through nginx (issue 11): signed event webhooks verified
and queued per second, for each provider's scheme, against `return 202` from
the same nginx, interleaved round by round.

Each request is signed as the provider signs it: SendGrid's ECDSA P-256 over
timestamp + body (one event, and batches of 100), Mailgun's HMAC-SHA256 with
a fresh token each (so each also writes its replay-cache key), Postmark's
Basic credentials, and SES through SNS (an RSA signature, the certificate
fetched once from a test CA's host and cached). Every answer must be 200 with
the events counted: a round with any other answer is discarded.

usage: bench/events.py [seconds per case, default 5] [rounds, default 3]
"""
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(HERE, "t"))
sys.path.insert(0, os.path.join(HERE, "t", "e2e"))
import stack as stackmod  # noqa: E402
from test_provider_events import SnsHost, TOPIC, sns_message  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
CONNECTIONS = 32
MAILGUN_BODIES = int(os.environ.get("BENCH_MAILGUN_BODIES", "250000"))  # more than a case sends

# One fixed request (headers and body), or one body per request from a file.
FIXED = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests) end
"""
FROM_FILE = """
local bodies = {{}}
init = function(args)
  for line in io.lines({path}) do bodies[#bodies + 1] = line end
end
local n = 0
request = function()
  -- past the end the tokens come round again: replays, refused, and the round discarded
  n = n % #bodies + 1
  return wrk.format("POST", nil, {{["Content-Type"] = "application/json"}}, bodies[n])
end
"""


def lua_headers(headers):
    return "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())


def wrk(url, script):
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "total": total, "p50": pct(50), "p99": pct(99),
            "bad": (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def message_id(i):
    digits = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    tail = "".join(digits[(i >> (5 * k)) & 31] for k in range(16))
    return "msg_01JF000000" + tail


class Cases:
    """The scripts, one per case, and what each request carries in events."""

    def __init__(self, d, sg_key, mg_key, pm_auth, sns):
        self.d, self.sg_key, self.mg_key, self.pm_auth, self.sns = d, sg_key, mg_key, pm_auth, sns

    def write(self, name, text):
        path = os.path.join(self.d, name + ".lua")
        with open(path, "w") as f:
            f.write(text)
        return path

    def fixed(self, name, body, headers):
        return self.write(name, FIXED.format(body=json.dumps(body), headers=lua_headers(headers)))

    def sendgrid(self, n):
        events = [{"email": f"r{i}@example.org", "timestamp": int(time.time()), "event": "delivered",
                   "sg_event_id": f"sg-{n}-{i}", "mailapi_id": message_id(i)} for i in range(n)]
        body = json.dumps(events) + "\r\n"
        ts = str(int(time.time()))  # within the 5 minutes SendGrid signatures are taken for
        sig = base64.b64encode(self.sg_key.sign((ts + body).encode(), ec.ECDSA(hashes.SHA256()))).decode()
        return self.fixed(f"sendgrid{n}", body, {"Content-Type": "application/json",
                                                  "X-Twilio-Email-Event-Webhook-Signature": sig,
                                                  "X-Twilio-Email-Event-Webhook-Timestamp": ts})

    def mailgun(self, round_):
        """Fresh bodies for this round: each with its own token, as Mailgun sends them."""
        path = os.path.join(self.d, f"mailgun-{round_}.txt")
        ts = str(int(time.time()))
        key = self.mg_key.encode()
        with open(path, "w") as f:
            for i in range(MAILGUN_BODIES):
                token = os.urandom(25).hex()
                sig = hmac.new(key, (ts + token).encode(), hashlib.sha256).hexdigest()
                data = {"event": "delivered", "id": f"mg-{round_}-{i}", "timestamp": time.time(),
                        "recipient": "r@example.org", "user-variables": {"mailapi_id": message_id(i)}}
                f.write(json.dumps({"signature": {"timestamp": ts, "token": token, "signature": sig},
                                    "event-data": data}) + "\n")
        return self.write(f"mailgun-{round_}", FROM_FILE.format(path=json.dumps(path)))

    def postmark(self):
        body = json.dumps({"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
                           "MessageID": "0a129aee-e1cd-480d-b08d-4f48548ff48d", "Recipient": "r@example.org",
                           "DeliveredAt": "2026-12-03T16:00:00Z", "Details": "smtp;250 2.0.0 OK",
                           "Metadata": {"mailapi_id": message_id(1)}})
        auth = base64.b64encode(":".join(self.pm_auth).encode()).decode()
        return self.fixed("postmark", body, {"Content-Type": "application/json", "Authorization": "Basic " + auth})

    def ses(self):
        event = {"eventType": "Delivery", "mail": {"messageId": "ses-1", "destination": ["r@example.org"],
                                                   "tags": {"mailapi_id": [message_id(1)]}},
                 "delivery": {"timestamp": "2026-12-03T16:00:00.000Z", "recipients": ["r@example.org"],
                              "smtpResponse": "250 2.6.0 Message received"}}
        body = json.dumps(sns_message(self.sns, "Notification", json.dumps(event), version="2"))
        return self.fixed("ses", body, {"Content-Type": "text/plain; charset=UTF-8"})


def trimmer(s, stop):
    """Keeps the events stream short (no deliveryd here: this measures nginx)."""
    while not stop.wait(1):
        subprocess.run(["redis-cli", "-p", str(s.redis.port), "XTRIM", "mailapi:messages:events", "MAXLEN", "~",
                        "10000"], capture_output=True)


def main():
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: run ./build.sh deps")
    d = tempfile.mkdtemp(prefix="mailapi-bench-events-")
    s = stackmod.Stack(d)
    s.add_key("bench", "bench", "send")
    sg_key = ec.generate_private_key(ec.SECP256R1())
    sg_public = base64.b64encode(sg_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    mg_key = "key-" + os.urandom(16).hex()
    pm_auth = ("hooks", "pm-" + os.urandom(12).hex())
    sns = SnsHost(d)
    with open(os.path.join(d, "events"), "w") as f:
        f.write(f"sg sendgrid public_key={sg_public}\nmg mailgun signing_key={mg_key}\n"
                f"pm postmark username={pm_auth[0]} password={pm_auth[1]}\n"
                f"ses ses topic_arn={TOPIC} cert_host=127.0.0.1:{sns.port} cacert={sns.ca_path}\n")
    stop = threading.Event()
    try:
        print(f"==> starting redis, FerretDB and nginx (1 worker) in {d}", flush=True)
        s.start_redis()
        s.start_ferretdb()  # nginx's recover side needs it configured; events never touch it
        nginx = s.start_nginx(workers=1, log_level="warn", extra_http=f"    mail_api_event_sources {d}/events;\n")
        base = f"http://127.0.0.1:{nginx.port}"
        cases = Cases(d, sg_key, mg_key, pm_auth, sns)
        fixed = [("return 202 (baseline)", "/baseline", cases.postmark(), 0),
                 ("Postmark (Basic)", "/v1/events/pm", cases.postmark(), 1),
                 ("SendGrid (ECDSA), 1 event", "/v1/events/sg", cases.sendgrid(1), 1),
                 ("SendGrid (ECDSA), 100 events", "/v1/events/sg", cases.sendgrid(100), 100),
                 ("SES via SNS (RSA, cached certificate)", "/v1/events/ses", cases.ses(), 1)]
        # warm-up: the SNS certificate fetched and cached, connections made
        subprocess.run(["wrk", "-t1", "-c4", "-d1s", "-s", fixed[4][2], base + "/v1/events/ses"], capture_output=True)
        threading.Thread(target=trimmer, args=(s, stop), daemon=True).start()
        results = {}  # case -> [(run, baseline run)]
        print(f"==> wrk: {ROUNDS} rounds, {SECONDS}s per case, {CONNECTIONS} connections", flush=True)
        for r in range(ROUNDS):
            mailgun = cases.mailgun(r)
            runs = {}
            for name, path, script, per in fixed + [("Mailgun (HMAC, token replay cache)", "/v1/events/mg",
                                                     mailgun, 1)]:
                runs[name] = (wrk(base + path, script), per)
                print(f"    round {r + 1}: {name}: {runs[name][0]['rps']:,.0f} req/s, "
                      f"{runs[name][0]['bad']} errors", flush=True)
                if name.startswith("Mailgun") and runs[name][0]["total"] > MAILGUN_BODIES:
                    runs[name][0]["bad"] += runs[name][0]["total"] - MAILGUN_BODIES  # replays: not a fair run
            base_run = runs["return 202 (baseline)"][0]
            for name, (run, per) in runs.items():
                results.setdefault(name, []).append((run, per, base_run))
        print()
        print("| case | events/request | req/s (median) | events/s | p50 ms | p99 ms | ratio vs baseline "
              "(median, min–max) | errors | rounds kept |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, rows in results.items():
            kept = [row for row in rows if row[0]["bad"] == 0 and row[2]["bad"] == 0]
            errors = sum(row[0]["bad"] for row in rows)
            if not kept:
                print(f"| {name} | | | | | | discarded | {errors} | 0/{len(rows)} |")
                continue
            per = kept[0][1]
            rps = statistics.median(row[0]["rps"] for row in kept)
            ratios = [row[0]["rps"] / row[2]["rps"] for row in kept]
            print(f"| {name} | {per} | {rps:,.0f} | {rps * per:,.0f} | "
                  f"{statistics.median(row[0]['p50'] for row in kept):.2f} | "
                  f"{statistics.median(row[0]['p99'] for row in kept):.2f} | "
                  f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f}) | {errors} | "
                  f"{len(kept)}/{len(rows)} |")
    finally:
        stop.set()
        sns.stop()
        s.stop_all()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The store's records as common/contract.cpp and common/records.cpp make
them, written straight into the store by tests and benches that need a year
of traffic in seconds (the module reads them back like deliveryd's own).
docs/storage.md is the description; this file must agree with it."""
import base64
import datetime
import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

LEVELS = [("a", 256 * 86400000), ("b", 16 * 86400000), ("c", 86400000), ("d", 5400000), ("e", 337500)]
BUCKET_FULL = 64
EPOCH_MS = 1735689600000          # 2025-01-01: no record is older
CLOCK_SKEW_MS = 300000
INLINE_ENVELOPE_MAX = 64 * 1024
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class Keyring:
    def __init__(self, path):
        self.data = []
        for line in open(path):
            f = line.split()
            if not f or f[0].startswith("#"):
                continue
            if f[0] == "index":
                self.index = base64.b64decode(f[1])
            else:
                self.data.append((f[0], base64.b64decode(f[1])))

    def recipient_key(self, tenant, address):
        # address_normalise lower-cases ASCII letters only
        low = "".join(c.lower() if "A" <= c <= "Z" else c for c in address)
        mac = hmac.new(self.index, tenant.encode() + b"\0" + low.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode()

    def seal(self, tenant, message_id, plaintext, summary=False):
        kid, key = self.data[-1]
        nonce = os.urandom(12)
        aad = b"mailapi-v1\0" + tenant.encode() + b"\0" + message_id.encode() + (b"\0summary" if summary else b"")
        return bytes([1, len(kid)]) + kid.encode() + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def bucket_keys(rkey, created_ms):
    return [rkey] + [f"{rkey}.{tag}{created_ms // span}" for tag, span in LEVELS]


def message_id(ms):
    """msg_ + 26 Crockford digits: 2 zero bits, 48 bits of ms, 80 random bits."""
    n = (ms << 80) | int.from_bytes(os.urandom(10), "big") & ((1 << 79) - 1)
    return "msg_" + "".join(CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


def id_time_ms(message_id):
    n = 0
    for c in message_id[4:14]:
        n = n * 32 + CROCKFORD.index(c)
    return n & ((1 << 48) - 1)


def when(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc)


def message_documents(ring, tenant, mid, created_ms, body, recipients, provider="smtp"):
    """A sent message's documents (the message, and its body when large), as
    deliveryd writes them with its outcome. `body` is the request's JSON."""
    import json
    rk = [k for r in recipients for k in bucket_keys(ring.recipient_key(tenant, r), created_ms)]
    shown = json.loads(body)
    for field in ("text", "html"):
        shown.pop(field, None)
    for a in shown.get("attachments", []):
        a["size"] = len(base64.b64decode(a.pop("content")))
    envelope = ring.seal(tenant, mid, body)
    doc = {"_id": mid, "m": mid, "tenant": tenant, "rk": rk, "created_at": when(created_ms),
           "summary": ring.seal(tenant, mid, json.dumps(shown, separators=(",", ":")).encode(), summary=True),
           "events": [{"eid": "q", "type": "queued", "at": when(created_ms)},
                      {"eid": "t0", "type": "sent", "at": when(created_ms + 150), "provider": provider,
                       "code": 250}]}
    if len(envelope) <= INLINE_ENVELOPE_MAX:
        doc["envelope"] = envelope
        return [doc]
    return [{"_id": mid + ".body", "m": mid, "tenant": tenant, "envelope": envelope}, doc]


def with_retention(docs, expires_ms):
    """A message's documents (message_documents) as deliveryd writes them for
    a tenant with a retention: expires_at on each, and the expiry document
    the sweeper finds by its day bucket (common/records.cpp append_expiry)."""
    mid = docs[-1]["m"]
    for d in docs:
        d["expires_at"] = when(expires_ms)
    expiry = {"_id": mid + ".x", "m": mid, "tenant": docs[-1]["tenant"], "x": str(expires_ms // 86400000),
              "expires_at": when(expires_ms)}
    return [expiry] + docs


def page_queries(db, tenant, rkey, limit, now_ms, cursor=None):
    """The lookups the module makes for one page (ngx_mail_api_store.cpp's
    Walk), run with pymongo: the store's own cost of a page, for benchmarks.
    Returns (message ids of the page, documents read, lookups made)."""
    messages, hints = db["messages"], db["hints"]
    bound = now_ms + CLOCK_SKEW_MS
    if cursor:
        bound = min(bound, id_time_ms(cursor))
    found, stats = set(), {"docs": 0, "lookups": 0}

    def big_children(key):
        stats["lookups"] += 1
        return {d["_id"] for d in hints.find({"h": f"{tenant}.{key}"})}

    def enough():
        return sum(1 for m in found if not cursor or m < cursor) > limit

    def visit(level, n, big, known):
        span = LEVELS[level][1] if level >= 0 else None
        start, end = (0, 1 << 62) if level < 0 else (n * span, (n + 1) * span)
        key = rkey if level < 0 else f"{rkey}.{LEVELS[level][0]}{n}"
        if start > bound:
            return
        finest = level == len(LEVELS) - 1
        if not big or finest:
            stats["lookups"] += 1
            docs = list(messages.find({"tenant": tenant, "rk": key}, {"envelope": 0},
                                      limit=0 if finest else BUCKET_FULL + 1))
            stats["docs"] += len(docs)
            if finest or len(docs) <= BUCKET_FULL:
                found.update(d["m"] for d in docs if "events" in d)
                return
        hints_ = known if level < 0 else big_children(key)
        child_span = LEVELS[level + 1][1]
        hi = min(bound, end - 1) // child_span
        lo = max(start, EPOCH_MS) // child_span
        for c in range(hi, lo - 1, -1):
            visit(level + 1, c, f"{tenant}.{rkey}.{LEVELS[level + 1][0]}{c}" in hints_, None)
            if enough():
                return

    root_hints = big_children(rkey)
    visit(-1, 0, f"{tenant}.{rkey}" in root_hints, root_hints)
    page = sorted((m for m in found if not cursor or m < cursor), reverse=True)[:limit]
    return page, stats["docs"], stats["lookups"]

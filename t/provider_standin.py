"""Stand-in for the hosted providers' HTTP APIs, which cannot be reached from
here. It checks what each documents (path, auth, required fields) and answers
as each documents, and it can be told to fail.

  POST /v3/mail/send      SendGrid v3: Bearer API key; 202 + X-Message-Id, or
                          {"errors":[{"message","field"}]} with 400/401/413/429/5xx
  POST /v3/DOMAIN/messages
                          Mailgun v3: basic auth api:KEY (401 "Forbidden"),
                          multipart/form-data; 200 {"id","message"}, or
                          400 {"message"}
  POST /email             Postmark: X-Postmark-Server-Token (401 ErrorCode 10),
                          Accept and Content-Type application/json (422
                          ErrorCode 409); 200 {"To","SubmittedAt","MessageID",
                          "ErrorCode":0,"Message":"OK"}, or 422 {"ErrorCode","Message"}
  POST /v2/email/outbound-emails
                          Amazon SES v2 SendEmail: SigV4 (service "ses", any
                          region, x-amz-date within 5 minutes), verified here;
                          200 {"MessageId"}, or status + x-amzn-ErrorType +
                          {"message"}
  POST /generic           the generic HTTP provider: Bearer token; 200
  POST /_control/NAME     {"status": 500, "count": -1} fail with a status (count
                          -1 = until told otherwise), {"mode": "timeout"|"reset"},
                          {"mode": "ok"}; for postmark "error_code": N, for ses
                          "error_type": "MessageRejected" choose the error;
                          "retry_after": N adds Retry-After: N
  GET  /_received/NAME    what was accepted so far: JSON bodies (sendgrid,
                          generic, postmark, ses), form fields (mailgun)
  GET  /_requests/NAME    how many authorised requests arrived, failed or not
  GET  /_ids/NAME         how many times each message id (our mailapi_id) was
                          accepted: {"msg_...": 1, ...}

NAME is sendgrid, generic, mailgun, postmark or ses.
"""
import argparse
import base64
import binascii
import calendar
import email.parser
import email.policy
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, quote, unquote, urlsplit

NAMES = ("sendgrid", "generic", "mailgun", "postmark", "ses")
STATE = {n: {"mode": "ok"} for n in NAMES}
RECEIVED = {n: [] for n in NAMES}
REQUESTS = {n: 0 for n in NAMES}  # every authorised request, failed or not
ACCEPTED = {n: {} for n in NAMES}  # message id -> times accepted
LOCK = threading.Lock()
KEYS = {}

SES_ERROR_NAMESPACE = ":http://internal.amazon.com/coral/com.amazonaws.sesv2/"
SES_DEFAULT_ERROR = {400: "BadRequestException", 403: "AccessDeniedException", 404: "NotFoundException",
                     429: "TooManyRequestsException", 500: "InternalServiceErrorException",
                     503: "ServiceUnavailable"}
POSTMARK_DEFAULT_CODE = {401: 10, 422: 300, 429: 429}
MAX_SKEW = 300  # seconds SigV4's x-amz-date may be off, as AWS allows
ADDRESS = re.compile(r"[^\s@<>\"(),;:]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+")


def address_ok(value):
    """One RFC 5322 mailbox: addr, <addr> or "Name" <addr> / encoded-word <addr>."""
    value = value.strip()
    m = re.fullmatch(r'(?:(?:"(?:[^"\\]|\\.)*"|[^<>"]*)\s*)?<([^<>]+)>', value)
    addr = m.group(1) if m else value
    return ADDRESS.fullmatch(addr) is not None


def address_list(value):
    """Split a comma-joined header value on commas outside quotes."""
    parts, cur, quoted, escaped = [], "", False, False
    for ch in value:
        if escaped:
            cur, escaped = cur + ch, False
            continue
        if ch == "\\":
            cur, escaped = cur + ch, True
            continue
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


def same_secret(given, expected):
    """Constant-time comparison of a header value with a configured secret."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def base64_ok(value):
    try:
        base64.b64decode(value, validate=True)
        return isinstance(value, str)
    except (binascii.Error, ValueError, TypeError):
        return False


def parse_form(content_type, raw):
    """multipart/form-data -> [(name, value bytes, filename or None, content type)], exactly as sent."""
    m = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not content_type or not content_type.startswith("multipart/form-data") or not m:
        return None
    delimiter = b"--" + m.group(1).encode()
    chunks = raw.split(delimiter)
    if len(chunks) < 3 or not chunks[-1].startswith(b"--"):
        return None
    fields = []
    for chunk in chunks[1:-1]:
        if not chunk.startswith(b"\r\n") or not chunk.endswith(b"\r\n"):
            return None
        head, sep, value = chunk[2:-2].partition(b"\r\n\r\n")
        if not sep:
            return None
        headers = email.parser.BytesHeaderParser(policy=email.policy.HTTP).parsebytes(head + b"\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        if headers.get_content_disposition() != "form-data" or not name:
            return None
        fields.append((name, value, headers.get_param("filename", header="content-disposition"),
                       headers.get_content_type()))
    return fields


# -- SigV4, written from AWS's specification, independent of deliveryd's --

def sigv4_canonical(method, raw_path, headers, signed, payload):
    split = urlsplit(raw_path)
    path = quote(unquote(split.path or "/"), safe="/-_.~")
    query = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~"))
                   for k, v in parse_qsl(split.query, keep_blank_values=True))
    canonical_query = "&".join(f"{k}={v}" for k, v in query)
    lines = []
    for name in signed:
        values = headers.get_all(name) or []
        lines.append(name + ":" + ",".join(" ".join(v.split()) for v in values) + "\n")
    return "\n".join([method, path, canonical_query, "".join(lines), ";".join(signed),
                      hashlib.sha256(payload).hexdigest()])


def sigv4_check(method, raw_path, headers, payload, keys, now=None, want_service="ses"):
    """None when the request is signed by a known key, else (status, error type, message)."""
    auth = headers.get("Authorization", "")
    m = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^/,]+)/(\d{8})/([^/,]+)/([^/,]+)/aws4_request,\s*"
                     r"SignedHeaders=([a-z0-9;-]+),\s*Signature=([0-9a-f]{64})", auth.strip())
    if not auth:
        return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
    if not m:
        return 403, "IncompleteSignatureException", "Authorization header requires Credential, SignedHeaders, Signature"
    key_id, date, region, service, signed, signature = m.groups()
    if not same_secret(key_id, keys.get("ses_access_key_id")):
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    token = keys.get("ses_session_token")
    if token and not same_secret(headers.get("X-Amz-Security-Token", ""), token):
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    if service != want_service:
        return 403, "InvalidSignatureException", f"Credential should be scoped to correct service: '{want_service}'."
    signed = signed.split(";")
    if signed != sorted(signed) or "host" not in signed or "x-amz-date" not in signed or \
            (token and "x-amz-security-token" not in signed):
        return 403, "InvalidSignatureException", "SignedHeaders must hold host and x-amz-date, sorted."
    amz_date = headers.get("X-Amz-Date", "")
    try:
        when = calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return 403, "IncompleteSignatureException", "X-Amz-Date is missing or malformed"
    now = time.time() if now is None else now
    if abs(now - when) > MAX_SKEW:
        return 403, "InvalidSignatureException", f"Signature expired: {amz_date} is now more than 5 min off"
    if date != amz_date[:8]:
        return 403, "InvalidSignatureException", "Credential date does not match X-Amz-Date"
    canonical = sigv4_canonical(method, raw_path, headers, signed, payload)
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + keys["ses_secret_access_key"]).encode()
    for part in (date, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        return 403, "InvalidSignatureException", ("The request signature we calculated does not match the "
                                                  "signature you provided.")
    return None


# -- each provider's validation: None when fine, else its error message --

def mailgun_problem(fields):
    def values(name):
        return [v for n, v, f, _ in fields if n == name and f is None]
    for name in ("from", "to", "subject"):
        if not values(name):
            return f"{name} parameter is missing"
    if not values("text") and not values("html"):
        return "Need at least one of 'text', 'html', 'template' or 'amp-html' parameters specified"
    for name in ("from", "to", "cc", "bcc", "h:Reply-To"):
        for v in values(name):
            try:
                text = v.decode()
            except UnicodeDecodeError:
                return f"{name} parameter is not valid UTF-8"
            if not all(address_ok(a) for a in address_list(text)):
                return f"{name} parameter is not a valid address. please check documentation"
    if len(values("o:tag")) > 3:
        return "Too many tags: a message takes at most 3"
    return None


def mailgun_record(domain, fields):
    record = {"_domain": domain}
    for name, value, filename, ctype in fields:
        if filename is not None:
            record.setdefault(name, []).append({"filename": filename, "content_type": ctype, "size": len(value),
                                                "sha256": hashlib.sha256(value).hexdigest()})
        elif name in ("to", "cc", "bcc", "o:tag"):
            record.setdefault(name, []).append(value.decode())
        else:
            record[name] = value.decode()
    return record


def postmark_problem(body):
    if not isinstance(body, dict):
        return 402, "Received invalid JSON input."
    for field in ("From", "To", "Subject"):
        if not isinstance(body.get(field), str) or not body[field].strip():
            return 300, f"Invalid email request: '{field}' is required."
    if not body.get("TextBody") and not body.get("HtmlBody"):
        return 300, "Provide either email TextBody or HtmlBody or both."
    count = 0
    for field in ("From", "To", "Cc", "Bcc", "ReplyTo"):
        value = body.get(field)
        if value is None:
            continue
        addrs = address_list(value) if isinstance(value, str) else [None]
        if not all(isinstance(a, str) and address_ok(a) for a in addrs):
            return 300, f"Invalid '{field}' address."
        if field in ("To", "Cc", "Bcc"):
            count += len(addrs)
    if count > 50:
        return 300, "Maximum of 50 recipients allowed per email message."
    for h in body.get("Headers") or []:
        if not isinstance(h, dict) or not isinstance(h.get("Name"), str) or not isinstance(h.get("Value"), str):
            return 300, "Headers must be a list of {Name, Value}."
    for a in body.get("Attachments") or []:
        if not isinstance(a, dict) or not a.get("Name") or not a.get("ContentType") or not base64_ok(a.get("Content")):
            return 300, "Attachments need Name, Content (base64) and ContentType."
    tag = body.get("Tag")
    if tag is not None and (not isinstance(tag, str) or len(tag) > 1000):
        return 300, "Tag must be a string of at most 1000 characters."
    meta = body.get("Metadata") or {}
    if not isinstance(meta, dict) or len({k.lower() for k in meta}) != len(meta):
        return 300, "Metadata keys must be unique, whatever their case."
    return None


SES_HEADER_NAME = re.compile(r"[!-9;-@A-~]{1,126}")
SES_HEADER_VALUE = re.compile(r"[ -~]{1,870}")
SES_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}")


def ses_problem(body):
    if not isinstance(body, dict):
        return "Request body is not valid JSON"
    if not isinstance(body.get("FromEmailAddress"), str):
        return "FromEmailAddress is required"
    dest = body.get("Destination") or {}
    addrs = [body["FromEmailAddress"]] + [a for k in ("ToAddresses", "CcAddresses", "BccAddresses")
                                          for a in (dest.get(k) or [])] + list(body.get("ReplyToAddresses") or [])
    recipients = sum(len(dest.get(k) or []) for k in ("ToAddresses", "CcAddresses", "BccAddresses"))
    if recipients == 0:
        return "Destination must hold at least one address"
    if recipients > 50:
        return "Recipient count exceeds 50."
    for a in addrs:  # 7-bit ASCII, names as RFC 2047 encoded words
        if not isinstance(a, str) or not a.isascii() or not address_ok(a):
            return "Illegal address"
    simple = (body.get("Content") or {}).get("Simple")
    if not isinstance(simple, dict):
        return "Content.Simple is required"
    if not isinstance((simple.get("Subject") or {}).get("Data"), str):
        return "Subject is required"
    b = simple.get("Body") or {}
    if not (b.get("Text") or {}).get("Data") and not (b.get("Html") or {}).get("Data"):
        return "Body must have Text or Html"
    headers = simple.get("Headers") or []
    if len(headers) > 15:
        return "Headers: at most 15"
    for h in headers:
        if not SES_HEADER_NAME.fullmatch(str(h.get("Name"))) or not SES_HEADER_VALUE.fullmatch(str(h.get("Value"))):
            return "Invalid header"
    for a in simple.get("Attachments") or []:
        if not a.get("FileName") or not base64_ok(a.get("RawContent")):
            return "Attachment needs FileName and base64 RawContent"
    for t in body.get("EmailTags") or []:
        if not SES_TAG.fullmatch(str(t.get("Name"))) or not SES_TAG.fullmatch(str(t.get("Value"))):
            return "Invalid tag"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests read /_received
        pass

    def reply(self, status, body=None, headers=None, text=None):
        if text is not None:
            data, ctype = text.encode(), "text/plain"
        else:
            data, ctype = (json.dumps(body).encode(), "application/json") if body is not None else (b"", None)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def raw(self):
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def body(self, raw=None):
        try:
            return json.loads(self.raw() if raw is None else raw)
        except ValueError:
            return None

    def count_request(self, name):
        with LOCK:
            REQUESTS[name] += 1

    def scripted_failure(self, name):
        """The scripted failure to answer with: None, or the control command."""
        with LOCK:
            st = STATE[name]
            mode = st.get("mode", "ok")
            if mode == "ok":
                return None
            if st.get("count", -1) == 0:
                STATE[name] = {"mode": "ok"}
                return None
            if st.get("count", -1) > 0:
                st["count"] -= 1
            st = dict(st)
        if mode == "timeout":
            time.sleep(30)
        elif mode == "reset":
            # SO_LINGER 0: closing sends RST. The socket is closed for real only
            # once the handler's file objects on it are closed too (without
            # that, a keep-alive client waited for its timeout instead).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.close_connection = True
            for f in (self.rfile, self.wfile):
                try:
                    f.close()
                except OSError:
                    pass
            self.connection.close()
        return st

    def fail_as(self, name, cmd):
        """Answer a scripted failure as provider NAME documents its errors."""
        if cmd.get("mode") in ("timeout", "reset"):
            return
        status = cmd["status"]
        retry = {"Retry-After": str(cmd["retry_after"])} if "retry_after" in cmd else \
            {"Retry-After": "1"} if status == 429 else {}
        text = f"scripted failure {status}"
        if name == "mailgun":
            if status == 401:
                return self.reply(401, text="Forbidden")
            return self.reply(status, {"message": text}, retry)
        if name == "postmark":
            code = cmd.get("error_code", POSTMARK_DEFAULT_CODE.get(status))
            body = {"ErrorCode": code, "Message": text} if code is not None else {"Message": text}
            return self.reply(status, body, retry)
        if name == "ses":
            kind = cmd.get("error_type", SES_DEFAULT_ERROR.get(status, "InternalServiceErrorException"))
            return self.ses_error(status, kind, text, retry)
        return self.reply(status, {"errors": [{"message": text, "field": None}]}, retry or None)

    def ses_error(self, status, kind, message, headers=None):
        self.reply(status, {"message": message},
                   dict(headers or {}, **{"x-amzn-ErrorType": kind + SES_ERROR_NAMESPACE,
                                          "x-amzn-RequestId": str(uuid.uuid4())}))

    def do_GET(self):
        if self.path.startswith("/_requests/"):
            with LOCK:
                return self.reply(200, {"count": REQUESTS.get(self.path.split("/")[-1], 0)})
        if self.path.startswith("/_received/"):
            with LOCK:
                return self.reply(200, RECEIVED.get(self.path.split("/")[-1], []))
        if self.path.startswith("/_ids/"):
            with LOCK:
                return self.reply(200, dict(ACCEPTED.get(self.path.split("/")[-1], {})))
        self.reply(404, {"errors": [{"message": "not found"}]})

    def do_POST(self):
        path = urlsplit(self.path).path
        if path.startswith("/_control/"):
            name = path.split("/")[-1]
            cmd = self.body() or {}
            with LOCK:
                STATE[name] = {"mode": cmd.get("mode", "status" if "status" in cmd else "ok"), **cmd}
            return self.reply(200, STATE[name])
        mailgun = re.fullmatch(r"/v3/([A-Za-z0-9.-]+)/messages", path)
        if mailgun:
            return self.mailgun(mailgun.group(1))
        if path == "/email":
            return self.postmark()
        if path == "/v2/email/outbound-emails":
            return self.ses()
        name = {"/v3/mail/send": "sendgrid", "/generic": "generic"}.get(path)
        if name is None:
            return self.reply(404, {"errors": [{"message": "not found"}]})
        body = self.body()
        if self.headers.get("Authorization") != "Bearer " + KEYS[name]:
            return self.reply(401, {"errors": [{"message": "The provided authorization grant is invalid"}]})
        self.count_request(name)
        cmd = self.scripted_failure(name)
        if cmd:
            return self.fail_as(name, cmd)
        if body is None:
            return self.reply(400, {"errors": [{"message": "Bad Request", "field": None}]})
        if name == "sendgrid":
            p = (body.get("personalizations") or [{}])[0]
            for ok, field in ((p.get("to"), "personalizations.0.to"), ((body.get("from") or {}).get("email"), "from.email"),
                              (body.get("subject"), "subject"), (body.get("content"), "content")):
                if not ok:
                    return self.reply(400, {"errors": [{"message": "required", "field": field}]})
        with LOCK:
            RECEIVED[name].append(body)
            mid = ((body.get("personalizations") or [{}])[0].get("custom_args") or {}).get("mailapi_id") \
                if name == "sendgrid" else body.get("id")
            if mid:
                ACCEPTED[name][mid] = ACCEPTED[name].get(mid, 0) + 1
        if name == "sendgrid":
            return self.reply(202, None, {"X-Message-Id": uuid.uuid4().hex})
        return self.reply(200, {"accepted": True})

    def mailgun(self, domain):
        raw = self.raw()
        expected = "Basic " + base64.b64encode(f"api:{KEYS.get('mailgun')}".encode()).decode()
        if not same_secret(self.headers.get("Authorization", ""), KEYS.get("mailgun") and expected):
            return self.reply(401, text="Forbidden")
        self.count_request("mailgun")
        cmd = self.scripted_failure("mailgun")
        if cmd:
            return self.fail_as("mailgun", cmd)
        fields = parse_form(self.headers.get("Content-Type"), raw)
        if fields is None:
            return self.reply(400, {"message": "Expected multipart/form-data"})
        problem = mailgun_problem(fields)
        if problem:
            return self.reply(400, {"message": problem})
        with LOCK:
            RECEIVED["mailgun"].append(mailgun_record(domain, fields))
        return self.reply(200, {"id": f"<{time.strftime('%Y%m%d%H%M%S')}.{uuid.uuid4().hex[:12]}@{domain}>",
                                "message": "Queued. Thank you."})

    def postmark(self):
        raw = self.raw()
        if not same_secret(self.headers.get("X-Postmark-Server-Token", ""), KEYS.get("postmark")):
            return self.reply(401, {"ErrorCode": 10, "Message": "The Server Token you provided in the "
                                    "X-Postmark-Server-Token request header was invalid."})
        self.count_request("postmark")
        cmd = self.scripted_failure("postmark")
        if cmd:
            return self.fail_as("postmark", cmd)
        if "application/json" not in self.headers.get("Accept", "") or \
                "application/json" not in self.headers.get("Content-Type", ""):
            return self.reply(422, {"ErrorCode": 409, "Message": "JSON required: set the Accept and "
                                    "Content-Type headers to application/json."})
        body = self.body(raw)
        problem = postmark_problem(body)
        if problem:
            return self.reply(422, {"ErrorCode": problem[0], "Message": problem[1]})
        with LOCK:
            RECEIVED["postmark"].append(body)
        return self.reply(200, {"To": body["To"], "SubmittedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                "MessageID": str(uuid.uuid4()), "ErrorCode": 0, "Message": "OK"})

    def ses(self):
        raw = self.raw()
        denied = sigv4_check("POST", self.path, self.headers, raw, KEYS) if KEYS.get("ses_access_key_id") else \
            (403, "UnrecognizedClientException", "no SES key configured")
        if denied:
            return self.ses_error(*denied)
        self.count_request("ses")
        cmd = self.scripted_failure("ses")
        if cmd:
            return self.fail_as("ses", cmd)
        body = self.body(raw)
        problem = ses_problem(body)
        if problem:
            return self.ses_error(400, "BadRequestException", problem)
        region = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", self.headers["Authorization"]).group(1)
        with LOCK:
            RECEIVED["ses"].append(dict(body, _region=region))
        return self.reply(200, {"MessageId": f"0100{uuid.uuid4().hex[:12]}-{uuid.uuid4()}-000000"})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--sendgrid-key", required=True)
    p.add_argument("--http-token", required=True)
    p.add_argument("--mailgun-key")
    p.add_argument("--postmark-token")
    p.add_argument("--ses-access-key-id")
    p.add_argument("--ses-secret-access-key")
    p.add_argument("--ses-session-token", help="require this X-Amz-Security-Token (temporary credentials)")
    a = p.parse_args()
    KEYS.update(sendgrid=a.sendgrid_key, generic=a.http_token, mailgun=a.mailgun_key, postmark=a.postmark_token,
                ses_access_key_id=a.ses_access_key_id, ses_secret_access_key=a.ses_secret_access_key,
                ses_session_token=a.ses_session_token)
    host, port = a.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()

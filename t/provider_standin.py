"""Stand-in for the hosted providers' HTTP APIs, which cannot be reached from
here. It checks what each documents (path, auth, required fields) and answers
as each documents, and it can be told to fail.

  POST /v3/mail/send      SendGrid v3: Bearer API key; 202 + X-Message-Id, or
                          {"errors":[{"message","field"}]} with 400/401/413/429/5xx
  POST /generic           the generic HTTP provider: Bearer token; 200
  POST /_control/NAME     {"status": 500, "count": -1} fail with a status (count
                          -1 = until told otherwise), {"mode": "timeout"|"reset"},
                          {"mode": "ok"}
  GET  /_received/NAME    the JSON bodies accepted so far
  GET  /_requests/NAME    how many authorised requests arrived, failed or not
"""
import argparse
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"sendgrid": {"mode": "ok"}, "generic": {"mode": "ok"}}
RECEIVED = {"sendgrid": [], "generic": []}
REQUESTS = {"sendgrid": 0, "generic": 0}  # every authorised request, failed or not
LOCK = threading.Lock()
KEYS = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet: the tests read /_received
        pass

    def reply(self, status, body=None, headers=None):
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def scripted_failure(self, name):
        with LOCK:
            st = STATE[name]
            mode = st.get("mode", "ok")
            if mode == "ok":
                return False
            if st.get("count", -1) == 0:
                STATE[name] = {"mode": "ok"}
                return False
            if st.get("count", -1) > 0:
                st["count"] -= 1
        if mode == "timeout":
            time.sleep(30)
            return True
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            return True
        status = st["status"]
        self.reply(status, {"errors": [{"message": f"scripted failure {status}", "field": None}]},
                   {"Retry-After": "1"} if status == 429 else None)
        return True

    def do_GET(self):
        if self.path.startswith("/_requests/"):
            with LOCK:
                return self.reply(200, {"count": REQUESTS.get(self.path.split("/")[-1], 0)})
        if self.path.startswith("/_received/"):
            with LOCK:
                return self.reply(200, RECEIVED.get(self.path.split("/")[-1], []))
        self.reply(404, {"errors": [{"message": "not found"}]})

    def do_POST(self):
        if self.path.startswith("/_control/"):
            name = self.path.split("/")[-1]
            cmd = self.body() or {}
            with LOCK:
                STATE[name] = {"mode": cmd.get("mode", "status" if "status" in cmd else "ok"), **cmd}
            return self.reply(200, STATE[name])
        name = {"/v3/mail/send": "sendgrid", "/generic": "generic"}.get(self.path)
        if name is None:
            return self.reply(404, {"errors": [{"message": "not found"}]})
        body = self.body()
        if self.headers.get("Authorization") != "Bearer " + KEYS[name]:
            return self.reply(401, {"errors": [{"message": "The provided authorization grant is invalid"}]})
        with LOCK:
            REQUESTS[name] += 1
        if self.scripted_failure(name):
            return
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
        if name == "sendgrid":
            return self.reply(202, None, {"X-Message-Id": uuid.uuid4().hex})
        return self.reply(200, {"accepted": True})


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--sendgrid-key", required=True)
    p.add_argument("--http-token", required=True)
    a = p.parse_args()
    KEYS.update(sendgrid=a.sendgrid_key, generic=a.http_token)
    host, port = a.listen.rsplit(":", 1)
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()

"""The SMTP server of the tests and the demo: aiosmtpd writing every accepted
mail into a Maildir. What it does with a recipient is chosen by the address's
local part, so tests can script failures without a control channel:

  reject+...@     550 (permanent) at RCPT
  tempfail+...@   451 (transient) at RCPT, always
  flakyN+...@     451 for the first N deliveries to that address, then accepted
  slowN+...@      accepted after N seconds at DATA

With --tls-cert it offers STARTTLS and refuses mail without it (or, with
--implicit-tls, speaks TLS from the first byte); with --auth it requires
AUTH before MAIL.

Each stored mail gets "X-Test-Concurrent-Data: N", how many DATA commands
were in progress when it arrived (itself included), so tests can check
concurrency limits.
"""
import argparse
import asyncio
import collections
import re
import ssl

from aiosmtpd.controller import Controller  # noqa: F401  (aiosmtpd's server is what runs)
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP, AuthResult


class ScriptedMailbox(Mailbox):
    def __init__(self, maildir):
        super().__init__(maildir)
        self.seen = collections.Counter()
        self.in_data = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("reject+"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("tempfail+"):
            return "451 4.3.0 try again later"
        m = re.match(r"flaky(\d+)\+", local)
        if m:
            self.seen[address] += 1
            if self.seen[address] <= int(m.group(1)):
                return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.in_data += 1
        try:
            envelope.content = b"X-Test-Concurrent-Data: %d\r\n" % self.in_data + envelope.content
            for rcpt in envelope.rcpt_tos:
                m = re.match(r"slow(\d+)\+", rcpt.split("@")[0].lower())
                if m:
                    await asyncio.sleep(int(m.group(1)))
            return await super().handle_DATA(server, session, envelope)
        finally:
            self.in_data -= 1


def authenticator(login, password):
    """AUTH PLAIN/LOGIN against one login:password."""
    def check(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == login.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself
    return check


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--maildir", required=True)
    p.add_argument("--tls-cert", help="offer STARTTLS (and require it) with this certificate")
    p.add_argument("--tls-key")
    p.add_argument("--implicit-tls", action="store_true", help="TLS from the first byte (smtps) instead")
    p.add_argument("--auth", help="LOGIN:PASSWORD that must authenticate before MAIL")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = ScriptedMailbox(a.maildir)
    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    kw = {"hostname": "mailapi.test", "data_size_limit": 64 << 20}
    if ctx and not a.implicit_tls:
        kw.update(tls_context=ctx, require_starttls=True)
    if a.auth:
        login, password = a.auth.split(":", 1)
        kw.update(authenticator=authenticator(login, password), auth_required=True,
                  auth_require_tls=not a.implicit_tls)  # smtps is TLS already, unseen by aiosmtpd
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, **kw), host=host, port=int(port),
                           ssl=ctx if a.implicit_tls else None))
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()

"""The SMTP server of the tests and the demo: aiosmtpd writing every accepted
mail into a Maildir. What it does with a recipient is chosen by the address's
local part, so tests can script failures without a control channel:

  reject+...@     550 (permanent) at RCPT
  tempfail+...@   451 (transient) at RCPT, always
  tempecho+...@   451 at RCPT, always, naming the address (as many servers do)
  flakyN+...@     451 for the first N deliveries to that address, then accepted
  slowN+...@      accepted after N seconds at DATA

With --tls-cert it offers STARTTLS and refuses mail without it (or, with
--implicit-tls, speaks TLS from the first byte); with --auth it requires
AUTH before MAIL; with --refuse "554 5.7.1 ..." it answers every RCPT with
that reply (a relay whose policy will not take our mail).

Each mail is stored as the bytes that came after DATA (dot-unstuffed),
byte for byte, so that tests see exactly what left deliveryd (folding, line
breaks, DKIM signatures), behind a few lines the server adds on top:
"X-Test-Concurrent-Data: N" (DATA commands in progress when it arrived,
itself included), "X-MailFrom", "X-RcptTo" (the envelope) and
"X-Test-SMTPUTF8: yes|no" (whether MAIL FROM asked for it).

Like a strict relay it refuses (554 5.6.0) a mail with a line over 998
octets, a bare CR or LF, or 8-bit bytes that neither SMTPUTF8 nor
BODY=8BITMIME announced. --smtputf8 offers SMTPUTF8 (RFC 6531); without it
a UTF-8 address is refused as aiosmtpd does ("500 Error: strict ASCII mode").
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
    def __init__(self, maildir, refuse=None):
        super().__init__(maildir)
        self.seen = collections.Counter()
        self.in_data = 0
        self.refuse = refuse

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.refuse:
            return self.refuse
        local = address.split("@")[0].lower()
        if local.startswith("reject+"):
            return "550 5.1.1 mailbox unavailable"
        if local.startswith("tempfail+"):
            return "451 4.3.0 try again later"
        if local.startswith("tempecho+"):
            return f"451 4.2.1 <{address}>: mailbox busy, try again later"
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
            content = envelope.original_content
            refusal = strict_refusal(content, envelope)
            if refusal:
                return refusal
            on_top = (f"X-Test-Concurrent-Data: {self.in_data}\r\n"
                      f"X-MailFrom: {envelope.mail_from}\r\n"
                      f"X-RcptTo: {', '.join(envelope.rcpt_tos)}\r\n"
                      f"X-Test-SMTPUTF8: {'yes' if envelope.smtp_utf8 else 'no'}\r\n")
            for rcpt in envelope.rcpt_tos:
                m = re.match(r"slow(\d+)\+", rcpt.split("@")[0].lower())
                if m:
                    await asyncio.sleep(int(m.group(1)))
            self.mailbox.add(on_top.encode("utf-8", "surrogateescape") + content)
            return "250 OK"
        finally:
            self.in_data -= 1


def strict_refusal(content, envelope):
    """What a strict relay refuses in a mail's data, or None."""
    lines = content.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for n, line in enumerate(lines, 1):
        if len(line) > 998:
            return f"554 5.6.0 line {n} is {len(line)} octets, over 998"
        if b"\r" in line or b"\n" in line:
            return f"554 5.6.0 line {n} has a bare CR or LF"
    eight_bit = any(b >= 0x80 for b in content)
    if eight_bit and not envelope.smtp_utf8 and "BODY=8BITMIME" not in [o.upper() for o in envelope.mail_options]:
        return "554 5.6.1 8-bit data without SMTPUTF8 or BODY=8BITMIME"
    return None


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
    p.add_argument("--refuse", help="the reply to every RCPT, e.g. \"554 5.7.1 Relay access denied\"")
    p.add_argument("--smtputf8", action="store_true", help="offer SMTPUTF8 (RFC 6531)")
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = ScriptedMailbox(a.maildir, a.refuse)
    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    kw = {"hostname": "mailapi.test", "data_size_limit": 64 << 20, "decode_data": False,
          "enable_SMTPUTF8": a.smtputf8}
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

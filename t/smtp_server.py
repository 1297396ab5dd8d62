"""The SMTP server of the tests and the demo: aiosmtpd writing every accepted
mail into a Maildir. What it does with a recipient is chosen by the address's
local part, so tests can script failures without a control channel:

  reject+...@     550 (permanent) at RCPT
  tempfail+...@   451 (transient) at RCPT, always
  flakyN+...@     451 for the first N deliveries to that address, then accepted
  slowN+...@      accepted after N seconds at DATA

Each stored mail gets "X-Test-Concurrent-Data: N", how many DATA commands
were in progress when it arrived (itself included), so tests can check
concurrency limits.
"""
import argparse
import asyncio
import collections
import re

from aiosmtpd.controller import Controller  # noqa: F401  (aiosmtpd's server is what runs)
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import SMTP


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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True, help="host:port")
    p.add_argument("--maildir", required=True)
    a = p.parse_args()
    host, port = a.listen.rsplit(":", 1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = ScriptedMailbox(a.maildir)
    server = loop.run_until_complete(
        loop.create_server(lambda: SMTP(handler, hostname="mailapi.test", data_size_limit=64 << 20),
                           host=host, port=int(port)))
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()

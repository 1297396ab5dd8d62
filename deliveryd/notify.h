// systemd's sd_notify protocol (Type=notify), without linking libsystemd.
#pragma once

void notify_systemd(const char *state);  // e.g. "READY=1"; no-op outside systemd

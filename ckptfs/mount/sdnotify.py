"""systemd's readiness protocol (sd_notify(3)), with the standard library.

A unit with `Type=notify` sets `$NOTIFY_SOCKET` for its main process; each
message is one datagram of `NAME=value` lines sent there. A name starting
with `@` is an abstract socket (a leading NUL byte on Linux). Without the
variable every call is a no-op, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

#: how long systemd is to wait past its stop timeout after each progress line of a repack
REPACK_GRACE_SECONDS = 120


class Notifier:
    def __init__(self, address: str | None = None):
        self.address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._socket: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier of this process; `$NOTIFY_SOCKET` is then removed from
        the environment so that no child process speaks for the daemon."""
        notifier = cls()
        os.environ.pop("NOTIFY_SOCKET", None)
        return notifier

    def send(self, *lines: str) -> bool:
        """Send `lines` as one message; False if there is nowhere to send them
        or systemd is gone (a notification never stops the mount)."""
        if not self.address:
            return False
        if not self.address.startswith(("/", "@")):
            log.debug("NOTIFY_SOCKET=%s: not a socket path; nothing is sent", self.address)
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # systemd reads UTF-8: a path's bytes that are not are sent as escapes (`\udcff`)
            self._socket.sendto("\n".join(lines).encode("utf-8", "backslashreplace") + b"\n", target)
            return True
        except OSError as e:
            log.debug("cannot notify systemd at %s: %s", self.address, e)
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def progress(self, text: str) -> None:
        """A line of a long repack; asks systemd for more time, so that a stop
        timeout does not kill a repack that is still moving."""
        self.send(f"STATUS={text}", f"EXTEND_TIMEOUT_USEC={REPACK_GRACE_SECONDS * 1_000_000}")

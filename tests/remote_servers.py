"""Servers on loopback for the remote source tests and benchmarks: a web
server with byte ranges, ETags and If-Match (as object stores and CDNs
serve files), and moto's S3 server behind a counting proxy. Each counts
the requests it answers and the body bytes it sends."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.bytes = 0
        self.lines: list[str] = []

    def add(self, line: str, sent: int) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += sent
            self.lines.append(line)

    def reset(self) -> tuple[int, int]:
        with self.lock:
            seen = (self.requests, self.bytes)
            self.requests = self.bytes = 0
            self.lines = []
            return seen


def etag_of(path: Path) -> str:
    st = path.stat()
    return '"' + hashlib.sha256(f"{st.st_size}-{st.st_mtime_ns}-{st.st_ino}".encode()).hexdigest()[:16] + '"'


class _Files(BaseHTTPRequestHandler):
    root: Path
    counts: Counts

    def log_message(self, *args) -> None:  # quiet
        pass

    def _file(self) -> Path | None:
        path = (self.root / self.path.lstrip("/")).resolve()
        return path if path.is_file() and self.root.resolve() in path.parents else None

    def do_HEAD(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            self.counts.add(f"HEAD {self.path} 404", 0)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        for name, value in self._validators(path):
            self.send_header(name, value)
        self.end_headers()
        self.counts.add(f"HEAD {self.path}", 0)

    def _validators(self, path: Path) -> list[tuple[str, str]]:
        """What a HEAD says beside the length: the ETag, and that ranges are served."""
        return [("ETag", etag_of(path)), ("Accept-Ranges", "bytes")]

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            self.counts.add(f"GET {self.path} 404", 0)
            return
        size, etag = path.stat().st_size, etag_of(path)
        wanted = self.headers.get("If-Match")
        if wanted is not None and wanted != etag:
            self.send_response(412)
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.counts.add(f"GET {self.path} 412", 0)
            return
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        start, end = (int(match[1]), min(size, int(match[2]) + 1 if match[2] else size)) if match else (0, size)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start)
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.wfile.write(body)
        self.counts.add(f"GET {self.path} {start}-{end}", len(body))


class FileServer:
    """Serves the files of `root` at http://127.0.0.1:PORT/."""

    def __init__(self, root: Path):
        self.counts = Counts()
        handler = type("Handler", (_Files,), {"root": Path(root), "counts": self.counts})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    """A threaded server that lets a client hang up quietly: a mount that
    ends while its read-ahead is in flight closes connections mid-reply."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Proxy(BaseHTTPRequestHandler):
    """Passes each request on to moto's server, counting it."""

    upstream: tuple[str, int]
    counts: Counts
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _pass(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = f"{self.upstream[0]}:{self.upstream[1]}"
        connection.request(self.command, self.path, body=body, headers=headers)
        reply = connection.getresponse()
        data = reply.read()
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # a HEAD's length is the object's, as the server said it
        self.send_header("Content-Length", reply.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        connection.close()
        self.counts.add(f"{self.command} {self.path} {reply.status}", len(data) if self.command != "HEAD" else 0)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _pass


class S3Server:
    """moto's S3 on loopback, behind a counting proxy; `env` points boto at it."""

    def __init__(self):
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.counts = Counts()
        handler = type("Proxy", (_Proxy,), {"upstream": (host, port), "counts": self.counts})
        self.server = _Server(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.moto.stop()


def environment(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}


class _Hub(_Files):
    """The Hugging Face Hub's API and file URLs, for one repository held in
    `root`: `/api/models/ORG/NAME/revision/REV` lists it at commit SHA, and
    `/ORG/NAME/resolve/SHA/PATH` redirects to the file, as the Hub sends
    large files to its CDN (here `/cdn/PATH`, with ranges and ETags)."""

    repo: str
    sha: str

    def do_GET(self) -> None:
        api = f"/api/models/{self.repo}/revision/"
        resolve = f"/{self.repo}/resolve/{self.sha}/"
        if self.path.startswith(api):
            siblings = [{"rfilename": str(p.relative_to(self.root)), "size": p.stat().st_size}
                        for p in sorted(self.root.rglob("*")) if p.is_file()]
            body = json.dumps({"id": self.repo, "sha": self.sha, "lastModified": "2026-11-30T12:00:00.000Z",
                               "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.counts.add(f"GET {self.path}", len(body))
        elif self.path.startswith(resolve):
            self.send_response(302)
            self.send_header("Location", "/cdn/" + self.path[len(resolve):])
            self.send_header("Content-Length", "0")
            self.end_headers()
            self.counts.add(f"GET {self.path} 302", 0)
        elif self.path.startswith("/cdn/"):
            self.path = self.path[len("/cdn"):]
            super().do_GET()
        else:
            self.send_error(404)
            self.counts.add(f"GET {self.path} 404", 0)


class HubServer(FileServer):
    """A Hub of one repository `org/model` at commit SHA; point HF_ENDPOINT at `url`."""

    SHA = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, root: Path, repo: str = "org/model"):
        self.counts = Counts()
        handler = type("Hub", (_Hub,), {"root": Path(root), "counts": self.counts, "repo": repo, "sha": self.SHA})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()


class _Drip(_Files):
    """`_Files` over HTTP/1.1 keep-alive connections, with two ways of
    being slow: a request whose path starts with one of `hold` is never
    answered, and the body of a ranged GET of a path in `pace` that starts
    at or after `after` is sent at that path's pace, `(bytes, seconds)`:
    so many bytes, then a pause. Each slow request is recorded in `began`
    as it begins, with the client's port (its connection), and in `slow`
    when it ends, with how: "sent", "hung up" (the client closed the
    connection first) or "stopped"."""

    protocol_version = "HTTP/1.1"
    pace: dict[str, tuple[int, float]]
    after: int
    hold: tuple[str, ...]
    stopping: threading.Event
    began: list[tuple[str, str, int]]
    slow: list[tuple[str, str, int, str]]

    def do_HEAD(self) -> None:
        if not self._held():
            super().do_HEAD()

    def do_GET(self) -> None:
        if self._held():
            return
        path = self._file()
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if path is None or not match or int(match[1]) < self.after or self.path not in self.pace:
            super().do_GET()
            return
        size, etag = path.stat().st_size, etag_of(path)
        start, end = int(match[1]), min(size, int(match[2]) + 1 if match[2] else size)
        with open(path, "rb") as f:
            f.seek(start)
            body = f.read(end - start)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        self.began.append((self.path, f"{start}-{end}", self.client_address[1]))
        step, pause = self.pace[self.path]
        ended = "sent"
        try:
            for at in range(0, len(body), step):
                self.wfile.write(body[at: at + step])
                self.wfile.flush()
                if self.stopping.wait(pause):
                    ended = "stopped"
                    break
        except ConnectionError:
            ended = "hung up"
        self._record(f"{start}-{end}", ended)

    def _held(self) -> bool:
        """Answer nothing to a request of a held path, until the client
        hangs up or the server stops."""
        if not self.path.startswith(self.hold):
            return False
        self.began.append((self.path, self.command, self.client_address[1]))
        ended = "stopped"
        while not self.stopping.wait(0.1):
            if select.select([self.connection], [], [], 0)[0] and not self.connection.recv(1, socket.MSG_PEEK):
                ended = "hung up"
                break
        self._record(self.command, ended)
        return True

    def _record(self, what: str, ended: str) -> None:
        self.close_connection = ended != "sent"
        self.slow.append((self.path, what, self.client_address[1], ended))
        self.counts.add(f"{self.command} {self.path} {what} {ended}", 0)


class DripServer(FileServer):
    """A web server that is slow where it is told: the paths in `pace`
    send each range that starts at or after `after` bytes at that pace,
    `(bytes, seconds)`: `{"/x": (1, 1.0)}` drips one byte a second. A path
    that starts with one of `hold` gets no answer at all. The rest (HEADs,
    the first bytes, other files) is served as FileServer serves it. It
    also serves S3's HeadObject and ranged GetObject of `root/BUCKET/KEY`
    (point AWS_ENDPOINT_URL at `url`). `began` records each slow request
    as it begins: (path, its range or method, the client's port); `slow`
    as it ends, with how it ended: "sent", "hung up" or "stopped"."""

    def __init__(self, root: Path, pace: dict[str, tuple[int, float]] | None = None, after: int = 0,
                 hold: tuple[str, ...] = ()):
        self.counts = Counts()
        self.stopping = threading.Event()
        self.began: list[tuple[str, str, int]] = []
        self.slow: list[tuple[str, str, int, str]] = []
        handler = type("Drip", (_Drip,), {"root": Path(root), "counts": self.counts, "pace": pace or {},
                                          "after": after, "hold": hold, "stopping": self.stopping,
                                          "began": self.began, "slow": self.slow})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()  # ends the slow replies still being sent
        super().close()


class _NoRanges(_Files):
    """A server that ignores Range, as `python -m http.server` does, and
    sends no ETag; `grow` bytes of zeros are added to each GET's body, with
    a Content-Length that says so (`lie="length"`), or with none, the body
    ending when the connection closes (`lie="close"`)."""

    grow: int
    lie: str

    def _validators(self, path: Path) -> list[tuple[str, str]]:
        return []

    def do_GET(self) -> None:
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        body = path.read_bytes() + bytes(self.grow)
        self.send_response(200)
        if self.lie != "close":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        self.counts.add(f"GET {self.path}", len(body))


class NoRangesServer(FileServer):
    """Serves the files of `root` whole whatever was asked (`_NoRanges`)."""

    def __init__(self, root: Path, grow: int = 0, lie: str = "length"):
        self.counts = Counts()
        handler = type("NoRanges", (_NoRanges,), {"root": Path(root), "counts": self.counts, "grow": grow, "lie": lie})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

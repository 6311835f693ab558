"""Serve a test HTTP server on 127.0.0.1 for the length of a `with` block (the download and CLI mirror tests), and
`FileServer`, the local mirror of weight files with resumable (Range) downloads the CLI and loader tests use."""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def serving(server):
    """Run `server` (bound to 127.0.0.1, port 0) in a daemon thread; set `server.base` to its URL; stop it after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _RangeHandler(BaseHTTPRequestHandler):
    """GET of a file the server holds, whole or from a 'bytes=N-' range (206; 416 past the end); every request is
    recorded. A path in `server.cut` is answered with half its bytes once, then the connection closes; a path in
    `server.extra_length` announces that many bytes more than it sends (a size mismatch)."""

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        with srv.lock:
            srv.requests.append((self.path, rng))
        body = srv.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        start = int(m.group(1)) if m else 0
        if m and start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if m:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) + srv.extra_length.get(self.path, 0)))
        self.end_headers()
        payload = body[start:]
        if self.path in srv.cut:  # drop the connection halfway, once
            srv.cut.discard(self.path)
            payload = payload[: len(payload) // 2]
        self.wfile.write(payload)
        self.wfile.flush()


class FileServer(ThreadingHTTPServer):
    """A local mirror of files by URL path (`files`), with the requests it saw (`requests`); use with `serving`."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.cut: set[str] = set()
        self.extra_length: dict[str, int] = {}
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):  # a client that hung up (Cancel, a cut) is expected
        pass

"""Serve a test HTTP server on 127.0.0.1 for the length of a `with` block (the download and CLI mirror tests)."""

from __future__ import annotations

import contextlib
import threading


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

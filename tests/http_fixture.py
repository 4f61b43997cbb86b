"""A loopback HTTP server that serves good images and every kind of broken response.

Routes (all under the base URL):
  /img/<name>       bytes registered with ``server.add(name, data)`` (after ``delay`` seconds)
  /404/...          404 Not Found
  /html/...         200 with an HTML page
  /empty/...        200 with an empty body
  /slow/<seconds>/  waits before answering (for timeouts)
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ImageServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.delays: dict[str, float] = {}
        self.hits: dict[str, int] = {}
        files, delays, hits = self.files, self.delays, self.hits

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, body: bytes, ctype: str = "image/jpeg") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                path = self.path
                hits[path] = hits.get(path, 0) + 1
                if path.startswith("/img/") and path[5:] in files:
                    time.sleep(delays.get(path[5:], 0.0))
                    self._send(200, files[path[5:]])
                elif path.startswith("/html/"):
                    self._send(200, b"<!doctype html><html><body>moved</body></html>", "text/html")
                elif path.startswith("/empty/"):
                    self._send(200, b"")
                elif path.startswith("/slow/"):
                    time.sleep(float(path.split("/")[2]))
                    self._send(200, b"late")
                else:
                    self._send(404, b"not found", "text/plain")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, name: str, data: bytes, delay: float = 0.0) -> str:
        self.files[name] = data
        self.delays[name] = delay
        return f"{self.base}/img/{name}"

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

"""The HTTP side of the Open Inference Protocol, shared by component servers and the gateway.

Python's standard ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, one thread per connection, Nagle
off) is enough here: a component answers in a few milliseconds of torch compute, the bodies are
small, and the standard library adds no dependency to the runtime image.  What a request can make
the server do is bounded: the body size (``413`` before a byte of an oversized body is read), the
number of open connections (new ones are refused above ``max_connections``), and a socket timeout
for idle or slow clients.

A server wraps an :class:`OIPApp` (the model side: KServe's split between a model and its server):
the app knows tensors, the handler knows HTTP.  Every error is ``{"error": "..."}`` with a 4xx/5xx
status, and no request can stop the process: anything unexpected becomes a 500.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from melplan.serve.protocol import HEADER_LENGTH, ProtocolError

DEFAULT_MAX_BODY_BYTES = 16 << 20  # 16 MiB: a batch of 256 FP32 3x32x32 inputs is 3 MiB
DEFAULT_MAX_CONNECTIONS = 256
IDLE_TIMEOUT_S = 60.0

_MODEL_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/[^/]+)?(/ready|/infer)?$")


class OIPApp(Protocol):
    """What a server needs from the model side."""

    def live(self) -> bool: ...

    def ready(self) -> bool: ...

    def server_metadata(self) -> dict[str, Any]: ...

    def model_metadata(self, model: str) -> dict[str, Any]:  # raises ProtocolError(404)
        ...

    def model_ready(self, model: str) -> bool:  # raises ProtocolError(404)
        ...

    def infer(self, model: str, body: bytes, header_length: str | None) -> tuple[bytes, dict[str, str]]:
        """Raises ProtocolError for a bad request."""
        ...

    def extra_get(self, path: str) -> tuple[int, str, bytes] | None: ...


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: OIPServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet: metrics carry the counts
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(IDLE_TIMEOUT_S)

    # -- replies ----------------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode())

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    # -- routes -----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            if path == "/v2/health/live":
                self._json(200 if app.live() else 503, {"live": app.live()})
            elif path == "/v2/health/ready":
                ok = app.ready()
                self._json(200 if ok else 503, {"ready": ok})
            elif path == "/v2":
                self._json(200, app.server_metadata())
            else:
                m = _MODEL_PATH.match(path)
                if m and m.group(2) is None:
                    self._json(200, app.model_metadata(m.group(1)))
                elif m and m.group(2) == "/ready":
                    ok = app.model_ready(m.group(1))
                    self._json(200 if ok else 503, {"name": m.group(1), "ready": ok})
                else:
                    extra = app.extra_get(path)
                    if extra is None:
                        self._error(404, f"no such endpoint: GET {path}")
                    else:
                        status, ctype, body = extra
                        self._send(status, body, {"Content-Type": ctype})
        except ProtocolError as exc:
            self._error(exc.status, exc.message)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away (a heartbeat that gave up, a stop): no reply
        except Exception as exc:  # never let a request stop the server
            print(f"melplan serve: GET {path} failed: {exc!r}", file=sys.stderr)
            self._error(500, f"internal error: {type(exc).__name__}")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        m = _MODEL_PATH.match(path)
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length_text is None:
            self.close_connection = True
            self._error(411, "send the request with a Content-Length header (chunked bodies are not accepted)")
            return
        try:
            length = int(length_text)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._error(400, f"bad Content-Length {length_text!r}")
            return
        limit = self.server.max_body_bytes
        if length > limit:
            self.close_connection = True  # the unread body makes the connection unusable
            self._error(413, f"request body of {length} bytes is over the limit of {limit} bytes")
            return
        try:
            body = self.rfile.read(length)
        except OSError:
            self.close_connection = True
            return
        if len(body) != length:
            self.close_connection = True
            self._error(400, "the body ended before Content-Length bytes")
            return
        if not m or m.group(2) != "/infer":
            self._error(404, f"no such endpoint: POST {path}")
            return
        encoding = self.headers.get("Content-Encoding")
        if encoding not in (None, "identity"):
            self._error(415, f"Content-Encoding {encoding!r} is not supported; send the body uncompressed")
            return
        try:
            out, headers = self.server.app.infer(m.group(1), body, self.headers.get(HEADER_LENGTH))
            self._send(200, out, headers)
        except ProtocolError as exc:
            self._error(exc.status, exc.message)
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away: no reply to write
        except Exception as exc:
            print(f"melplan serve: POST {path} failed: {exc!r}", file=sys.stderr)
            self._error(500, f"internal error: {type(exc).__name__}: {exc}")


class OIPServer(ThreadingHTTPServer):
    """A threading HTTP server for one :class:`OIPApp` with bounded body size and connections."""

    daemon_threads = True
    block_on_close = False  # keep-alive connections must not delay a stop
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        app: OIPApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    b'Content-Length: 38\r\nConnection: close\r\n\r\n{"error": "too many open connections"}'
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # a client that went away: nothing to report
        print(f"melplan serve: error on a connection from {client_address}: {exc!r}", file=sys.stderr)

    def start_background(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()
        return t

"""Calls from the gateway to component servers: keep-alive HTTP/1.1, binary tensors, deadlines.

Each thread keeps one connection per component URL (``http.client``; the request line, headers and
body leave in one ``send``, TCP_NODELAY is set, so there is no Nagle/delayed-ACK stall).  A call
that cannot connect, times out, or gets a 5xx raises :class:`CallFailed`, which the gateway treats
as that server failing; a reused keep-alive connection that the server closed while idle is retried
once on a fresh connection, so an idle timeout is never mistaken for a death.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import numpy as np

from melplan.core.errors import CallFailed
from melplan.serve.protocol import HEADER_LENGTH, ProtocolError, decode_response, encode_request

_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)


class ComponentClient:
    """Thread-safe: connections are per thread and per URL."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _conns(self) -> dict[str, http.client.HTTPConnection]:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        return conns

    def _drop(self, url: str) -> None:
        conn = self._conns().pop(url, None)
        if conn is not None:
            conn.close()

    def _request(
        self, url: str, method: str, path: str, body: bytes | None, headers: Mapping[str, str], timeout: float
    ) -> tuple[int, bytes, str | None]:
        if timeout <= 0:
            raise CallFailed(url, "deadline passed before the call")
        conns = self._conns()
        for attempt in (0, 1):
            conn = conns.get(url)
            fresh = conn is None
            if conn is None:
                parts = urlsplit(url)
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
                conns[url] = conn
            try:
                if conn.sock is None:
                    conn.connect()
                    fresh = True
                sock = conn.sock
                assert sock is not None  # connect() sets it or raises
                if fresh:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=dict(headers))
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._drop(url)
                return resp.status, data, resp.getheader(HEADER_LENGTH)
            except _STALE as exc:
                self._drop(url)
                if fresh or attempt:
                    raise CallFailed(url, f"connection lost ({type(exc).__name__})") from None
            except TimeoutError:
                self._drop(url)
                raise CallFailed(url, f"no answer within {timeout * 1e3:.0f} ms") from None
            except OSError as exc:
                self._drop(url)
                raise CallFailed(url, f"{type(exc).__name__}: {exc.strerror or exc}") from None
            except http.client.HTTPException as exc:
                self._drop(url)
                raise CallFailed(url, f"bad HTTP ({type(exc).__name__})") from None
        raise CallFailed(url, "unreachable")  # pragma: no cover

    def infer(
        self, url: str, model: str, inputs: Mapping[str, np.ndarray], *, timeout: float
    ) -> tuple[dict[str, np.ndarray], dict]:
        """POST an infer request with binary tensors; returns (outputs, response head)."""
        body, headers = encode_request(inputs)
        status, data, hlen = self._request(url, "POST", f"/v2/models/{model}/infer", body, headers, timeout)
        if status != 200:
            try:
                import json

                msg = json.loads(data).get("error", "")
            except ValueError:
                msg = data[:200].decode(errors="replace")
            raise CallFailed(url, f"HTTP {status}: {msg}", status)
        try:
            head, outs = decode_response(data, hlen)
        except ProtocolError as exc:
            raise CallFailed(url, exc.message, 502) from None
        return outs, head

    def ready(self, url: str, *, timeout: float) -> bool:
        try:
            status, _, _ = self._request(url, "GET", "/v2/health/ready", None, {}, timeout)
        except CallFailed:
            return False
        return status == 200


def wait_ready(url: str, *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``url``'s ready endpoint until it answers 200 or ``timeout`` seconds pass."""
    client = ComponentClient()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if client.ready(url, timeout=min(1.0, max(0.05, end - time.monotonic()))):
            return True
        time.sleep(interval)
    return False

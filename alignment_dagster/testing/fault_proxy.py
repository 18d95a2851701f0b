"""A fault-injecting HTTP proxy on loopback, for testing clients of OpenAI-compatible servers.

Each request draws its fate from a seeded schedule: pass through, 429, 500, a dropped connection (closed
without a response, sometimes *after* the upstream answered), or a slow response. A passed-through answer
that finds its client gone (the upstream took longer than the client's timeout) is counted as
`client_timeout`, not `ok`. Usable from tests (`FaultProxy(...).start()`) or as
`python -m alignment_dagster.testing.fault_proxy UPSTREAM PORT`.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

FATES = ("ok", "429", "500", "drop_before", "drop_after", "slow")


class _Handler(BaseHTTPRequestHandler):
    """Relays one request to the upstream, or fails it the way its drawn fate says."""

    protocol_version = "HTTP/1.1"
    proxy: FaultProxy  # set on the subclass each proxy makes

    def log_message(self, *args) -> None:  # quiet
        pass

    def _fail(self, status: int) -> None:
        msg = b'{"error": "injected fault"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(msg)))
        if status == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(msg)

    def _drop(self) -> None:
        self.close_connection = True
        self.connection.close()

    def _relay(self) -> None:
        proxy = self.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fate = proxy._draw()
        if fate in ("429", "500"):
            return self._fail(int(fate))
        if fate == "drop_before":
            return self._drop()
        if fate == "slow":
            time.sleep(proxy.slow_s)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        resp = httpx.request(
            self.command, proxy.upstream + self.path, content=body, headers=headers, timeout=120
        )
        if fate == "drop_after":  # the upstream did the work, the client never hears of it
            return self._drop()
        try:
            self.send_response(resp.status_code)
            self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
            self.send_header("Content-Length", str(len(resp.content)))
            self.end_headers()
            self.wfile.write(resp.content)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            self.close_connection = True
            if fate == "ok":  # not injected: the upstream was slower than the client's timeout
                with proxy._lock:
                    proxy.fates["ok"] -= 1
                    proxy.fates["client_timeout"] += 1
            return None
        with proxy._lock:
            proxy.forwarded_ok += 1
        return None

    do_GET = _relay
    do_POST = _relay


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        fault_rate: float = 0.4,
        slow_s: float = 1.5,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.upstream = upstream.rstrip("/")
        self.fault_rate = fault_rate
        self.slow_s = slow_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.fates: Counter = Counter()
        self.forwarded_ok = 0  # upstream answers delivered to the client
        handler = type("Handler", (_Handler,), {"proxy": self})
        self.server = ThreadingHTTPServer((host, port), handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def _draw(self) -> str:
        with self._lock:
            fate = "ok" if self._rng.random() >= self.fault_rate else self._rng.choice(FATES[1:])
            self.fates[fate] += 1
            return fate

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("upstream")
    parser.add_argument("port", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fault-rate", type=float, default=0.4)
    args = parser.parse_args()
    proxy = FaultProxy(args.upstream, seed=args.seed, fault_rate=args.fault_rate, port=args.port).start()
    print(f"fault proxy {proxy.url} -> {args.upstream}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()

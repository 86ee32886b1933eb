"""The live page: a stdlib HTTP server over the catalogue (no CDN, nothing fetched elsewhere).

``/`` serves a static page whose script polls ``/api/state`` every second (fleet status from
the retained ``status``, fps and outbox depth from ``stats``, the newest classifications, the
class histogram, the latest errors) and shows thumbnails from ``/thumbnails/<device>/<id>.jpg``.
The page reads the database, not the writer's memory, so it can run beside any writer
(``galaxy-catalogue serve``) or inside one (``galaxy-catalogue run --http``).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import unquote

from catalogue.store import Store

log = logging.getLogger(__name__)

_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
STATE_CACHE_S = 0.9
_THUMB = re.compile(r"^/thumbnails/([^/]{1,128})/([^/]{1,128})\.jpg$")


class LivePage:
    """``start()`` serves in a thread; ``stop()``. One database connection, used under a lock."""

    def __init__(
        self,
        store_factory: Callable[[], Store],
        host: str = "127.0.0.1",
        port: int = 8080,
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._store_factory = store_factory
        self._store: Store | None = None
        self._lock = threading.Lock()
        self._extra = extra_state
        # One database read serves every open page for a second: the totals and the histogram
        # scan the whole table, which should not happen once per browser per poll.
        self._cached: tuple[float, bytes] | None = None
        page = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                page._get(self)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="catalogue-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def _with_store(self, fn: Callable[[Store], Any]) -> Any:
        with self._lock:
            if self._store is None:
                self._store = self._store_factory()
            try:
                return fn(self._store)
            except Exception:
                self._store.close()  # a lost database connection: reopen on the next request
                self._store = None
                raise

    def _state_json(self) -> bytes:
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < STATE_CACHE_S:
            return cached[1]
        state = asdict(self._with_store(lambda s: s.page_state()))
        if self._extra is not None:
            state["writer"] = self._extra()
        body = json.dumps(state, default=str).encode()
        self._cached = (now, body)
        return body

    def _get(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        try:
            if path in _STATIC:
                name, ctype = _STATIC[path]
                body = (resources.files("catalogue.web") / "static" / name).read_bytes()
                _send(req, HTTPStatus.OK, body, ctype)
            elif path == "/api/state":
                _send(req, HTTPStatus.OK, self._state_json(), "application/json")
            elif m := _THUMB.match(path):
                device, msg_id = unquote(m.group(1)), unquote(m.group(2))
                jpeg = self._with_store(lambda s: s.thumbnail(device, msg_id))
                if jpeg is None:
                    _send(req, HTTPStatus.NOT_FOUND, b"no thumbnail", "text/plain")
                else:
                    _send(req, HTTPStatus.OK, jpeg, "image/jpeg", cache=True)
            else:
                _send(req, HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        except Exception as exc:  # a request must never take the server down
            log.warning("http %s: %s", path, exc)
            _send(req, HTTPStatus.SERVICE_UNAVAILABLE, str(exc).encode(), "text/plain")


def _send(
    req: BaseHTTPRequestHandler, status: HTTPStatus, body: bytes, ctype: str, cache: bool = False
) -> None:
    req.send_response(status)
    req.send_header("Content-Type", ctype)
    req.send_header("Content-Length", str(len(body)))
    req.send_header("Cache-Control", "max-age=86400" if cache else "no-store")
    req.end_headers()
    req.wfile.write(body)

"""Reference answer of 08.access-log: spliced into solutions/08_logging.ipynb by the build, imported by tests."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode


class AccessLog:
    """Pure ASGI middleware: one JSON access-log line per request, with a request id echoed to the client."""

    SENSITIVE = ("token", "key", "secret", "password", "auth", "sig")

    def __init__(self, app: Any, logger: logging.Logger) -> None:
        """Wrap `app`; every request is logged on `logger`."""
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Pass the request through, echo its id, and log one line with its fields (also when the app raises)."""
        # --8<-- [start:answer]
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        query = urlencode([(name, "***" if any(word in name.lower() for word in self.SENSITIVE) else value)
                           for name, value in pairs], safe="*")
        status, sent = 500, 0  # local to this call: every request in flight has its own
        start = time.perf_counter()

        async def send_with_id(message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        def log(level: int) -> None:
            self.logger.log(level, "request", exc_info=level >= logging.ERROR, extra={
                "method": scope["method"], "path": scope["path"], "query": query, "status": status,
                "duration_ms": (time.perf_counter() - start) * 1000, "request_id": request_id, "bytes": sent})

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            status = 500
            log(logging.ERROR)
            raise
        log(logging.INFO)
        # --8<-- [end:answer]

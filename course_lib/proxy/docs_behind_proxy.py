"""FastAPI's docs pages behind a proxy that strips a path prefix (jupyter-server-proxy on a hub, Traefik, nginx).

The proxy serves the app at `/user/<name>/proxy/<port>/...` and forwards `/docs`; the Swagger page then asks for
`/openapi.json` at the proxy's root. Proxies that strip a prefix say which one in `X-Forwarded-Prefix`, and ASGI's
`root_path` is how an app learns it. `DocsBehindProxy` gives that prefix to the docs pages only (the Swagger and
ReDoc pages and the OpenAPI document, also of FastAPI apps mounted in the app), as ASGI defines it: `root_path` the
prefix, `path` the public path. They then name `<prefix>/openapi.json`, and the document lists `<prefix>` as its
server ("Try it out" goes through the proxy). Every other request passes unchanged: the app's routes see the same
`path` and `request.url.path` with or without the proxy, so cache keys and log lines do not change.

`course_lib.servers.serve` runs an app as `docs_behind_proxy:app` with COURSE_LAB_PROXIED_APP="module:attribute"
when it serves through a hub's proxy. Behind your own proxy at a fixed prefix, `uvicorn --root-path /prefix` is the
usual way (FastAPI's "Behind a Proxy"): it gives every route the prefix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

HEADER = b"x-forwarded-prefix"
ENV_APP = "COURSE_LAB_PROXIED_APP"
DEFAULT_PATHS = ("/docs", "/redoc", "/openapi.json")
# a URL path only: the prefix is written into the docs page's HTML and JavaScript, so no quotes, brackets or spaces
_SAFE_PREFIX = re.compile(r"(/[A-Za-z0-9._~%:@+,=!*-]+)+/?")


def docs_paths(app: object, depth: int = 8) -> tuple[str, ...]:
    """The paths of FastAPI's docs pages in `app`: its own, and those of FastAPI apps mounted in it, found through
    middleware that keep the next app as `.app`; FastAPI's defaults when there is no FastAPI app to ask."""
    found = _docs_paths(app, "", depth)
    return tuple(dict.fromkeys(found)) if found is not None else DEFAULT_PATHS


def _docs_paths(app: object, mounted_at: str, depth: int) -> list[str] | None:
    while depth > 0 and app is not None and not hasattr(app, "routes"):
        app, depth = getattr(app, "app", None), depth - 1  # through a middleware to the app it wraps
    if depth <= 0 or app is None:
        return None
    paths: list[str] = []
    if hasattr(app, "openapi_url") and hasattr(app, "docs_url"):
        urls = (getattr(app, "docs_url", None), getattr(app, "redoc_url", None), getattr(app, "openapi_url", None))
        paths += [mounted_at + url for url in urls if isinstance(url, str) and url]
    for route in getattr(app, "routes", None) or ():
        inner = getattr(route, "app", None)
        if inner is not None and isinstance(getattr(route, "path", None), str):  # a Mount: its path has no slash
            paths += _docs_paths(inner, mounted_at + route.path, depth - 1) or []
    return paths if paths or hasattr(app, "openapi_url") else None


def forwarded_prefix(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The path prefix a proxy stripped (its X-Forwarded-Prefix header), or "" when absent or not a plain path."""
    for name, value in headers:
        if name.lower() == HEADER:
            try:
                prefix = value.decode("ascii").strip()
            except UnicodeDecodeError:
                return ""
            return prefix.rstrip("/") if _SAFE_PREFIX.fullmatch(prefix) else ""
    return ""


class DocsBehindProxy:
    """Pure ASGI middleware: a request for a docs page that came through a prefix-stripping proxy gets the prefix
    as `root_path` (and its public path as `path`, as ASGI says); every other request passes unchanged."""

    def __init__(self, app: ASGIApp, paths: Iterable[str] | None = None) -> None:
        self.app = app
        self.paths = frozenset(docs_paths(app) if paths is None else paths)

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths and not scope.get("root_path"):
            prefix = forwarded_prefix(scope.get("headers", ()))
            if prefix:
                raw_path = scope.get("raw_path") or scope["path"].encode()
                scope = {**scope, "root_path": prefix, "path": prefix + scope["path"],
                         "raw_path": prefix.encode() + raw_path}
        await self.app(scope, receive, send)


def _load() -> DocsBehindProxy:
    """The app named by COURSE_LAB_PROXIED_APP, wrapped (imported the way uvicorn imports an app string)."""
    target = os.environ.get(ENV_APP, "")
    if not target:
        raise RuntimeError(f"{ENV_APP} must name the app to serve, like 'package.module:app'")
    from uvicorn.importer import import_from_string

    return DocsBehindProxy(import_from_string(target))


def __getattr__(name: str) -> Any:
    """`docs_behind_proxy:app` imports the served app on first use (so this module imports without it)."""
    if name == "app":
        globals()["app"] = wrapped = _load()
        return wrapped
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

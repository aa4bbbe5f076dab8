"""Reference answer of 04.gzip: spliced into solutions/04_pagination.ipynb by the build, imported by tests."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES


def add_gzip(app: FastAPI) -> FastAPI:
    """Compress responses of 1,024 bytes or more, except types that are already compressed."""
    # --8<-- [start:add-gzip]
    app.add_middleware(
        GZipMiddleware,
        minimum_size=1_024,  # the rule's threshold: 1,024 bytes or more are compressed
        compresslevel=6,
        exclude_content_types=(*DEFAULT_EXCLUDED_CONTENT_TYPES, "application/x-xz"),  # already compressed
    )
    # --8<-- [end:add-gzip]
    return app

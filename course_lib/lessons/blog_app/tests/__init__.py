"""The package's own tests: in-process (httpx + asgi-lifespan), a fresh database each, get_db overridden."""

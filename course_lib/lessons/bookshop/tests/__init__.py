"""The bookshop's own tests: in-process (httpx + asgi-lifespan) on a small fresh database each."""

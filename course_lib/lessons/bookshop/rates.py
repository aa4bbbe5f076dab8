"""The outbound service: an exchange-rate API with a 30 ms round trip, as an ASGI app.

The bookshop reaches it through an httpx client on an in-process transport (`httpx.ASGITransport(app=rates_app)`),
so it needs no network, but the client code is the real thing."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Header, HTTPException, Query

DEMO_API_KEY = "rk_live_7f3a9c2e51d84b06"  # a fake key: an audit looks for it in responses and logs
RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.2}
RATES_LATENCY_S = 0.03

rates_app = FastAPI(title="Exchange rates (simulated remote API)")


@rates_app.get("/rates")
async def rates(base: str = Query("USD"), api_key: str | None = Query(None),
                x_api_key: str | None = Header(None)) -> dict[str, float]:
    """Exchange rates from `base`; needs the API key (query string or X-API-Key header)."""
    await asyncio.sleep(RATES_LATENCY_S)
    if DEMO_API_KEY not in (api_key, x_api_key):
        raise HTTPException(status_code=401, detail="bad API key")
    if base != "USD":
        raise HTTPException(status_code=400, detail="only USD base")
    return RATES

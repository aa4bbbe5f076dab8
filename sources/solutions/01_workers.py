# %% [markdown]
# # Exercises 01 · Workers, blocking calls, timeouts
#
# Work through `notebooks/01_workers.ipynb` first. Write each answer in the cell marked `# YOUR CODE HERE`,
# then run the `check(...)` cell below it. A failing check says what it measured and gives a hint; run it
# again after a fix. The graders start real servers on `127.0.0.1` and stop them when they finish.

# %%
import asyncio
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, HTTPException, Request

from course_lib import *
from course_lib.lessons.l01_workers import slow_lookup, slow_lookup_async


# %% [markdown]
# ## 01.unblock — stop blocking the event loop
#
# `slow_lookup(item_id)` is a *blocking* call (100 ms, like a sync database driver or `requests.get`). The app
# below calls it inside `async def`, so concurrent requests are served one after another. Fix `make_items_app()` so
# that **20 concurrent requests finish at least 4× faster** than this version, with **exactly the same
# responses**, and **no request calling `slow_lookup` on the event loop's own thread** (the grader notes where
# each lookup runs: fixing some requests is not enough). (`slow_lookup_async(item_id)` is the same lookup from an
# async driver, if you want it.)
#
# The grader sends 20 concurrent requests (distinct ids, one unknown) to the blocking app and to yours,
# interleaved, twice (new ids and new prices each round), and compares wall times and bodies.

# %%
def make_items_app() -> FastAPI:
    app = FastAPI()

    ### BEGIN SOLUTION
    #> @app.get("/items/{item_id}")
    #> async def read_item(item_id: int) -> dict:
    #>     return slow_lookup(item_id)
    ...  # --8<-- "answers/l01_workers.py:unblock"
    ### END SOLUTION

    return app


# %%
check("01.unblock", make_items_app)


# %% [markdown]
# ## 01.timeout-client — a timeout and one shared client
#
# Write `make_weather_app(upstream_url)`: a FastAPI app whose **`GET /weather`** fetches `upstream_url` and returns
# its JSON unchanged.
#
# - When the upstream hangs, answer a clear **504** quickly (the grader switches an outage on at the same URL:
#   the upstream hangs for 20 s; answer within 4 s). When it is back, answer normally again.
# - Use **one** `httpx.AsyncClient` for all requests, created when the app starts (`lifespan`). The grader's
#   upstream counts the TCP connections your requests arrive on.
#
# The starter below works, but opens a new client per request and has no timeout of its own.

# %%
def make_weather_app(upstream_url: str) -> FastAPI:
    ### BEGIN SOLUTION
    #> app = FastAPI()
    #>
    #> @app.get("/weather")
    #> async def weather() -> dict:
    #>     async with httpx.AsyncClient(timeout=None) as client:
    #>         response = await client.get(upstream_url)
    #>     return response.json()
    #>
    #> return app
    ...  # --8<-- "answers/l01_workers.py:timeout-client"
    ### END SOLUTION


# %%
check("01.timeout-client", make_weather_app)

# %% [markdown]
# ## 01.workers — the worker count for this machine
#
# The grader serves the lesson's CPU-bound app (`GET /cpu`) with your configuration and with one worker, and
# loads both, interleaved. Give `server_config = {"server": "uvicorn" or "gunicorn", "workers": N}` that
# **maximises throughput on this machine** without paying for workers that add nothing. On 2 or more usable
# cores the bar is 1.35× one worker's throughput (not 2×: the load generator and the
# system share those cores), or, when other programs leave too little room for that ratio, your server
# measurably running on more than 1.15 cores at once (one worker, one process, cannot exceed about 1); on
# 1 core (e.g. Binder) the checker explains why no worker count can beat one.

# %%
### BEGIN SOLUTION
#> server_config = {"server": "uvicorn", "workers": 1}
...  # --8<-- "answers/l01_workers.py:workers"
### END SOLUTION

# %%
check("01.workers", server_config)

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows these exercises ticked.

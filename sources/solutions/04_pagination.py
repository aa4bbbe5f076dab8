# %% [markdown]
# # Exercise 04 · Keyset pagination over ties, with a cap, and gzip where it pays
#
# Work through `notebooks/04_pagination.ipynb` first. Then write your answer in each cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it
# measured and gives a hint; run it again after a fix.

# %%
import base64
import binascii
import json
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.middleware.gzip import GZipMiddleware
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES
from pydantic import BaseModel
from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from course_lib import *
from course_lib.lessons.l04_pagination import (
    Item, ItemOut, add_items, cheapest_ids, make_archive_app, make_items_db, wire_bytes,
)


# %% [markdown]
# ## 04.keyset
#
# The lesson paged **newest first** on the primary key, then met ties in section 3: a feed ordered by
# `created_at`, where several items share a second. Now the shop wants its catalogue **cheapest first**.
# Write `make_app(db)`: it returns a FastAPI app with **`GET /items`** that pages through the `items` table
# ordered by **`price_cents` ascending, ties broken by `id` ascending**. Prices are not unique: several
# items share each price.
#
# - Query parameters: `limit` (default 20, **1 to 100**: anything else answers **422**) and `cursor`
#   (absent on the first page; then the `next_cursor` of the previous page, passed back as is).
# - The answer is `{"items": [...], "next_cursor": ...}`; each item has at least `id` and `title`
#   (`ItemOut` has every field). `next_cursor` is `null` on the last page.
# - **You design the cursor**: an opaque string that carries what the next page needs to start right
#   after the last item. A malformed cursor is the client's mistake: 400 or 422, not a 500.
# - The grader's tables have an index **`ix_items_price_id` on `(price_cents, id)`**
#   (`make_items_db(rows, price_index=True)` builds one like them). Use it: a page must seek to its start.
#
# The grader walks every page on tables of 0 to 250 items and compares with `cheapest_ids(db)`, inserts
# items *cheaper than all the others* between page requests (every original item must still come exactly
# once, in order), then walks **all 20,000 items of a bigger table to the last page**. It sees every
# statement your app sends to the database (whichever connection sends it): none may skip rows with
# `OFFSET`, and a page at the end of the big table must cost the database no more than a page of a
# 1,000-item table (SQLite: virtual-machine steps; PostgreSQL: rows its scans read).

# %%
class ItemPage(BaseModel):
    items: list[ItemOut]
    next_cursor: str | None


def make_app(db: DemoDB) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    ### BEGIN SOLUTION
    #> @app.get("/items")
    #> def list_items(session: Session = Depends(get_db)) -> ItemPage:
    #>     raise NotImplementedError()
    ...  # --8<-- "answers/l04_pagination.py:keyset"
    ### END SOLUTION

    return app


# %%
check("04.keyset", make_app)

# %% [markdown]
# ### Try it yourself
#
# Walk your own endpoint page by page, insert a cheaper item halfway, and count the queries of one page.
# Where does the first page end: inside a group of items with the same price?

# %%
small = make_items_db(45, price_index=True)
async with app_client(make_app(small)) as client:
    first = (await client.get("/items", params={"limit": 20})).json()
    add_items(small, 1, price_cents=0)  # a new item, cheaper than all: it lands before the cursor
    with count_queries(small.engine) as queries:
        second = (await client.get("/items", params={"limit": 20, "cursor": first["next_cursor"]})).json()
print("page 1 ends with (price_cents, id):", [(i.get("price_cents"), i["id"]) for i in first["items"]][-3:],
      "next_cursor:", first["next_cursor"])
print("page 2 begins with ids:", [i["id"] for i in second["items"]][:3], "expected:", cheapest_ids(small)[21:24],
      "·", queries.summary())


# %% [markdown]
# ## 04.gzip
#
# Write `add_gzip(app)`: it adds gzip compression to the app and returns it. This time the API has a
# written rule, and the lesson's settings do not meet it. The grader builds `make_archive_app(db)` on
# 10,000 items: the lesson's catalogue plus **`GET /items/archive`**, the same export already compressed
# with xz (`Content-Type: application/x-xz`). The rule:
#
# - a JSON response of **1,024 bytes or more** is compressed (the 1.2 MB export at least 5× smaller on the
#   wire); a **smaller** one (`GET /items?limit=8`, `/health`) is sent as is;
# - `GET /items/archive` is **never** gzipped: it is compressed already;
# - bodies are unchanged once decoded, and a client that does not accept gzip gets plain bodies.

# %%
def add_gzip(app: FastAPI) -> FastAPI:
    ### BEGIN SOLUTION
    ...  # --8<-- "answers/l04_pagination.py:add-gzip"
    ### END SOLUTION
    return app


# %%
check("04.gzip", add_gzip)

# %% [markdown]
# ### Try it yourself
#
# Bytes on the wire for each endpoint of the archive app, with your middleware:

# %%
catalog = make_items_db(2_000)
async with app_client(add_gzip(make_archive_app(catalog))) as client:
    for url in ("/items/export", "/items?limit=9", "/items?limit=8", "/items/archive"):
        wire, size, encoding = await wire_bytes(client, url)
        print(f"{url:<17} {size:>8,} bytes → {wire:>7,} on the wire ({encoding})")

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows these exercises ticked. Next lesson:
# `notebooks/05_indexes.ipynb`.

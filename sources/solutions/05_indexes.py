# %% [markdown]
# # Exercise 05 · Index what the shop queries (and nothing useless)
#
# Work through `notebooks/05_indexes.ipynb` first. Then write your answer in the cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it
# measured and gives a hint; run it again after a fix.

# %%
from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from course_lib import *
from course_lib.lessons.l05_indexes import SHOP_QUERIES, discard, explain, inspect_shop_model

# %% [markdown]
# ## 05.declare-indexes
#
# A shop keeps its orders in one table. Its endpoints run exactly these three queries:

# %%
for name, sql in SHOP_QUERIES.items():
    print(f"{name:>24}: {sql}")


# %% [markdown]
# The data: 60,000 orders (200,000 on PostgreSQL, where each query also pays a round trip over a socket that
# no index removes), 3 per customer email (10 on PostgreSQL), 50 stores (1,200 orders each; 4,000 on PostgreSQL), and
# **half of the orders are gifts** (`is_gift`).
#
# Add indexes to the `Order` model below, the SQLAlchemy 2.0 way (`mapped_column(..., index=True)`
# and/or `Index(...)` in `__table_args__`). Keep the columns as they are. The grader builds your table
# in a fresh database, fills it, and checks that:
#
# - every query's plan **searches an index** (no `SCAN orders` / `Seq Scan on orders`), and the store feed,
#   which keeps the first 20, gets its rows from the index already in order (no `USE TEMP B-TREE` / `Sort`);
# - each query runs **at least 4× faster** than on the same table without indexes (measured
#   interleaved, median of 10);
# - the count is answered **from the index alone** (SQLite: `COVERING INDEX`; PostgreSQL: `Index Only Scan`);
# - **no index starts with `is_gift`**;
# - **nothing useless**: every index you declare is chosen by at least one query's plan, no two indexes
#   have the same columns, and none is the start of another (the longer one serves both).

# %%
class ShopBase(DeclarativeBase):
    """A fresh declarative base for the shop (rerunning this cell starts over)."""


class Order(ShopBase):
    __tablename__ = "orders"
    ### BEGIN SOLUTION
    #> id: Mapped[int] = mapped_column(primary_key=True)
    #> customer_email: Mapped[str] = mapped_column(String(120))
    #> store_id: Mapped[int]
    #> is_gift: Mapped[bool]
    #> total_cents: Mapped[int]
    #> created_at: Mapped[datetime]
    ...  # --8<-- "answers/l05_indexes.py:answer"
    ### END SOLUTION


# %%
check("05.declare-indexes", Order)

# %% [markdown]
# ## Try it yourself
#
# See the plans of the shop's queries on *your* model (at the grader's size), before or after a change.

# %%
report, engine, table = inspect_shop_model(Order)
print("indexes:", report.indexes or "none")
for name, plan in report.plans.items():
    print(f"{name}:\n  " + str(plan).replace("\n", "\n  "))
discard(engine)

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked. Next lesson:
# `notebooks/06_structure.ipynb`.

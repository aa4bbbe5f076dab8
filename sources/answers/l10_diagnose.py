"""Reference answer of 10.diagnose: spliced into solutions/10_diagnose.ipynb by the build, imported by tests."""

from __future__ import annotations

import re

from course_lib import app_client, count_queries
from course_lib.lessons.l10_diagnose import (
    Mystery,
    count_connections,
    profile_request,
    request_cost,
    slow_callbacks,
    statement_plans,
    time_share,
)


async def diagnose(mystery: Mystery) -> tuple[str, str]:
    """Measure one app, exact signals first, and name its bottleneck with the figure that shows it."""
    # --8<-- [start:answer]
    with mystery.database(1) as small, mystery.database(4) as large:
        async with app_client(mystery.make_app(small)) as client:
            small_cost = await request_cost(client, mystery.url(small))
        async with app_client(mystery.make_app(large)) as client:
            url = mystery.url(large)
            await client.get(url)  # warm up: the pool opens its connection, caches fill
            with count_connections() as connections, count_queries(large.engine) as queries:
                cost = await request_cost(client, url)
            if connections.count >= 1:
                return "no_pooling", f"a warm request opened {connections.count} new database connection(s)"
            if queries.count > 5:
                return "n_plus_one", f"one request sent {queries.count} statements"
            if cost.size > 2 * small_cost.size:
                return "unbounded_list", (f"4× the rows gave {cost.size / small_cost.size:.1f}× the bytes "
                                          f"({small_cost.size:,} → {cost.size:,})")
            for sql, plan in await statement_plans(client, large, url):
                if re.search(r"\bWHERE\b", sql, re.I) and plan.full_scans:
                    return "missing_index", f"a filtered SELECT reads the whole table: {plan.full_scans[0].detail}"
            async with slow_callbacks(0.01) as held:
                cost = await request_cost(client, url)
            session = await profile_request(client, url)
    encoding = time_share(session, "fastapi/encoders.py")
    if encoding >= 0.2:
        return "slow_serialization", f"{encoding:.0%} of the request's time is in fastapi/encoders.py"
    longest = max((slow.seconds for slow in held), default=0.0)
    return "blocking_call", (f"the loop was held {longest * 1000:.0f} ms in one step; the CPU worked "
                             f"{cost.cpu_ms:.0f} of {cost.wall_ms:.0f} ms, and no encoding or query explains it")
    # --8<-- [end:answer]

"""Lesson 02 (N+1): the loading helpers, the blog app, and every grader with right and wrong answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, contains_eager, joinedload, raiseload, selectinload, subqueryload

from course_lib.client import app_client
from course_lib.db import Comment, DemoDB, Post, User, dialect, make_demo_db
from course_lib.grading import grade
from course_lib.lessons.l02_n_plus_one import (
    STRATEGIES,
    USERS_ADAPTER,
    StrictUser,
    _endpoint_ratio,
    bench,
    database_label,
    expected_payload,
    load_users,
    make_blog_app,
    render_users,
    round_trip_ms,
    simulated_rtt_ms,
    strategy_table,
)
from course_lib.queries import count_queries

# --- helpers -----------------------------------------------------------------------------------------------


def _posts_only_at_nested_path(load: Callable[[Session], Any]) -> Callable[[DemoDB], FastAPI]:
    """A wrong nested answer: the right path, but the posts-only response model (no comments)."""

    def make_app(db: DemoDB) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()

        @app.get("/users/with-comments")
        def listing(session: Session = Depends(get_db)) -> Any:
            return USERS_ADAPTER.dump_python(USERS_ADAPTER.validate_python(load(session), from_attributes=True),
                                             mode="json")

        return app

    return make_app


def _model_app(load: Callable[[Session], Any], nested: bool = False) -> Callable[[DemoDB], FastAPI]:
    """An app factory as a learner writes it: a response_model and an endpoint returning ORM objects."""
    from course_lib.lessons.l02_n_plus_one import UserWithPosts, UserWithPostsAndComments

    path = "/users/with-comments" if nested else "/users"
    model = list[UserWithPostsAndComments] if nested else list[UserWithPosts]

    def make_app(db: DemoDB) -> FastAPI:
        app = FastAPI()
        get_db = db.dependency()

        @app.get(path, response_model=model)
        def listing(session: Session = Depends(get_db)) -> Any:
            return load(session)

        return app

    return make_app


def _passes(exercise_id: str, answer: Any) -> None:
    result = grade(exercise_id, answer)
    assert result.passed, result.message


def _fails(exercise_id: str, answer: Any, *fragments: str) -> str:
    result = grade(exercise_id, answer)
    assert not result.passed, f"a wrong answer passed: {result.message}"
    for fragment in fragments:
        assert fragment in result.message, f"{fragment!r} not in {result.message!r}"
    assert result.hint, "a failure must carry a hint"
    return result.message


# --- helpers of the lesson ---------------------------------------------------------------------------------


def test_strategies_give_identical_payloads_and_exact_counts() -> None:
    with make_demo_db(users=100, posts_per_user=10, comments_per_post=1) as db:
        counts = {}
        for strategy in STRATEGIES:
            with count_queries(db.engine) as log:
                payload = render_users(db, strategy)
            counts[strategy] = log.count
            assert payload == expected_payload(db)
        assert counts == {"lazy": 101, "joinedload": 1, "selectinload": 2, "subqueryload": 2}
        assert len(expected_payload(db)) == 100 and len(expected_payload(db)[0]["posts"]) == 10


def test_nested_counts_and_selectin_batches_of_500() -> None:
    with make_demo_db(users=20, posts_per_user=3, comments_per_post=2) as db:
        for strategy, expected in (("lazy", 1 + 20 + 60), ("joinedload", 1), ("selectinload", 3)):
            with count_queries(db.engine) as log:
                payload = render_users(db, strategy, nested=True)
            assert log.count == expected, strategy
            assert payload == expected_payload(db, nested=True)
    with make_demo_db(users=1001, posts_per_user=0) as db, db.session() as session, \
            count_queries(db.engine) as log:
        load_users(session, "selectinload")
    assert log.count == 1 + 3  # selectinload sends the ids in IN lists of at most 500


def test_joinedload_collection_needs_unique() -> None:
    with make_demo_db(users=3, posts_per_user=2) as db, db.session() as session:
        with pytest.raises(sa_exc.InvalidRequestError, match="unique"):
            session.scalars(select(User).options(joinedload(User.posts))).all()


def test_blog_app_counts_through_http() -> None:
    async def run() -> dict[str, int]:
        counts = {}
        with make_demo_db(users=30, posts_per_user=4) as db:
            for strategy in ("lazy", "selectinload"):
                async with app_client(make_blog_app(db, strategy)) as client:
                    with count_queries(db.engine) as log:
                        response = await client.get("/users")
                assert response.status_code == 200 and response.json() == expected_payload(db)
                counts[strategy] = log.count
        return counts

    assert asyncio.run(run()) == {"lazy": 31, "selectinload": 2}
    with pytest.raises(ValueError):
        make_blog_app(make_demo_db(users=1), "eager")  # type: ignore[arg-type]


def test_strict_mapping_raises_on_lazy_load() -> None:
    with make_demo_db(users=3, posts_per_user=2) as db, db.session() as session:
        user = session.scalars(select(StrictUser).order_by(StrictUser.id)).first()
        assert user is not None
        with count_queries(db.engine) as log, pytest.raises(sa_exc.InvalidRequestError, match="lazy='raise'"):
            _ = user.posts
        assert log.count == 0
        eager = session.scalars(select(StrictUser).options(selectinload(StrictUser.posts))).all()
        assert [len(u.posts) for u in eager] == [2, 2, 2]


def test_strategy_table_measures_slower_lazy_at_simulated_round_trip() -> None:
    with make_demo_db(users=60, posts_per_user=3) as db:
        rows = {r["strategy"]: r for r in strategy_table(db, 1.0, n=5, strategies=("lazy", "selectinload"))}
    assert rows["lazy"]["queries"] == 61 and rows["selectinload"]["queries"] == 2
    # 61 vs 2 simulated round trips of ≥ 1 ms each: a wide margin even on a busy machine
    assert rows["lazy"]["median ms"] > 3 * rows["selectinload"]["median ms"]


def test_bench_rows_name_their_database() -> None:
    name = dialect()
    rows = {r.effect: r for r in bench()}
    assert all(effect.startswith(f"[{name}] ") for effect in rows)
    assert rows[f"[{name}] GET /users queries, 100 users × 10 posts: lazy"].value == 101
    assert rows[f"[{name}] GET /users queries, same data: selectinload"].met is True
    assert rows[f"[{name}] nested queries, 50 users × 4 posts × 3 comments: lazy"].value == 1 + 50 + 200
    ratio = rows[f"[{name}] N+1 endpoint latency lazy / selectinload, + 1 ms simulated RTT"].value
    assert ratio > 2, ratio  # 101 vs 2 round trips of ≥ 1 ms; quiet machines measure 7–11×
    assert rows[f"[{name}] one query's floor (SELECT 1, median)"].value > 0


def test_simulated_latency_only_where_there_is_no_real_round_trip() -> None:
    with make_demo_db(users=2, posts_per_user=1) as db:
        label = database_label(db)
    if dialect() == "sqlite":
        assert simulated_rtt_ms() == 1.0 and simulated_rtt_ms(3) == 3 and label == "SQLite (in-process)"
    else:
        assert simulated_rtt_ms() == 0.0 and simulated_rtt_ms(3) == 0.0
        assert label.startswith("PostgreSQL ") and label.endswith(" on 127.0.0.1"), label


@pytest.mark.skipif(dialect() == "sqlite", reason="needs DATABASE_URL: a server's round trip against SQLite's")
def test_a_server_round_trip_costs_more_than_an_in_process_call() -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    embedded = create_engine("sqlite://", poolclass=StaticPool)
    try:
        with make_demo_db(users=2, posts_per_user=1) as db:
            ratios = []
            for _ in range(3):  # alternate the two engines: one ratio per round, the median of three
                ratios.append(round_trip_ms(db, n=100) / round_trip_ms(embedded, n=100))
    finally:
        embedded.dispose()
    # measured ~5–15× here (PostgreSQL over loopback vs in-process SQLite); 1.5× is a wide margin for noise
    assert sorted(ratios)[1] >= 1.5, ratios


@pytest.mark.skipif(dialect() == "sqlite", reason="needs DATABASE_URL: real round trips, no simulated latency")
def test_n_plus_one_costs_real_round_trips_on_a_server_without_simulated_latency() -> None:
    with make_demo_db(users=100, posts_per_user=3) as db:
        ratio, lazy_q, eager_q = asyncio.run(_endpoint_ratio(db, 0.0, n=15))
    assert (lazy_q, eager_q) == (101, 2)
    # 101 real round trips against 2, nothing simulated: measured ~3× through the endpoint; 1.3× is the margin
    assert ratio >= 1.3, ratio


# --- 02.fix-n-plus-one -------------------------------------------------------------------------------------

def _selectin(session: Session) -> Any:
    return session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id)).all()


FIX_RIGHT: dict[str, Callable[[DemoDB], FastAPI]] = {
    "selectinload (reference)": _model_app(_selectin),
    "joinedload + unique": _model_app(lambda s: s.scalars(
        select(User).options(joinedload(User.posts)).order_by(User.id)).unique().all()),
    "subqueryload": _model_app(lambda s: s.scalars(
        select(User).options(subqueryload(User.posts)).order_by(User.id)).all()),
    "explicit outer join + contains_eager": _model_app(lambda s: s.scalars(
        select(User).outerjoin(User.posts).options(contains_eager(User.posts))
        .order_by(User.id, Post.id)).unique().all()),
}


def _two_queries_by_hand(session: Session) -> list[dict[str, Any]]:
    users = session.execute(select(User.id, User.name).order_by(User.id)).all()
    posts: dict[int, list[dict[str, Any]]] = {u.id: [] for u in users}
    for p in session.execute(select(Post.user_id, Post.id, Post.title, Post.likes).order_by(Post.id)):
        posts[p.user_id].append({"id": p.id, "title": p.title, "likes": p.likes})
    return [{"id": u.id, "name": u.name, "posts": posts[u.id]} for u in users]


FIX_RIGHT["two Core queries, dicts by hand"] = _model_app(_two_queries_by_hand)


@pytest.mark.parametrize("name", list(FIX_RIGHT))
def test_fix_accepts_any_correct_strategy(name: str) -> None:
    _passes("02.fix-n-plus-one", FIX_RIGHT[name])


def test_fix_rejects_lazy_starter() -> None:
    _fails("02.fix-n-plus-one", _model_app(lambda s: s.scalars(select(User).order_by(User.id)).all()),
           "ran 4 queries", "expected at most 2")


def test_fix_rejects_answer_tuned_to_one_size() -> None:
    tuned = _model_app(lambda s: s.scalars(
        select(User).options(selectinload(User.posts)).order_by(User.id).limit(40)).all())
    _fails("02.fix-n-plus-one", tuned, "with 123 users", "it lists 40 users, expected 123")


def test_fix_rejects_joinedload_without_unique() -> None:
    _fails("02.fix-n-plus-one", _model_app(lambda s: s.scalars(
        select(User).options(joinedload(User.posts)).order_by(User.id)).all()), "raised InvalidRequestError",
        "unique()")


def test_fix_rejects_different_payload() -> None:
    def unordered(session: Session) -> Any:
        return session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id.desc())).all()

    _fails("02.fix-n-plus-one", _model_app(unordered), "different payload", "user #0")


def test_fix_rejects_hard_coded_payload() -> None:
    with make_demo_db(users=3, posts_per_user=2, seed=3) as db:
        frozen = expected_payload(db)
    _fails("02.fix-n-plus-one", _model_app(lambda s: frozen), "it lists 3 users, expected 40")


def test_fix_odd_answers_get_clear_messages() -> None:
    assert "None" in _fails("02.fix-n-plus-one", None)
    _fails("02.fix-n-plus-one", "make_app", "function")
    _fails("02.fix-n-plus-one", lambda db: None, "not a FastAPI app")

    def broken(db: DemoDB) -> FastAPI:
        raise RuntimeError("boom")

    _fails("02.fix-n-plus-one", broken, "RuntimeError", "boom")

    def not_done(db: DemoDB) -> FastAPI:
        raise NotImplementedError()

    _fails("02.fix-n-plus-one", not_done, "not answered yet")
    _fails("02.fix-n-plus-one", lambda db: FastAPI(), "answered 404")


# --- 02.nested ---------------------------------------------------------------------------------------------

NESTED_RIGHT: dict[str, Callable[[DemoDB], FastAPI]] = {
    "chained selectinload (reference)": _model_app(lambda s: s.scalars(
        select(User).options(selectinload(User.posts).selectinload(Post.comments)).order_by(User.id)).all(),
        nested=True),
    "chained joinedload + unique": _model_app(lambda s: s.scalars(
        select(User).options(joinedload(User.posts).joinedload(Post.comments)).order_by(User.id)).unique().all(),
        nested=True),
    "selectin then joined": _model_app(lambda s: s.scalars(
        select(User).options(selectinload(User.posts).joinedload(Post.comments)).order_by(User.id)).unique().all(),
        nested=True),
    "explicit joins + contains_eager": _model_app(lambda s: s.scalars(
        select(User).outerjoin(User.posts).outerjoin(Post.comments)
        .options(contains_eager(User.posts).contains_eager(Post.comments))
        .order_by(User.id, Post.id, Comment.id)).unique().all(), nested=True),
}


@pytest.mark.parametrize("name", list(NESTED_RIGHT))
def test_nested_accepts_any_correct_strategy(name: str) -> None:
    _passes("02.nested", NESTED_RIGHT[name])


def test_nested_rejects_fix_of_first_level_only() -> None:
    half = _model_app(lambda s: s.scalars(
        select(User).options(selectinload(User.posts)).order_by(User.id)).all(), nested=True)
    _fails("02.nested", half, "ran 8 queries", "expected at most 3", "3 users × 2 posts × 2 comments")


def test_nested_rejects_lazy() -> None:
    _fails("02.nested", _model_app(lambda s: s.scalars(select(User).order_by(User.id)).all(), nested=True),
           "ran 10 queries")


def test_nested_rejects_wrong_path_and_payload() -> None:
    _fails("02.nested", _model_app(_selectin), "answered 404")  # only GET /users exists
    # the right loading but the posts-only payload at the nested path: comments missing
    _fails("02.nested", _posts_only_at_nested_path(_selectin), "different payload")


# --- 02.raise-on-lazy --------------------------------------------------------------------------------------

def _strict_ref(session: Session) -> list[User]:
    return list(session.scalars(select(User).options(selectinload(User.posts), raiseload("*"))
                                .order_by(User.id)).all())


@pytest.mark.parametrize("answer", [
    _strict_ref,
    lambda s: s.scalars(select(User).options(joinedload(User.posts), raiseload("*")).order_by(User.id)).unique().all(),
    lambda s: s.scalars(select(User).options(selectinload(User.posts).raiseload("*")).order_by(User.id)).all(),
], ids=["selectin+raiseload(*)", "joined+raiseload(*)", "raiseload below posts"])
def test_raise_on_lazy_accepts(answer: Callable[[Session], Any]) -> None:
    _passes("02.raise-on-lazy", answer)


def test_raise_on_lazy_rejects_eager_without_raise() -> None:
    _fails("02.raise-on-lazy", _selectin, "reading post.comments (not loaded) ran 1 query without error")


def test_raise_on_lazy_rejects_raise_without_eager() -> None:
    _fails("02.raise-on-lazy", lambda s: s.scalars(select(User).options(raiseload("*")).order_by(User.id)).all(),
           "reading user.posts raised InvalidRequestError")


def test_raise_on_lazy_rejects_lazy_and_odd_answers() -> None:
    _fails("02.raise-on-lazy", lambda s: s.scalars(select(User).order_by(User.id)).all(),
           "reading every user's posts ran 5 more queries (expected 0)")
    _fails("02.raise-on-lazy", lambda s: 42, "returned int")
    _fails("02.raise-on-lazy", lambda s: [], "expected all 5 User objects")
    _fails("02.raise-on-lazy", 3, "function")

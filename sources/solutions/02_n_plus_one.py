# %% [markdown]
# # Exercise 02 · N+1 queries
#
# Work through `notebooks/02_n_plus_one.ipynb` first. Then write each answer in the cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it measured
# and gives a hint; run it again after a fix.
#
# The graders build fresh databases of **several sizes**, call your code, send real requests and count the
# queries at the driver: every statement that reaches the database is seen, whichever engine or connection sends
# it. Each size is requested twice, with rows changed in between, so the data must be read on every request.
# Any correct loading strategy passes; an answer tuned to one data size, or served from memory, does not.

# %%
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, raiseload, selectinload, subqueryload

from course_lib import *
from course_lib.lessons.l02_n_plus_one import UserWithPosts, UserWithPostsAndComments


# %% [markdown]
# ## 02.fix-n-plus-one
#
# `make_app(db)` below returns an app whose **`GET /users`** lists every user with their posts, through the
# `list[UserWithPosts]` response model. It works, but runs 1 + N queries. Change the statement so that the
# endpoint runs **at most 2 queries for any number of users**, with exactly the same JSON (users by id, each
# user's posts by id, as now).

# %%
def make_app(db: DemoDB) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users", response_model=list[UserWithPosts])
    def list_users(session: Session = Depends(get_db)) -> list[User]:
        ### BEGIN SOLUTION
        #> statement = select(User).order_by(User.id)  # 1 + N: the response model reads user.posts
        ...  # --8<-- "answers/l02_n_plus_one.py:fix-n-plus-one"
        ### END SOLUTION
        return session.scalars(statement).all()

    return app


# %%
check("02.fix-n-plus-one", make_app)


# %% [markdown]
# ## 02.nested
#
# One level deeper: **`GET /users/with-comments`** lists users → posts → each post's comments
# (`list[UserWithPostsAndComments]`). Make it run **at most 3 queries** (one per level) for any data size,
# with the same JSON.

# %%
def make_nested_app(db: DemoDB) -> FastAPI:
    app = FastAPI()
    get_db = db.dependency()

    @app.get("/users/with-comments", response_model=list[UserWithPostsAndComments])
    def list_users_with_comments(session: Session = Depends(get_db)) -> list[User]:
        ### BEGIN SOLUTION
        #> statement = select(User).order_by(User.id)  # 1 + users + posts queries
        ...  # --8<-- "answers/l02_n_plus_one.py:nested"
        ### END SOLUTION
        return session.scalars(statement).all()

    return app


# %%
check("02.nested", make_nested_app)


# %% [markdown]
# ## 02.raise-on-lazy
#
# The lesson loaded `User.posts` and made everything else raise. Now another shape: a **post feed**. Write
# `strict_posts(session)`: it returns **every post, ordered by id**, with its **author** (a many-to-one) and its
# **comments** (a collection) loaded in at most 3 queries, so that code reading `post.author.name` and
# `post.comments` afterwards sends **no** query; and a relationship nobody loaded, such as `post.author.posts`,
# must **raise** instead of querying. The grader reads them after your function returns and watches every
# statement that reaches the database.

# %%
def strict_posts(session: Session) -> list[Post]:
    ### BEGIN SOLUTION
    #> return list(session.scalars(select(Post).order_by(Post.id)).all())
    ...  # --8<-- "answers/l02_n_plus_one.py:raise-on-lazy"
    ### END SOLUTION


# %%
check("02.raise-on-lazy", strict_posts)

# %% [markdown]
# ## Try it yourself
#
# Your apps are ordinary FastAPI apps: count their queries on a database of your choice.

# %%
db = make_demo_db(users=30, posts_per_user=5, comments_per_post=2)
async with app_client(make_app(db)) as client:
    with count_queries(db.engine) as flat:
        flat_response = await client.get("/users")
async with app_client(make_nested_app(db)) as client:
    with count_queries(db.engine) as nested:
        nested_response = await client.get("/users/with-comments")
print(f"GET /users: {flat_response.status_code}, {flat.summary()}")
print(f"GET /users/with-comments: {nested_response.status_code}, {nested.summary()}")

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows these exercises ticked.

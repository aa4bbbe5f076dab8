"""Lesson 07 (settings): pydantic-settings the current way, a cached `get_settings` dependency, and the grader."""

from __future__ import annotations

import os
import secrets
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..bench_rows import BenchRow
from ..client import app_client
from ..grading import Checking, exercise
from ..timing import compare

__all__ = [
    "DatabaseSettings", "Settings", "get_settings", "make_settings_app", "settings_app", "env_folder",
    "legacy_config_warning", "validation_summary", "cached_vs_uncached", "cache_story", "bench",
]


# --------------------------------------------------------------------------------------------------
# The lesson's settings class
# --------------------------------------------------------------------------------------------------

class DatabaseSettings(BaseModel):
    """Nested settings: read from `APP_DB__POOL_SIZE` etc. thanks to `env_nested_delimiter="__"`."""

    pool_size: int = Field(default=5, ge=1)
    timeout_s: float = 2.0


class Settings(BaseSettings):
    """The demo app's configuration: environment variables (prefix `APP_`) beat `.env`, types are validated."""

    model_config = SettingsConfigDict(
        env_file=".env", env_prefix="APP_", env_nested_delimiter="__", extra="ignore",
    )

    database_url: str
    secret_key: SecretStr
    debug: bool = False
    allowed_origins: list[str] = ["http://localhost:3000"]
    trusted_hosts: Annotated[list[str], NoDecode] = ["localhost"]
    db: DatabaseSettings = DatabaseSettings()

    @field_validator("trusted_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """Accept `a.com,b.com` (NoDecode turns off the JSON parsing pydantic-settings does for lists)."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    """The settings, read and validated once per process; a FastAPI dependency tests can override."""
    return Settings()


def make_settings_app(settings_dependency: Any = get_settings) -> FastAPI:
    """An app whose lifespan validates the settings at startup and whose `/info` depends on them."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        # bad configuration fails here, before the first request (a test's override is respected)
        app.dependency_overrides.get(settings_dependency, settings_dependency)()
        yield

    app = FastAPI(title="Settings demo", lifespan=lifespan)

    @app.get("/info")
    def info(settings: Settings = Depends(settings_dependency)) -> dict[str, Any]:
        return {"debug": settings.debug, "origins": settings.allowed_origins, "pool_size": settings.db.pool_size}

    return app


settings_app = make_settings_app()


# --------------------------------------------------------------------------------------------------
# Helpers the notebook and the grader share
# --------------------------------------------------------------------------------------------------

_ENV_LOCK = threading.RLock()


@contextmanager
def env_folder(env: Mapping[str, str] | None = None, dotenv: str | None = None, *,
               clear_prefixes: tuple[str, ...] = ("APP_", "SHOP_"), chdir: bool = True) -> Iterator[Path]:
    """A temporary folder (the working directory inside the block) with an optional `.env`, and `env` set.

    Variables starting with `clear_prefixes` are hidden for the block, so nothing from your shell leaks in;
    everything is restored afterwards and the folder deleted. Never writes into the repository.
    """
    with _ENV_LOCK, tempfile.TemporaryDirectory(prefix="lab-settings-") as tmp:
        folder = Path(tmp)
        if dotenv is not None:
            (folder / ".env").write_text(dotenv, encoding="utf-8")
        saved = dict(os.environ)
        cwd = os.getcwd()
        try:
            for key in list(os.environ):
                if key.upper().startswith(tuple(p.upper() for p in clear_prefixes)):
                    del os.environ[key]
            os.environ.update(env or {})
            if chdir:
                os.chdir(folder)
            yield folder
        finally:
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(saved)


def legacy_config_warning() -> list[str]:
    """Define a settings class the article's way (inner `class Config`) and return the warnings it raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        class LegacySettings(BaseSettings):  # noqa: F841 - defining it is the point
            database_url: str = "sqlite://"

            class Config:
                env_file = ".env"

    return [f"{w.category.__name__}: {str(w.message).split('.')[0]}" for w in caught]


def validation_summary(error: ValidationError) -> list[str]:
    """One line per validation error: the field, the error type, the input (secrets never reach here)."""
    return [f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in error.errors()]


async def cached_vs_uncached(n: int = 200) -> Any:
    """Time `/info` with the settings re-read (and `.env` parsed) every request vs the `lru_cache` one."""
    dotenv = "APP_DATABASE_URL=sqlite:///demo.db\nAPP_SECRET_KEY=dev-secret\nAPP_DEBUG=true\n" + "".join(
        f"# comment line {i}\nUNRELATED_{i}=value{i}\n" for i in range(30))
    with env_folder(dotenv=dotenv):
        get_settings.cache_clear()
        uncached = make_settings_app(lambda: Settings())
        cached = make_settings_app(get_settings)
        async with app_client(uncached) as slow, app_client(cached) as fast:
            result = await compare({"Settings() every request": lambda: slow.get("/info"),
                                    "lru_cache get_settings": lambda: fast.get("/info")}, n=n, warmup=10)
        get_settings.cache_clear()
    return result


def cache_story(cached: Any) -> Any:
    """The prose under the cached-settings comparison: what re-reading the settings per request costs."""
    from IPython.display import Markdown

    slow, fast = cached["Settings() every request"], cached["lru_cache get_settings"]
    return Markdown(
        f"Re-reading the settings cost **{slow.median_ms - fast.median_ms:.2f} ms** per request on this machine: "
        f"**{slow.median_ms:.2f} ms** vs **{fast.median_ms:.2f} ms** median, **{cached.ratio:.1f}×**. The cache "
        "also means the configuration is read *once*, so it cannot change under a running process.")


def bench() -> list[BenchRow]:
    """Headline figure: an endpoint that re-reads its settings per request vs the cached dependency."""
    import asyncio

    result = asyncio.run(cached_vs_uncached(300))
    slow, fast = result["Settings() every request"], result["lru_cache get_settings"]
    return [
        BenchRow("/info with Settings() per request, median", slow.median_ms * 1000, "µs",
                 level="endpoint"),
        BenchRow("/info with lru_cache get_settings, median", fast.median_ms * 1000, "µs",
                 level="endpoint"),
        BenchRow("cached settings speed-up on /info (per-request Settings() / lru_cache)", result.ratio, "×",
                 level="endpoint"),
    ]


# --------------------------------------------------------------------------------------------------
# Exercise 07.settings-class
# --------------------------------------------------------------------------------------------------

_VALID_ENV = {"SHOP_DATABASE_URL": "postgresql://shop@db/shop", "SHOP_API_KEY": "{secret}"}


def _build(cls: type, checking: Checking, situation: str, advice: str = "") -> Any:
    """Instantiate the learner's class; a ValidationError here is a failure that says where."""
    try:
        return cls()
    except ValidationError as error:
        checking.fail(f"with {situation}, your Settings() raised a ValidationError it should not: "
                      f"{'; '.join(validation_summary(error))}.{' ' + advice if advice else ''}")
    except Exception as error:  # noqa: BLE001 - learner code
        checking.fail(f"with {situation}, your Settings() raised {type(error).__name__}: {error}")


def _expect_invalid(cls: type, checking: Checking, situation: str, field: str) -> str:
    """Instantiate and require a ValidationError that names `field`; return the error's full text."""
    try:
        value = cls()
    except ValidationError as error:
        lines = validation_summary(error)
        checking.expect(any(field in line.split(":")[0].lower() for line in lines),
                        f"with {situation}, your Settings() raised a ValidationError, but about "
                        f"{lines}, not about `{field}`.")
        return str(error)
    except Exception as error:  # noqa: BLE001 - learner code
        checking.fail(f"with {situation}, your Settings() raised {type(error).__name__}: {error}; "
                      "expected pydantic's ValidationError (let pydantic validate, do not parse by hand).")
    hidden = (f" A default for `{field}` (or a value read from os.environ when the class was defined) hides "
              "the missing variable." if "missing" in situation else "")
    checking.fail(f"with {situation}, your Settings() was created without error "
                  f"({_safe_repr(value)}); bad configuration must fail at startup with a ValidationError "
                  f"about `{field}`.{hidden}")
    return ""


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:160]
    except Exception as error:  # noqa: BLE001
        return f"<repr raised {type(error).__name__}>"


def _field(settings: Any, name: str, checking: Checking) -> Any:
    checking.expect(hasattr(settings, name), f"your settings have no field `{name}` (fields: "
                    f"{sorted(getattr(type(settings), 'model_fields', {}))}).")
    return getattr(settings, name)


@exercise(
    "07.settings-class",
    title="A Settings class to a spec",
    expects="a class `ShopSettings` (a pydantic-settings BaseSettings subclass), not an instance",
    hints=(
        "Read the failing case: which environment (or .env, or keyword argument) did the grader set, and which "
        "field came out wrong? Each row of the spec is one behaviour: where a value comes from, what beats what, "
        "what must be refused, what must never be shown.",
        "pydantic-settings does all of it from declarations: `model_config = SettingsConfigDict(...)` with "
        "`env_prefix`, `env_file` and `env_nested_delimiter` (not an inner `class Config`); a field without a "
        "default is required; `SecretStr` masks a value; `Field(ge=...)` or `PositiveInt` bounds a number; a "
        "nested `BaseModel` field reads `PREFIX_FIELD__SUB` variables.",
        "Shape: `class ShopSettings(BaseSettings): model_config = SettingsConfigDict(env_prefix=…, env_file=…, "
        "env_nested_delimiter=…)`, then one line per field: `database_url: str`, `api_key: …`, `debug: bool = …`, "
        "`workers: int = Field(…)`, `allowed_hosts: list[str] = …`, `cache: CacheSettings = …`. Read nothing from "
        "os.environ yourself, and keep no instance between calls.",
    ),
    timeout=60,
)
def check_settings_class(answer: Any, checking: Checking) -> str:
    """Feed environments and `.env` files to the class: values, precedence, errors, and the secret's masking."""
    if isinstance(answer, BaseSettings):
        checking.fail("you passed an instance (`ShopSettings()`); pass the class itself (`ShopSettings`), "
                      "the grader creates it under several environments.")
    checking.expect(isinstance(answer, type) and issubclass(answer, BaseSettings),
                    f"expected a class that subclasses pydantic_settings.BaseSettings, got {answer!r:.80}.")
    legacy = [k.__name__ for k in answer.__mro__ if isinstance(vars(k).get("Config"), type)
              and not k.__module__.startswith(("pydantic.", "pydantic_settings."))]
    checking.expect(not legacy, f"{legacy[0] if legacy else ''} is configured with an inner `class Config`: "
                    "pydantic 2 warns about it when the class is defined (PydanticDeprecatedSince20) and "
                    "pydantic 3 removes it. Move its settings into `model_config = SettingsConfigDict(...)`.")
    secret = "sk-" + secrets.token_hex(8)
    valid = {k: v.format(secret=secret) for k, v in _VALID_ENV.items()}
    cases = 0

    # 1. environment only: values, defaults, types
    with env_folder(valid):
        s = _build(answer, checking, "only SHOP_DATABASE_URL and SHOP_API_KEY set",
                   "Is env_prefix='SHOP_' in model_config, and does every other field have the spec's default?")
        checking.expect(_field(s, "database_url", checking) == valid["SHOP_DATABASE_URL"],
                        f"SHOP_DATABASE_URL={valid['SHOP_DATABASE_URL']!r} gave database_url="
                        f"{getattr(s, 'database_url', None)!r}: is env_prefix 'SHOP_'?")
        key = _field(s, "api_key", checking)
        checking.expect(isinstance(key, SecretStr), f"api_key is a {type(key).__name__}; make it a SecretStr "
                        "so it never shows in repr, str, logs or JSON.")
        checking.expect(key.get_secret_value() == secret, "api_key.get_secret_value() did not return "
                        "the value of SHOP_API_KEY.")
        defaults = {"debug": False, "workers": 1, "allowed_hosts": ["localhost"]}
        for name, expected in defaults.items():
            got = _field(s, name, checking)
            checking.expect(got == expected and type(got) is type(expected),
                            f"with nothing else set, {name} is {got!r}; the spec's default is {expected!r}.")
        cache = _field(s, "cache", checking)
        checking.expect(getattr(cache, "ttl_seconds", None) == 60,
                        f"with nothing set, cache.ttl_seconds is {getattr(cache, 'ttl_seconds', None)!r}; "
                        "expected the default 60.")
        other = _build(answer, checking, "the same environment, a second time")
        shared = [name for name in ("cache", "allowed_hosts")  # (one whole instance kept: told by check 3)
                  if other is not s and getattr(other, name, None) is getattr(s, name)]
        checking.expect(not shared, f"two ShopSettings() share one {' and one '.join(shared)} object: changing it in "
                        "one (a test lowering the TTL) changes the other. A default must be a fresh value per "
                        "instance: `cache: CacheSettings = CacheSettings()` or `Field(default_factory=CacheSettings)`, "
                        "never a module-level object handed to every instance.")
        cases += 1

    # 2. the secret never appears in repr, str, model_dump_json (nor in a log line built from them)
    with env_folder(valid):
        s = _build(answer, checking, "a valid environment")
        shown = {"repr": _safe_repr(s), "str": str(s), "model_dump_json()": s.model_dump_json(),
                 "f-string": f"{s}", "model_dump()": str(s.model_dump()),
                 "model_dump(mode='json')": str(s.model_dump(mode="json"))}
        leaks = [where for where, text in shown.items() if secret in text]
        checking.expect(not leaks, f"the secret api_key value appears in {', '.join(leaks)} of your settings: "
                        "a SecretStr field shows '**********' instead.")
        cases += 1

    # 3. values from environment variables, with types converted (a new object for a new environment)
    env = {**valid, "SHOP_DEBUG": "true", "SHOP_WORKERS": "4",
           "SHOP_ALLOWED_HOSTS": '["shop.example", "api.shop.example"]', "SHOP_CACHE__TTL_SECONDS": "5"}
    with env_folder(env):
        earlier = s
        s = _build(answer, checking, f"environment {sorted(env)}")
        checking.expect(s is not earlier, "ShopSettings() returned the very object it returned under an earlier, "
                        "different environment: the class keeps one instance and never reads the environment "
                        "again. Let every ShopSettings() read its sources; cache in a `get_settings()` function "
                        "(lru_cache) if you want one per process, where a test can clear it.")
        checking.expect(s.debug is True, f"SHOP_DEBUG=true gave debug={s.debug!r}; expected the bool True.")
        checking.expect(s.workers == 4 and isinstance(s.workers, int),
                        f"SHOP_WORKERS=4 gave workers={s.workers!r}; expected the int 4.")
        checking.expect(s.allowed_hosts == ["shop.example", "api.shop.example"],
                        f"SHOP_ALLOWED_HOSTS='[\"shop.example\", \"api.shop.example\"]' gave allowed_hosts="
                        f"{s.allowed_hosts!r}; a list[str] field reads a JSON list from the environment.")
        checking.expect(getattr(s.cache, "ttl_seconds", None) == 5,
                        f"SHOP_CACHE__TTL_SECONDS=5 gave cache.ttl_seconds={getattr(s.cache, 'ttl_seconds', None)!r}"
                        "; nested settings need env_nested_delimiter='__'.")
        cases += 1

    # 4. .env only, read from the working directory
    dotenv = (f"SHOP_DATABASE_URL=sqlite:///from-dotenv.db\nSHOP_API_KEY={secret}\nSHOP_WORKERS=3\n"
              "SHOP_DEBUG=1\n")
    with env_folder({}, dotenv):
        s = _build(answer, checking, "only a .env file in the working directory (SHOP_DATABASE_URL, SHOP_API_KEY, "
                   "SHOP_WORKERS=3, SHOP_DEBUG=1 in it)", "Is env_file='.env' in model_config?")
        checking.expect(s.database_url == "sqlite:///from-dotenv.db" and s.workers == 3 and s.debug is True,
                        f"a .env with SHOP_DATABASE_URL=sqlite:///from-dotenv.db, SHOP_WORKERS=3, SHOP_DEBUG=1 "
                        f"gave database_url={s.database_url!r}, workers={s.workers!r}, debug={s.debug!r}; "
                        "is env_file='.env' in model_config?")
        cases += 1

    # 5. environment beats .env
    with env_folder({"SHOP_WORKERS": "8", "SHOP_DATABASE_URL": "postgresql://env/shop"}, dotenv):
        s = _build(answer, checking, "SHOP_WORKERS=8 in the environment and SHOP_WORKERS=3 in .env")
        checking.expect(s.workers == 8 and s.database_url == "postgresql://env/shop",
                        f"with SHOP_WORKERS=8 in the environment and 3 in .env you read workers={s.workers!r} "
                        f"(database_url={s.database_url!r}); environment variables must win over .env.")
        cases += 1

    # 6. keyword arguments beat the environment and .env; `_env_file=None` ignores .env (how tests override)
    with env_folder({**valid, "SHOP_WORKERS": "8"}, dotenv):
        try:
            s = answer(workers=6, debug=False, _env_file=None)
        except Exception as error:  # noqa: BLE001 - learner code
            checking.fail(f"ShopSettings(workers=6, debug=False, _env_file=None), the way a test overrides values, "
                          f"raised {type(error).__name__}: {str(error)[:200]}. Keep BaseSettings' own __init__.")
        checking.expect(s.workers == 6 and s.debug is False and s.database_url == valid["SHOP_DATABASE_URL"],
                        f"with SHOP_WORKERS=8 in the environment and SHOP_DEBUG=1 in .env, ShopSettings(workers=6, "
                        f"debug=False, _env_file=None) gave workers={s.workers!r}, debug={s.debug!r}, database_url="
                        f"{s.database_url!r}: keyword arguments must beat the environment (that is how a test "
                        "overrides one value), and _env_file=None must skip the .env.")
        cases += 1

    # 7. missing required values, wrong types: a ValidationError naming the field
    with env_folder({"SHOP_API_KEY": secret}):
        _expect_invalid(answer, checking, "SHOP_DATABASE_URL missing", "database_url")
    with env_folder({"SHOP_DATABASE_URL": "sqlite://"}):
        _expect_invalid(answer, checking, "SHOP_API_KEY missing", "api_key")
    for name, bad in (("workers", "many"), ("workers", "0"), ("debug", "maybe"), ("cache", None)):
        variable = "SHOP_CACHE__TTL_SECONDS" if name == "cache" else f"SHOP_{name.upper()}"
        value = "soon" if bad is None else bad
        with env_folder({**valid, variable: value}):
            error_text = _expect_invalid(answer, checking, f"{variable}={value!r}", name)
            checking.expect(secret not in error_text,
                            f"with {variable}={value!r} the ValidationError's text (what a crash log shows) "
                            "contains the API key: an error message that quotes the environment or the raw "
                            "input carries secrets into crash logs. Quote only the field's own value (pydantic's "
                            "own errors, e.g. from Field(ge=1), already do).")
        cases += 1
    checking.record("environments", cases + 2)
    return f"{cases + 2} environments: values, precedence, errors and a masked secret all as specified"

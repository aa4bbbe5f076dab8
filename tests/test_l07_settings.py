"""Lesson 07: the settings class and helpers behave as taught; the grader passes right answers and fails wrong ones."""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Any

import pytest
from answers.l07_settings import ShopSettings
from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from course_lib.client import app_client
from course_lib.grading import grade, hint
from course_lib.lessons.l07_settings import (
    Settings,
    cached_vs_uncached,
    env_folder,
    get_settings,
    legacy_config_warning,
    make_settings_app,
)

EXERCISE = "07.settings-class"


# ---------------------------------------------------------------- answers

class CacheSettings(BaseModel):
    """Nested cache settings of the spec."""

    ttl_seconds: int = 60


Reference = ShopSettings  # the solution (sources/answers/l07_settings.py, spliced into solutions/07)


class CacheAsSettings(BaseSettings):
    """Nested part written as its own BaseSettings (no env reading of its own: defaults only)."""

    model_config = SettingsConfigDict(env_prefix="UNUSED_NESTED_")
    ttl_seconds: Annotated[int, Field(strict=False)] = 60


class OtherWay(BaseSettings):
    """Right, written differently: tuple env_file, PositiveInt, default_factory, explicit case-insensitivity."""

    model_config = SettingsConfigDict(env_prefix="shop_", env_file=(".env",), env_nested_delimiter="__",
                                      case_sensitive=False, extra="ignore", env_file_encoding="utf-8")

    database_url: str = Field(validation_alias=AliasChoices("shop_database_url"))
    api_key: SecretStr
    debug: bool = Field(default=False)
    workers: PositiveInt = 1
    allowed_hosts: list[str] = Field(default_factory=lambda: ["localhost"])
    cache: CacheAsSettings = Field(default_factory=CacheAsSettings)


class LeakySecret(Reference):
    """Wrong: the key is a plain str, so it shows in repr and JSON."""

    api_key: str  # type: ignore[assignment]


class NoDotenv(BaseSettings):
    """Wrong: forgets env_file, so a local .env is ignored (standalone: a subclass would inherit model_config)."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_nested_delimiter="__")

    database_url: str
    api_key: SecretStr
    debug: bool = False
    workers: int = Field(default=1, ge=1)
    allowed_hosts: list[str] = ["localhost"]
    cache: CacheSettings = CacheSettings()


class NoValidation(Reference):
    """Wrong: `workers` accepts anything."""

    workers: Any = 1


class DefaultedUrl(Reference):
    """Wrong: a default for a required value, so a missing variable goes unnoticed."""

    database_url: str = "sqlite:///local.db"


class NoNesting(BaseSettings):
    """Wrong: no env_nested_delimiter, so SHOP_CACHE__TTL_SECONDS is ignored."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env")

    database_url: str
    api_key: SecretStr
    debug: bool = False
    workers: int = Field(default=1, ge=1)
    allowed_hosts: list[str] = ["localhost"]
    cache: CacheSettings = CacheSettings()


class ChattyValidator(Reference):
    """Wrong: its error message quotes the whole environment, so the API key lands in the crash log."""

    @field_validator("workers", mode="before")
    @classmethod
    def _explain(cls, value: Any) -> Any:
        if not str(value).strip().isdigit():
            raise ValueError(f"workers={value!r} is not a number (environment: {dict(os.environ)})")
        return value


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydantic warns when the class is defined: that is the point

    class LegacyConfig(BaseSettings):
        """Wrong: the article's inner `class Config` (deprecated in pydantic 2, gone in 3), though it works today."""

        database_url: str
        api_key: SecretStr
        debug: bool = False
        workers: int = Field(default=1, ge=1)
        allowed_hosts: list[str] = ["localhost"]
        cache: CacheSettings = CacheSettings()

        class Config:
            env_prefix = "SHOP_"
            env_file = ".env"
            env_nested_delimiter = "__"


os.environ["SHOP_DATABASE_URL"] = "postgresql://from-the-kernel/shop"


class ImportTimeEnv(Reference):
    """Wrong: reads os.environ once, when the class is defined; later a missing variable goes unnoticed."""

    database_url: str = os.environ["SHOP_DATABASE_URL"]


del os.environ["SHOP_DATABASE_URL"]
_ONE: dict[str, Any] = {}


class Singleton(Reference):
    """Wrong: keeps its first instance and hands it out again, whatever the environment says now."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if "it" not in _ONE:
            _ONE["it"] = super().__new__(cls)
        return _ONE["it"]

    def __init__(self, **values: Any) -> None:
        if not getattr(self, "_ready", False):
            super().__init__(**values)
            object.__setattr__(self, "_ready", True)


class PythonDumpLeak(Reference):
    """Wrong: a serializer that reveals the key in model_dump() (what `logger.info(settings.model_dump())` shows)."""

    @field_serializer("api_key", when_used="unless-none")
    def _reveal(self, value: SecretStr, info: Any) -> Any:
        return "**********" if info.mode == "json" else value.get_secret_value()


class EnvBeatsKeywords(Reference):
    """Wrong: reorders the sources so the environment beats keyword arguments (a test cannot override)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> Any:
        return env_settings, init_settings, dotenv_settings, file_secret_settings


class ConstrainedTypes(BaseSettings):
    """Right, written another way: Annotated constraints, a dict-style nested default, an explicit source order."""

    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", env_nested_delimiter="__")

    database_url: Annotated[str, Field(min_length=1)]
    api_key: SecretStr
    debug: bool = False
    workers: Annotated[int, Field(ge=1)] = 1
    allowed_hosts: list[str] = Field(default=["localhost"])
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings.model_validate({}))

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                   dotenv_settings: Any, file_secret_settings: Any) -> Any:
        return init_settings, env_settings, dotenv_settings, file_secret_settings


# ---------------------------------------------------------------- grader

@pytest.mark.parametrize("answer", [Reference, OtherWay, ConstrainedTypes],
                         ids=["reference", "other-way", "constrained-types"])
def test_right_answers_pass(answer: type) -> None:
    result = grade(EXERCISE, answer)
    assert result.passed, result.message
    assert result.figures["environments"] == 12


@pytest.mark.parametrize(("answer", "measured"), [
    (LeakySecret, "api_key is a str"),
    (NoDotenv, "env_file='.env'"),
    (NoValidation, "SHOP_WORKERS"),
    (DefaultedUrl, "SHOP_DATABASE_URL missing"),
    (NoNesting, "SHOP_CACHE__TTL_SECONDS=5"),
    (ChattyValidator, "contains the API key"),
    (LegacyConfig, "configured with an inner `class Config`"),
    (ImportTimeEnv, "a value read from os.environ when the class was defined"),
    (Singleton, "returned the very object it returned under an earlier, different environment"),
    (PythonDumpLeak, "appears in model_dump() of"),
    (EnvBeatsKeywords, "keyword arguments must beat the environment"),
], ids=["leaky-secret", "no-dotenv", "no-validation", "defaulted-required", "no-nesting", "chatty-validator",
        "legacy-class-config", "import-time-environ", "singleton", "python-dump-leak", "env-beats-keywords"])
def test_wrong_answers_fail_and_say_what_was_measured(answer: type, measured: str) -> None:
    result = grade(EXERCISE, answer)
    assert not result.passed
    assert measured in result.message, result.message
    assert result.hint


def test_secret_masked_in_str_but_not_repr_only() -> None:
    """A class that masks repr but dumps the secret in JSON still fails on model_dump_json."""

    class JsonLeak(Reference):
        def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
            return json.dumps({"api_key": self.api_key.get_secret_value()})

    result = grade(EXERCISE, JsonLeak)
    assert not result.passed and "model_dump_json()" in result.message, result.message


@pytest.mark.parametrize("odd", [None, 42, "ShopSettings", Reference.__new__, lambda: Reference])
def test_odd_answers_get_a_clear_message(odd: Any) -> None:
    result = grade(EXERCISE, odd)
    assert not result.passed
    assert "class" in result.message or "None" in result.message, result.message


def test_an_instance_is_refused_with_advice() -> None:
    with env_folder({"SHOP_DATABASE_URL": "sqlite://", "SHOP_API_KEY": "k"}):
        instance = Reference()
    result = grade(EXERCISE, instance)
    assert not result.passed and "pass the class itself" in result.message


def test_a_raising_class_fails_clearly() -> None:
    class Broken(Reference):
        def __init__(self, **values: Any) -> None:
            raise RuntimeError("boom at startup")

    result = grade(EXERCISE, Broken)
    assert not result.passed and "RuntimeError" in result.message


# ---------------------------------------------------------------- helpers and lesson claims

def test_env_folder_isolates_and_restores() -> None:
    os.environ["APP_DEBUG"] = "from-the-shell"
    cwd = os.getcwd()
    try:
        with env_folder({"APP_DATABASE_URL": "x"}, "APP_SECRET_KEY=k\n") as folder:
            assert Path.cwd() == folder.resolve() or Path.cwd().resolve() == folder.resolve()
            assert (folder / ".env").read_text() == "APP_SECRET_KEY=k\n"
            assert "APP_DEBUG" not in os.environ and os.environ["APP_DATABASE_URL"] == "x"
        assert os.environ["APP_DEBUG"] == "from-the-shell" and "APP_DATABASE_URL" not in os.environ
        assert os.getcwd() == cwd and not folder.exists()
    finally:
        del os.environ["APP_DEBUG"]


def test_env_beats_dotenv_and_types_are_converted() -> None:
    with env_folder({"APP_DEBUG": "true"}, "APP_DATABASE_URL=a\nAPP_SECRET_KEY=k\nAPP_DEBUG=false\nAPP_DB__POOL_SIZE=3\n"):
        settings = Settings()
    assert settings.debug is True and settings.db.pool_size == 3 and settings.database_url == "a"


def test_lists_json_and_comma_separated() -> None:
    with env_folder({"APP_DATABASE_URL": "a", "APP_SECRET_KEY": "k", "APP_ALLOWED_ORIGINS": '["x", "y"]',
                     "APP_TRUSTED_HOSTS": "a.com, b.com"}):
        settings = Settings()
    assert settings.allowed_origins == ["x", "y"] and settings.trusted_hosts == ["a.com", "b.com"]


def test_bad_configuration_names_every_field() -> None:
    with env_folder({"APP_SECRET_KEY": "k", "APP_DEBUG": "maybe"}), pytest.raises(ValidationError) as info:
        Settings()
    assert {e["loc"][0] for e in info.value.errors()} == {"database_url", "debug"}


def test_legacy_config_warns() -> None:
    warnings = legacy_config_warning()
    assert warnings and warnings[0].startswith("PydanticDeprecatedSince20")


def test_override_makes_startup_succeed_without_environment() -> None:
    async def run() -> Any:
        app = make_settings_app()
        app.dependency_overrides[get_settings] = lambda: Settings(database_url="x", secret_key="t", _env_file=None)
        with env_folder({}):
            async with app_client(app) as client:
                return (await client.get("/info")).json()

    assert asyncio.run(run()) == {"debug": False, "origins": ["http://localhost:3000"], "pool_size": 5}


def test_missing_setting_fails_at_startup_in_process() -> None:
    async def run() -> None:
        get_settings.cache_clear()
        with env_folder({"APP_DATABASE_URL": "x"}):
            async with app_client(make_settings_app()):
                pass

    with pytest.raises(ValidationError):
        asyncio.run(run())
    get_settings.cache_clear()


def test_cached_settings_are_faster_than_rereading() -> None:
    result = asyncio.run(cached_vs_uncached(n=60))
    assert result.ratio > 1.2, repr(result)  # measured 5–7× here; a ratio, with a wide margin


def test_hints_progress_and_never_give_the_answer() -> None:
    """Three levels: read the failing case, the tools, a shape with gaps (never the finished class)."""
    hints = [hint(EXERCISE, level) for level in (1, 2, 3)]
    assert len(set(hints)) == 3
    assert "env_prefix='SHOP_'" not in " ".join(hints) and "…" in hints[2]


def test_cache_story_quotes_the_measured_comparison() -> None:
    """The prose under the comparison is built from it."""
    from course_lib.lessons.l07_settings import cache_story

    result = asyncio.run(cached_vs_uncached(n=30))
    story = cache_story(result).data
    assert f"**{result.ratio:.1f}×**" in story
    assert f"**{result['lru_cache get_settings'].median_ms:.2f} ms**" in story


def test_a_nested_default_shared_by_every_instance_fails():
    """One module-level CacheSettings handed to every instance: changing one instance's TTL changes them all."""
    from pydantic import Field

    one_cache = CacheSettings()

    class SharedNested(Reference):
        cache: CacheSettings = Field(default_factory=lambda: one_cache)

    result = grade("07.settings-class", SharedNested, record=False)
    assert not result.passed and "share one cache object" in result.message, result.message

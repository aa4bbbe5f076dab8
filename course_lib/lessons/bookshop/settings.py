"""The bookshop's configuration, read from `BOOKSHOP_*` environment variables (pydantic-settings)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from .rates import DEMO_API_KEY


class BookshopSettings(BaseSettings):
    """The bookshop's configuration, from `BOOKSHOP_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="BOOKSHOP_", extra="ignore")

    rates_api_key: SecretStr = SecretStr(DEMO_API_KEY)
    cache_ttl_s: float = 60.0  # the longest anything may stay cached

"""Reference answer of 07.settings-class: spliced into solutions/07_settings.ipynb by the build, imported by tests."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CacheSettings(BaseModel):
    """The nested cache settings of the spec (given to the learner in the solutions notebook)."""

    ttl_seconds: int = 60


class ShopSettings(BaseSettings):
    """The shop's settings: SHOP_ environment variables, then .env, then defaults."""

    # --8<-- [start:answer]
    model_config = SettingsConfigDict(env_prefix="SHOP_", env_file=".env", env_nested_delimiter="__")

    database_url: str
    api_key: SecretStr
    debug: bool = False
    workers: int = Field(default=1, ge=1)
    allowed_hosts: list[str] = ["localhost"]
    cache: CacheSettings = CacheSettings()
    # --8<-- [end:answer]

# %% [markdown]
# # Exercise 07 · A Settings class to a spec
#
# Work through `notebooks/07_settings.ipynb` first. Then write your answer in the cell marked
# `# YOUR CODE HERE` and run the `check(...)` cell below it. A failing check tells you what it
# measured and gives a hint; run it again after a fix.

# %%
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from course_lib import *
from course_lib.lessons.l07_settings import env_folder, validation_summary


# %% [markdown]
# ## 07.settings-class
#
# A shop service is configured by environment variables starting with **`SHOP_`**, and by a **`.env`**
# file in its working directory for local development. Write the class `ShopSettings`:
#
# | field | type | default | from the environment |
# | --- | --- | --- | --- |
# | `database_url` | `str` | **required** | `SHOP_DATABASE_URL` |
# | `api_key` | secret string, never shown | **required** | `SHOP_API_KEY` |
# | `debug` | `bool` | `False` | `SHOP_DEBUG=true` |
# | `workers` | `int`, at least 1 | `1` | `SHOP_WORKERS=4` (`0` or `many` is an error) |
# | `allowed_hosts` | `list[str]` | `["localhost"]` | `SHOP_ALLOWED_HOSTS='["a.com", "b.com"]'` |
# | `cache` | nested, with `ttl_seconds: int = 60` | | `SHOP_CACHE__TTL_SECONDS=5` |
#
# Environment variables beat `.env`, and keyword arguments beat both (`ShopSettings(workers=2,
# _env_file=None)` is how a test overrides one value). A missing required value or a wrong type raises
# pydantic's `ValidationError` naming the field. The key never appears in `repr`, `str`, `model_dump()` or
# `model_dump_json()`. Configure the class the current way (`model_config`, not an inner `class Config`), and
# let every `ShopSettings()` read its sources afresh: no value read from `os.environ` by hand, no instance kept.
#
# Pass the **class** to `check` (the grader creates it under twelve environments, in temporary folders).

# %%
class CacheSettings(BaseModel):
    ttl_seconds: int = 60


class ShopSettings(BaseSettings):
    ### BEGIN SOLUTION
    #> pass  # replace with model_config and the six fields
    ...  # --8<-- "answers/l07_settings.py:answer"
    ### END SOLUTION


# %%
check("07.settings-class", ShopSettings)

# %% [markdown]
# ## Try it yourself
#
# Your class is ordinary pydantic: build it under an environment of your choice and read the errors.

# %%
with env_folder({"SHOP_DATABASE_URL": "sqlite://", "SHOP_API_KEY": "k", "SHOP_WORKERS": "0"}):
    try:
        print(ShopSettings())
    except ValidationError as error:
        print(validation_summary(error))

# %% [markdown]
# Done? `python -m course_lib progress` in a terminal shows this exercise ticked. Next lesson:
# `notebooks/08_logging.ipynb`.

"""Pintor's settings: environment variables, then a `.env` file, then these defaults.
`.env.example` lists every one of them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# Discord's own endpoints (bot.discord_endpoints points discord.py at these settings). Here, not
# there, so that reading the settings (every `pintor` command does) does not import discord.py.
DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Discord
    discord_token: SecretStr | None = None
    discord_guild_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    discord_api_base: str = DEFAULT_API_BASE
    discord_gateway_url: str = DEFAULT_GATEWAY_URL
    pintor_allow_dms: bool = False
    pintor_buttons_author_only: bool = False  # buttons answer only the member who asked

    # Storage
    database_url: str = "sqlite+aiosqlite:///./data/pintor.db"
    pintor_data_dir: Path = Path("./data")

    # Generation
    pintor_models: Path | None = None
    pintor_default_model: str | None = None
    pintor_device: str = "auto"
    pintor_offload: bool | None = None  # unset: offload on GPUs with less than 10 GB
    pintor_max_loaded_models: int = 1
    # most images in one pipeline call, several members' jobs together (unset: per model family
    # and device, generation.batching.DEFAULT_BATCH_IMAGES: 16 for SD and 8 for SDXL on CUDA,
    # one job of 4 on a CPU; 4 or less: one job at a time)
    pintor_batch_images: int | None = None
    pintor_queue_url: str = ""  # empty: the embedded queue with one local worker process
    pintor_log_level: str = "INFO"

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _split_ids(cls, value):
        if isinstance(value, str):
            return [int(part) for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("pintor_models", "pintor_offload", "pintor_default_model", "pintor_batch_images",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

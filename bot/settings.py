"""Pintor's settings: environment variables, then a `.env` file, then these defaults.
`.env.example` lists every one of them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from generation.registry import Registry

# Discord's own endpoints (bot.discord_endpoints points discord.py at these settings). Here, not
# there, so that reading the settings (every `pintor` command does) does not import discord.py.
DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"

# generation.devices.Offload's values (not imported: it imports torch)
OFFLOAD_MODES = ("none", "model", "sequential", "auto")
# torch.compile's modes (torch.compile(mode=…))
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
    pintor_dtype: str = "auto"  # auto, fp16, bf16, fp32 (auto: bf16 where the GPU has it, else fp16; fp32 on CPUs)
    pintor_offload: str = "auto"  # none, model, sequential, auto (by free GPU memory; true/false: model/none)
    pintor_channels_last: bool | None = None  # unset: on CUDA
    pintor_compile: str | None = None  # off; on (= default), reduce-overhead, max-autotune…: torch.compile mode
    pintor_vae_tiling_pixels: int = 1536 * 1536  # larger pictures are decoded in tiles
    pintor_max_loaded_models: int = 1
    pintor_queue_url: str = ""  # empty: the embedded queue with one local worker process; redis://…: Redis
    pintor_local_workers: int = 1  # with a Redis queue: worker processes `pintor run` starts beside the bot
    pintor_worker_name: str = ""  # `pintor worker`'s name in /info (empty: host name and process id)
    # most images in one pipeline call, several members' jobs together (unset: per model family
    # and device, the family records' batch_images_cuda (generation/families.py): 16 for SD and 8 for SDXL on CUDA,
    # one job of 4 on a CPU; 4 or less: one job at a time)
    pintor_batch_images: int | None = None
    pintor_log_level: str = "INFO"

    # Outbound fetches (bot.downloads): attachments and image prompts' links come only from these
    # hosts, over https at public addresses; `local` hosts also over http at any address (the
    # Discord emulator in tests, a mirror on your own network; never a host members control)
    pintor_fetch_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["cdn.discordapp.com", "media.discordapp.net"])
    pintor_fetch_local_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Remote models (family "openai" in the registry; generation/remote.py): the API key (the
    # openai client's own variable; PINTOR_OPENAI_API_KEY wins where both are set), the API's base
    # URL (unset: https://api.openai.com/v1; a registry entry's base_url wins), the time one
    # request may take, and how often a rate limit or server error is tried again
    openai_api_key: SecretStr | None = None
    pintor_openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    pintor_remote_timeout_s: float = Field(default=120.0, gt=0)
    pintor_remote_max_retries: int = Field(default=2, ge=0, le=10)

    # Metrics and health (bot.metrics): /metrics (Prometheus) and /healthz on this port; unset:
    # not served. Loopback by default: set 0.0.0.0 only where the port is not reachable from outside.
    pintor_metrics_port: int | None = None
    pintor_metrics_host: str = "127.0.0.1"

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _split_ids(cls, value):
        if isinstance(value, str):
            return [int(part) for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("pintor_fetch_hosts", "pintor_fetch_local_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value):
        if isinstance(value, str):
            return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]
        return value

    @field_validator("pintor_models", "pintor_default_model", "pintor_channels_last", "pintor_metrics_port",
                     "pintor_batch_images", "openai_api_key", "pintor_openai_api_key", "openai_base_url",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value):
        return None if value == "" else value

    @field_validator("pintor_offload", mode="before")
    @classmethod
    def _offload_mode(cls, value):
        # true/false: the yes/no setting of earlier versions (true was model offloading)
        text = str(value).strip().lower() if value is not None else ""
        text = {"": "auto", "true": "model", "1": "model", "yes": "model",
                "false": "none", "0": "none", "no": "none"}.get(text, text)
        if text not in OFFLOAD_MODES:
            raise ValueError(f"PINTOR_OFFLOAD must be one of {', '.join(OFFLOAD_MODES)}, not '{value}'")
        return text

    @field_validator("pintor_compile", mode="before")
    @classmethod
    def _compile_mode(cls, value):
        text = str(value).strip().lower() if value is not None else ""
        if text in ("", "off", "false", "0", "no"):
            return None
        text = "default" if text in ("on", "true", "1", "yes") else text
        if text not in COMPILE_MODES:
            raise ValueError(f"PINTOR_COMPILE must be off, on or one of {', '.join(COMPILE_MODES)}, not '{value}'")
        return text

    @field_validator("pintor_dtype", mode="before")
    @classmethod
    def _dtype(cls, value):
        text = str(value).strip().lower() if value is not None else ""
        text = text or "auto"
        if text not in ("auto", "fp16", "bf16", "fp32"):
            raise ValueError(f"PINTOR_DTYPE must be auto, fp16, bf16 or fp32, not '{value}'")
        return text

    def openai_key(self) -> str | None:
        """The OpenAI API key for remote models: PINTOR_OPENAI_API_KEY, else OPENAI_API_KEY;
        None when neither is set. Handed to the worker only, never logged or shown."""
        key = self.pintor_openai_api_key or self.openai_api_key
        return key.get_secret_value() if key is not None else None

    @property
    def pictures_dir(self) -> Path:
        """The file store's folder (generation.files.FileStore): results, uploads, inputs."""
        return self.pintor_data_dir / "images"


def registry_from(settings: Settings) -> Registry:
    """The model registry `settings` configure (PINTOR_MODELS, or the built-in one if unset, with
    PINTOR_DEFAULT_MODEL), read now; generation.registry's errors for a file that is wrong."""
    from generation.registry import load_registry

    return load_registry(settings.pintor_models, settings.pintor_default_model)

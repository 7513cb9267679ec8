"""Pictures made by a provider's API: OpenAI's image models (DALL·E 2 and 3, gpt-image-1).

The worker calls this instead of a diffusers pipeline for a model of a remote family
(a `remote` family: generation.families), with the official `openai` client. Nothing here knows
about queues, databases or Discord; the API key is handed in (only bot/ reads settings).

What a member hears when the provider refuses is said here (`RemoteRefusal`), in Pintor's own
words: never the provider's message as such (a 401's message quotes part of the key), the key,
or the request id.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from generation.imaging import flatten_to_rgb, png_bytes
from generation.prompt import plain_text, positive_parts
from generation.registry import ModelSpec, RemoteLimits, nearest_size
from generation.request import JobKind, Request

if TYPE_CHECKING:
    import openai

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0  # per request: gpt-image-1 takes up to a minute for one picture
DEFAULT_MAX_RETRIES = 2  # the openai client's own default: 429 and 5xx are tried this many times more
MAX_PICTURE_BYTES = 64 * 1024 * 1024  # a picture the provider sends (a 1792×1024 PNG is ~3 MB)
# the loggers that write request ids at DEBUG (openai; httpcore2 logs every response header) or URLs with
# signatures (the HTTP clients)
PROVIDER_LOGGERS = ("openai", "httpx2", "httpcore2", "httpx", "httpcore")


class RemoteRefusal(Exception):
    """The provider made no picture; str(err) is for the member (no key, no request id)."""


@dataclass(frozen=True)
class RemoteSettings:
    """How the worker reaches the provider: `api_key` (None: not configured), `base_url` (None:
    the client's default, https://api.openai.com/v1), per-request `timeout_s`, and `max_retries`
    (the client's: rate limits and server errors are tried again that many times, with its
    backoff and the provider's retry-after). The key is kept out of repr."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES


def quiet_provider_logs() -> None:
    """Keep the provider's client libraries at WARNING: at DEBUG openai logs each response's
    request id, and the HTTP client each URL (a picture's URL carries a signature)."""
    for name in PROVIDER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def generate(spec: ModelSpec, request: Request, settings: RemoteSettings, *,
             on_image: Callable[[int, int, Image.Image], None] = lambda done, total, latest: None,
             should_stop: Callable[[], bool] = lambda: False,
             notices: list[str] | None = None) -> list[Image.Image]:
    """The request's pictures from the provider: `request.count` RGB images, at the supported
    size nearest the request's (generation.registry.nearest_size).

    A grid from a prompt is one request of n = count where the model allows it (dall-e-2,
    gpt-image-1), else `count` requests of one (dall-e-3); a variation (V) is the model's
    variations call (dall-e-2) or its edits call with the prompt (gpt-image-1) on
    `request.init_image`. `on_image(done, total, latest picture)` is called after each request;
    `should_stop()` is asked before each one, and a True answer returns the pictures so far.
    The picture a variation sends is fitted to the call's documented limits first
    (`input_picture`); what that changed is appended to `notices`, for the member.

    Raises RemoteRefusal (its text for the member) when the key is missing, the model has no
    call for this kind of job, or the provider refuses or fails (content policy, bad key,
    quota, rate limit after the client's retries, server error, timeout, unreadable picture).
    """
    limits = spec.remote_limits
    if limits is None or spec.model is None:
        raise ValueError(f"{spec.name} is not a remote model")
    if not settings.api_key:
        raise RemoteRefusal(f"{spec.name} needs Pintor's operator to set an OpenAI API key (OPENAI_API_KEY).")
    width, height = nearest_size(limits, request.width, request.height)
    # imported here, not with the module: the worker imports this module whatever its models,
    # and the client costs ~1.5 s of every worker's start (measured here) to none without one
    import openai

    client = openai.OpenAI(api_key=settings.api_key, base_url=spec.base_url or settings.base_url,
                           timeout=settings.timeout_s, max_retries=settings.max_retries)
    try:
        calls = _calls(spec.name, spec.model, limits, request, f"{width}x{height}",
                       notices if notices is not None else [])
        images: list[Image.Image] = []
        for call in calls:
            if should_stop():
                break
            images += [_picture(item, settings.timeout_s) for item in call(client).data or []]
            if images:
                on_image(min(len(images), request.count), request.count, images[-1])
        return images[:request.count]
    except openai.APIError as err:
        raise RemoteRefusal(_explain(spec.name, err, settings)) from None
    finally:
        client.close()


Call = Callable[["openai.OpenAI"], Any]


def _calls(name: str, model: str, limits: RemoteLimits, request: Request, size: str,
           notices: list[str]) -> list[Call]:
    """The API calls that make the request's pictures, in order; what was changed to fit the
    provider's limits is appended to `notices`."""
    fmt: dict[str, Any] = {"response_format": "b64_json"} if limits.response_format else {}
    prompt = remote_prompt(request, limits)
    if request.kind == JobKind.VARIATION:
        if request.init_image is None:
            raise ValueError("a variation needs its picture (init_image)")
        with Image.open(request.init_image) as opened:
            data, notice = input_picture(opened, model, limits)
        picture = ("picture.png", data, "image/png")
        if notice:
            notices.append(notice)
        n = min(request.count, limits.max_n)
        if limits.varies:
            def variation(client: openai.OpenAI) -> Any:
                with warnings.catch_warnings():  # the client marks the endpoint deprecated; the API serves it
                    warnings.simplefilter("ignore", DeprecationWarning)
                    return client.images.create_variation(image=picture, model=model, n=n,
                                                          size=size, **fmt)  # type: ignore[arg-type]  # one of dall-e-2's sizes (nearest_size)
            return [variation]
        if limits.edits:
            return [lambda client: client.images.edit(image=picture, prompt=prompt, model=model, n=n,
                                                      size=size, **fmt)]
        raise RemoteRefusal(f"{name} ({model}) has no variation or edit call: V cannot vary its pictures.")
    if limits.max_n >= request.count:
        return [lambda client: client.images.generate(prompt=prompt, model=model, n=request.count, size=size, **fmt)]
    return [lambda client: client.images.generate(prompt=prompt, model=model, n=1, size=size, **fmt)
            for _ in range(request.count)]


def input_picture(image: Image.Image, model: str, limits: RemoteLimits) -> tuple[bytes, str | None]:
    """`image` as the PNG file a variations or edits call of `model` takes (`limits`: its
    RemoteLimits): flattened to RGB; the centre square where it must be square; scaled down
    (Lanczos) to `input_side` pixels on its longer side; then, while its PNG is not under
    `input_bytes`, scaled down again by the square root of the excess (and 5 % more).

    Returns (PNG bytes, None) when the picture goes at its own size, else (PNG bytes, a sentence
    for the member: the size sent, the size it has, the rules). Raises nothing of its own (what
    Pillow raises for an unreadable picture)."""
    picture = flatten_to_rgb(image)
    original = picture.size
    if limits.square_input and picture.width != picture.height:
        side = min(picture.size)
        left, top = (picture.width - side) // 2, (picture.height - side) // 2
        picture = picture.crop((left, top, left + side, top + side))
    if limits.input_side and max(picture.size) > limits.input_side:
        picture = _scaled(picture, limits.input_side / max(picture.size))
    data = png_bytes(picture)
    while limits.input_bytes and len(data) >= limits.input_bytes and min(picture.size) > 1:
        picture = _scaled(picture, (limits.input_bytes / len(data)) ** 0.5 * 0.95)
        data = png_bytes(picture)
    if picture.size == original:
        return data, None
    rules = [f"PNG files under {limits.input_bytes / 1e6:g} MB" if limits.input_bytes else "",
             "square pictures" if limits.square_input else "",
             f"at most {limits.input_side} pixels a side (the largest it makes)" if limits.input_side else ""]
    return data, (f"The picture was sent to {model} at {picture.width}×{picture.height} (it is "
                  f"{original[0]}×{original[1]}): it takes {', '.join(rule for rule in rules if rule)}.")


def _scaled(picture: Image.Image, factor: float) -> Image.Image:
    """`picture` scaled by `factor` < 1 (Lanczos), each side at least 1 pixel."""
    size = (max(1, int(picture.width * factor)), max(1, int(picture.height * factor)))
    return picture.resize(size, Image.Resampling.LANCZOS)


def remote_prompt(request: Request, limits: RemoteLimits) -> str:
    """The text the API reads: the words of the prompt's parts (one text: `::` weights and
    emphasis do not apply), cut to the model's `max_prompt_chars`."""
    # a negative part (less of it) is not sent: build_request drops them, with a notice
    text = " ".join(plain_text(text) for text, _ in positive_parts(request.parts)).strip() or "a picture"
    return text[:limits.max_prompt_chars]


def _picture(item: Any, timeout_s: float) -> Image.Image:
    """One picture of a response: base64 in the JSON (b64_json), or fetched from its `url`."""
    import httpx2  # (openai's HTTP client: imported with it, in generate)

    try:
        if item.b64_json:
            data = base64.b64decode(item.b64_json, validate=True)
        elif item.url:
            response = httpx2.get(item.url, timeout=timeout_s)  # the provider's signed URL (valid ~1 h)
            response.raise_for_status()
            data = response.content
        else:
            raise RemoteRefusal("The image provider answered without a picture.")
        if len(data) > MAX_PICTURE_BYTES:
            raise RemoteRefusal("The image provider sent a picture larger than Pintor accepts.")
        with Image.open(io.BytesIO(data)) as opened:
            return flatten_to_rgb(opened)
    except (binascii.Error, UnidentifiedImageError, OSError, httpx2.HTTPError):
        raise RemoteRefusal("The image provider sent a picture Pintor cannot read.") from None


def _explain(name: str, err: openai.APIError, settings: RemoteSettings) -> str:
    """What the member hears for a provider's error, and a log line for the operator (the status
    and the error code: no message, no request id, no key)."""
    import openai

    status = getattr(err, "status_code", None)
    code = err.code or ""
    log.warning("%s: the image provider refused (%s, HTTP %s%s)", name, type(err).__name__,
                status if status is not None else "-", f", code {code}" if code else "")
    if isinstance(err, openai.APITimeoutError):
        return f"The image provider did not answer within {settings.timeout_s:g} s. Try again later."
    if isinstance(err, openai.APIConnectionError):
        return "Pintor cannot reach the image provider right now. Try again later."
    if code in ("content_policy_violation", "moderation_blocked") or (
            isinstance(err, openai.BadRequestError) and "safety" in (err.type or "")):
        return (f"{name}: the image provider refused this prompt under its content policy. "
                "Change the prompt and try again.")
    if isinstance(err, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"{name}: the image provider refused Pintor's API key. Tell Pintor's operator."
    if isinstance(err, openai.RateLimitError):
        if code == "insufficient_quota":
            return f"{name}: Pintor's quota with the image provider is used up. Tell Pintor's operator."
        return (f"{name}: the image provider is busy (rate limit), still after {settings.max_retries + 1} "
                "tries. Try again in a minute.")
    if isinstance(err, openai.InternalServerError):
        return f"{name}: the image provider failed (HTTP {status}). Try again later."
    if isinstance(err, openai.NotFoundError):
        return f"{name}: the image provider does not offer this model. Tell Pintor's operator."
    if isinstance(err, openai.BadRequestError):
        return f"{name}: the image provider refused the request{f' ({code})' if code else ''}."
    return f"{name}: the image provider failed{f' (HTTP {status})' if status else ''}."

"""A small local Discord (REST + gateway) for end-to-end tests of the real discord.py client.

Point the client at it with ``bot.discord_endpoints.point_discord_at(emu.api_base,
emu.gateway_url)`` before ``login``. The emulator records every REST request, keeps every
message the bot created or edited, serves uploaded files, and dispatches slash commands,
component clicks and modal submits as INTERACTION_CREATE events over the gateway.

Like Discord, it refuses (400 "Invalid Form Body", code 50035) a message over Discord's limits
(content, embeds, fields, components, modals: `form_errors`) and (code 50006) one created or
edited to nothing; and it records in `unfurled` each link Discord would preview (`unfurled_links`).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import itertools
import json
import mimetypes
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

EPHEMERAL, LOADING = 64, 128
OPTION_TYPES = {bool: 5, int: 4, float: 10, str: 3, dict: 11}  # fallback when the synced tree lacks it


@dataclass
class RecordedRequest:
    method: str
    path: str  # relative to the API base, e.g. "/interactions/1/tok/callback"
    query: dict[str, str]
    json: Any = None  # the JSON body, or the parsed payload_json of a multipart body
    files: list[tuple[str, bytes]] = field(default_factory=list)
    status: int = 0
    at: float = 0.0  # time.monotonic()
    answer: Any = None  # the JSON body the emulator answered with

    @property
    def refused_by_limits(self) -> bool:
        """Discord would refuse it: "Invalid Form Body" (a limit) or "Cannot send an empty message"."""
        return self.status == 400 and isinstance(self.answer, dict) and self.answer.get("code") in (50035, 50006)


def _json(body: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py parses nothing else (json_response adds a charset).
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json")


def _error(status: int, code: int, message: str) -> tuple[int, dict]:
    return status, {"message": message, "code": code}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:
        return None


# Discord's limits on what a message may carry (developers' docs: resources/message,
# interactions/message-components, interactions/receiving-and-responding). Lengths are counted
# in UTF-16 code units, the strictest reading of "characters".
CONTENT_MAX, EMBEDS_MAX, EMBEDS_TOTAL_MAX, FIELDS_MAX = 2000, 10, 6000, 25
EMBED_MAX = {"title": 256, "description": 4096}
FIELD_MAX = {"name": 256, "value": 1024}
ROWS_MAX, ROW_ITEMS_MAX, BUTTON_LABEL_MAX, CUSTOM_ID_MAX = 5, 5, 80, 100
OPTIONS_MAX, OPTION_TEXT_MAX, PLACEHOLDER_MAX = 25, 100, 150
MODAL_TITLE_MAX, TEXT_INPUT_LABEL_MAX = 45, 45
SUPPRESS_EMBEDS, IS_COMPONENTS_V2 = 1 << 2, 1 << 15
# What Discord unfurls into a preview: a URL in the content (as its markdown finds one), unless
# written as an autolink <url> (whose "<" is not escaped by an odd number of backslashes), or
# the message has SUPPRESS_EMBEDS.
_BARE_URL = re.compile(r"https?://[^\s<]*[^\s<.,:;\"')\]]", re.IGNORECASE)
_AUTOLINK = re.compile(r"(?<!\\)((?:\\\\)*)<https?://[^ >]+>", re.IGNORECASE)


def unfurled_links(content: str) -> list[str]:
    """The links Discord would preview for a message with this content."""
    return _BARE_URL.findall(_AUTOLINK.sub(lambda m: m.group(1) + " ", content))


def _length(text: str) -> int:
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def form_errors(body: dict) -> dict:
    """What Discord's "Invalid Form Body" (400, code 50035) would list for a message body:
    {"content": {"_errors": [...]}, "embeds": {"0": {"title": ...}}, ...}; {} when it is valid."""
    errors: dict = {}

    def fail(path: tuple, code: str, message: str) -> None:
        node = errors
        for key in path:
            node = node.setdefault(str(key), {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def too_long(path: tuple, value: Any, limit: int) -> None:
        if isinstance(value, str) and _length(value) > limit:
            fail(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    too_long(("content",), body.get("content"), CONTENT_MAX)
    embeds = body.get("embeds") or []
    if len(embeds) > EMBEDS_MAX:
        fail(("embeds",), "BASE_TYPE_MAX_LENGTH", f"Must be {EMBEDS_MAX} or fewer in length.")
    total = 0
    for e, embed in enumerate(embeds):
        for key, limit in EMBED_MAX.items():
            too_long(("embeds", e, key), embed.get(key), limit)
            total += _length(embed.get(key) or "")
        fields = embed.get("fields") or []
        if len(fields) > FIELDS_MAX:
            fail(("embeds", e, "fields"), "BASE_TYPE_MAX_LENGTH", f"Must be {FIELDS_MAX} or fewer in length.")
        for f, item in enumerate(fields):
            for key, limit in FIELD_MAX.items():
                if not item.get(key):
                    fail(("embeds", e, "fields", f, key), "BASE_TYPE_REQUIRED", "This field is required")
                too_long(("embeds", e, "fields", f, key), item.get(key), limit)
                total += _length(item.get(key) or "")
        too_long(("embeds", e, "footer", "text"), (embed.get("footer") or {}).get("text"), 2048)
        too_long(("embeds", e, "author", "name"), (embed.get("author") or {}).get("name"), 256)
        total += _length((embed.get("footer") or {}).get("text") or "")
        total += _length((embed.get("author") or {}).get("name") or "")
    if total > EMBEDS_TOTAL_MAX:
        fail(("embeds",), "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {EMBEDS_TOTAL_MAX}")
    rows = body.get("components") or []
    if len(rows) > ROWS_MAX and not (body.get("flags") or 0) & IS_COMPONENTS_V2:
        fail(("components",), "BASE_TYPE_MAX_LENGTH", f"Must be {ROWS_MAX} or fewer in length.")
    for r, row in enumerate(rows):
        items = row.get("components") or []
        if len(items) > ROW_ITEMS_MAX:
            fail(("components", r, "components"), "BASE_TYPE_MAX_LENGTH",
                 f"Must be {ROW_ITEMS_MAX} or fewer in length.")
        for i, item in enumerate(items):
            path = ("components", r, "components", i)
            too_long((*path, "custom_id"), item.get("custom_id"), CUSTOM_ID_MAX)
            if item.get("type") == 2:
                too_long((*path, "label"), item.get("label"), BUTTON_LABEL_MAX)
            too_long((*path, "placeholder"), item.get("placeholder"), PLACEHOLDER_MAX)
            options = item.get("options") or []
            if len(options) > OPTIONS_MAX:
                fail((*path, "options"), "BASE_TYPE_MAX_LENGTH", f"Must be {OPTIONS_MAX} or fewer in length.")
            for o, option in enumerate(options):
                for key in ("label", "value", "description"):
                    too_long((*path, "options", o, key), option.get(key), OPTION_TEXT_MAX)
    return errors


def _modal_refused(data: dict) -> tuple[int, dict] | None:
    """Discord's 400 for a modal whose title or an input's label is too long, or None."""
    too_long = []
    if _length(data.get("title") or "") > MODAL_TITLE_MAX:
        too_long.append(("title", MODAL_TITLE_MAX))
    for r, row in enumerate(data.get("components") or []):
        for i, item in enumerate([row["component"]] if "component" in row else row.get("components") or []):
            label = row.get("label") if "component" in row else item.get("label")
            if _length(label or "") > TEXT_INPUT_LABEL_MAX:
                too_long.append((f"components.{r}.{i}.label", TEXT_INPUT_LABEL_MAX))
    errors = {path: {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}]}
              for path, limit in too_long}
    return (400, {"message": "Invalid Form Body", "code": 50035, "errors": errors}) if errors else None


def _is_empty(msg: dict) -> bool:
    return not (msg.get("content") or msg.get("embeds") or msg.get("attachments") or msg.get("sticker_items")
                or msg.get("poll") or (msg.get("flags", 0) & IS_COMPONENTS_V2 and msg.get("components")))


def _refused(body: dict, message_after: dict | None) -> tuple[int, dict] | None:
    """Discord's 400 for a message create/edit it would refuse, or None."""
    if errors := form_errors(body):
        return 400, {"message": "Invalid Form Body", "code": 50035, "errors": errors}
    if message_after is not None and _is_empty(message_after):
        return _error(400, 50006, "Cannot send an empty message")
    return None


@dataclass
class Fault:
    """A misbehaviour of the emulated Discord (`DiscordEmulator.fault`): the next `times` REST
    requests whose method and path (a regular expression, matched whole against the path under
    the API base) match are delayed by `delay_s`, then answered with `status` (a 429 with
    `retry_after` as Discord's rate limits are, with the `Via` header discord.py wants; `when`
narrows it to requests with such a body), or, with
    `status` 0, served as usual after the delay (a response that comes too late: Discord got
    the request). `hits` holds when each matching request arrived (time.monotonic())."""
    method: str
    path: str
    status: int = 0
    times: int = 1
    retry_after: float | None = None
    delay_s: float = 0.0
    code: int = 0
    when: Callable[[RecordedRequest], bool] | None = None  # only requests with this body (e.g. with files)
    hits: list[float] = field(default_factory=list)

    def matches(self, rec: RecordedRequest) -> bool:
        return (self.times > 0 and rec.method == self.method and re.fullmatch(self.path, rec.path) is not None
                and (self.when is None or self.when(rec)))


class Interaction:
    """One INTERACTION_CREATE the emulator dispatched, and what the bot answered."""

    def __init__(self, emu: DiscordEmulator, payload: dict, original_id: int | None = None):
        self._emu = emu
        self.payload = payload
        self.id: int = int(payload["id"])
        self.token: str = payload["token"]
        self.type: int = payload["type"]
        self.callbacks: list[dict] = []  # {"type", "data", "files", "at", "dispatched_at"}
        self.followups: list[dict] = []
        self.original_id = original_id  # components: the clicked message is @original
        self.dispatched_at: float = 0.0

    @property
    def original(self) -> dict | None:
        return self._emu.messages.get(self.original_id) if self.original_id else None

    async def wait_callback(self, timeout: float = 5) -> dict:
        await self._emu._wait(lambda: self.callbacks, timeout)
        return self.callbacks[0]

    async def wait_original(self, predicate: Callable[[dict], bool], timeout: float = 10) -> dict:
        await self._emu._wait(lambda: self.original is not None and predicate(self.original), timeout)
        return self.original  # type: ignore[return-value]


class DiscordEmulator:
    def __init__(self) -> None:
        self._ids = itertools.count(1_300_000_000_000_000_000)
        self.application_id = self._snowflake()
        self.bot_user_id = self._snowflake()
        self.guild_id = self._snowflake()
        self.channel_id = self._snowflake()
        self.user_id = self._snowflake()  # the default user who runs commands and clicks
        self.bot_user = self.make_user(self.bot_user_id, "pintor", bot=True)
        self.requests: list[RecordedRequest] = []
        self.messages: dict[int, dict] = {}
        self.interactions: dict[int, Interaction] = {}
        self.commands: dict[int | None, list[dict]] = {}  # synced command trees by guild (None = global)
        self.channels: dict[int, dict] = {self.channel_id: self._guild_channel(self.channel_id)}
        self.identify: dict | None = None  # the client's last IDENTIFY payload
        self.session_id: str | None = None
        self.gateway_received: list[dict] = []  # every gateway frame the client sent
        self.api_base = self.gateway_url = self.base_url = ""
        self._files: dict[int, tuple[bytes, str]] = {}  # served attachments
        self.attachment_gets: list[int] = []  # ids of the attachments fetched, in order (404s included)
        self.unfurled: list[tuple[int, str]] = []  # (message id, URL) for each link preview Discord would make
        self.faults: list[Fault] = []  # misbehaviours to come (`fault`)
        self._nonces: dict[tuple[int, str], int] = {}  # (channel, enforced nonce) → the message it made
        self._ws: web.WebSocketResponse | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._seq = 0
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._ready = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._routes = [
            ("GET", r"/users/@me", self._get_me),
            ("GET", r"/oauth2/applications/@me", self._get_application),
            ("GET", r"/gateway(?P<bot>/bot)?", self._get_gateway),
            ("PUT", r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands", self._put_commands),
            ("GET", r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?/commands", self._get_commands),
            ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self._callback),
            ("POST", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)", self._followup),
            ("GET|PATCH|DELETE", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)/messages/(?P<mid>@original|\d+)",
             self._webhook_message),
            ("POST", r"/channels/(?P<cid>\d+)/messages", self._create_channel_message),
            ("GET|PATCH", r"/channels/(?P<cid>\d+)/messages/(?P<mid>\d+)", self._channel_message),
            ("GET", r"/channels/(?P<cid>\d+)", self._get_channel),
            ("POST", r"/users/@me/channels", self._create_dm),
        ]

    # ---- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{aid}/{filename}", self._serve_attachment)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_base = f"{self.base_url}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def fault(self, method: str, path: str, *, status: int = 0, times: int = 1, retry_after: float | None = None,
              delay_s: float = 0.0, code: int = 0, when: Callable[[RecordedRequest], bool] | None = None) -> Fault:
        """Misbehave on the next `times` requests `method path` (see `Fault`); returns the fault,
        whose `hits` record each request it met. A test removes it with `emu.faults.remove`."""
        fault = Fault(method, path, status, times, retry_after, delay_s, code, when)
        self.faults.append(fault)
        return fault

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the client's gateway connection (as Discord does on an outage or a restart of its
        gateway): discord.py resumes, or identifies anew, on its own."""
        if self._ws is not None:
            await self._ws.close(code=code, message=b"dropped by the emulator")

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _wait(self, condition: Callable[[], Any], timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), timeout)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_ready(self, timeout: float = 10) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout)

    async def wait_for(self, predicate: Callable[[RecordedRequest], bool], timeout: float = 10) -> RecordedRequest:
        found: list[RecordedRequest] = []

        def check() -> bool:
            found[:] = [r for r in self.requests if predicate(r)][:1]
            return bool(found)

        await self._wait(check, timeout)
        return found[0]

    # ---- object factories ------------------------------------------------------------
    def _snowflake(self) -> int:
        return next(self._ids)

    @staticmethod
    def make_user(user_id: int, name: str | None = None, *, bot: bool = False) -> dict:
        name = name or f"user{user_id % 10000}"
        return {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0",
                "avatar": None, "bot": bot, "public_flags": 0, "flags": 0}

    def add_guild(self) -> tuple[int, int]:
        """Another server with one text channel: (guild id, channel id); pass the channel to
        ``slash(channel_id=…)``."""
        guild_id, channel_id = self._snowflake(), self._snowflake()
        self.channels[channel_id] = self._guild_channel(channel_id, guild_id)
        return guild_id, channel_id

    def add_channel(self, guild_id: int | None = None) -> int:
        """Another text channel of a server (the default one without ``guild_id``)."""
        channel_id = self._snowflake()
        self.channels[channel_id] = self._guild_channel(channel_id, guild_id)
        return channel_id

    def _guild_channel(self, cid: int, guild_id: int | None = None) -> dict:
        return {"id": str(cid), "type": 0, "guild_id": str(guild_id or self.guild_id), "name": "general", "position": 0,
                "permission_overwrites": [], "nsfw": False, "topic": None, "rate_limit_per_user": 0,
                "parent_id": None, "last_message_id": None}

    def _dm_channel(self, user_id: int) -> dict:
        for channel in self.channels.values():
            if channel["type"] == 1 and channel["recipients"][0]["id"] == str(user_id):
                return channel
        cid = self._snowflake()
        self.channels[cid] = {"id": str(cid), "type": 1, "recipients": [self.make_user(user_id)],
                              "last_message_id": None}
        return self.channels[cid]

    def add_attachment(self, filename: str, data: bytes, content_type: str = "image/png") -> dict:
        """Serve ``data`` on the emulator and return a Discord attachment object for it."""
        aid = self._snowflake()
        self._files[aid] = (data, content_type)
        # the name percent-encoded into the URL's path, whatever it is ("../x", "a b", "")
        url = f"{self.base_url}/attachments/{aid}/{quote(filename, safe='') or 'unnamed'}"
        attachment = {"id": str(aid), "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                      "content_type": content_type}
        if content_type.startswith("image/") and (size := _image_size(data)):
            attachment["width"], attachment["height"] = size
        return attachment

    def remove_attachment(self, attachment: dict) -> None:
        """Stop serving an attachment (as when its signed URL expires): its URL answers 404."""
        self._files.pop(int(attachment["id"]), None)

    def _apply(self, msg: dict, body: dict, files: list[tuple[str, bytes]], *, edit: bool) -> dict:
        """Create/edit semantics of Discord messages: given keys replace, null clears."""
        for key, empty in (("content", ""), ("embeds", []), ("components", []), ("tts", False)):
            if key in body:
                msg[key] = body[key] if body[key] is not None else empty
        if "flags" in body and body["flags"] is not None:  # the ephemeral bit can't change after creation
            msg["flags"] = (body["flags"] & ~EPHEMERAL) | (msg["flags"] & EPHEMERAL) if edit else body["flags"]
        uploaded = [self.add_attachment(n, d, mimetypes.guess_type(n)[0] or "application/octet-stream")
                    for n, d in files]
        if "attachments" in body and body["attachments"] is not None:
            keep = {a["id"]: a for a in msg["attachments"]}
            result, used = [], set()
            for ref in body["attachments"]:
                rid = str(ref.get("id"))
                if rid in keep:
                    result.append(keep[rid])
                elif rid.isdigit() and int(rid) < len(uploaded):
                    used.add(int(rid))
                    result.append(uploaded[int(rid)] | {k: ref[k] for k in ("description", "title") if k in ref})
            msg["attachments"] = result + [a for i, a in enumerate(uploaded) if i not in used]
        else:
            msg["attachments"] = msg["attachments"] + uploaded
        if edit:
            msg["flags"] &= ~LOADING
            msg["edited_timestamp"] = _now()
        if "content" in body and not msg["flags"] & SUPPRESS_EMBEDS:
            self.unfurled += [(int(msg["id"]), url) for url in unfurled_links(msg["content"])]
        return msg

    @staticmethod
    def _check(body: dict, files: list, msg: dict | None = None) -> tuple[int, dict] | None:
        """Discord's 400 for creating a message from `body` (or editing `msg` with it), or None."""
        after = dict(msg or {"content": "", "embeds": [], "attachments": [], "components": [], "flags": 0})
        for key, empty in (("content", ""), ("embeds", []), ("components", []), ("flags", 0)):
            if key in body:
                after[key] = body[key] if body[key] is not None else (after[key] if key == "flags" else empty)
        if body.get("attachments") is not None:
            after["attachments"] = list(body["attachments"]) + files
        else:
            after["attachments"] = list(after["attachments"]) + files
        return _refused(body, after)

    def _new_message(self, channel_id: int, body: dict, files: list, interaction: Interaction | None = None) -> dict:
        channel = self.channels.get(channel_id, {})
        msg = {"id": str(self._snowflake()), "channel_id": str(channel_id), "author": self.bot_user,
               "content": "", "timestamp": _now(), "edited_timestamp": None, "tts": False,
               "mention_everyone": False, "mentions": [], "mention_roles": [], "mention_channels": [],
               "attachments": [], "embeds": [], "reactions": [], "pinned": False, "type": 0, "flags": 0,
               "components": []}
        if "guild_id" in channel:
            msg["guild_id"] = channel["guild_id"]
        if interaction is not None:
            p = interaction.payload
            user = p["member"]["user"] if "member" in p else p["user"]
            msg.update(type=20 if interaction.type == 2 else 0, webhook_id=str(self.application_id),
                       application_id=str(self.application_id),
                       interaction_metadata={"id": p["id"], "type": p["type"], "user": user,
                                             "authorizing_integration_owners": p["authorizing_integration_owners"]})
        self._apply(msg, body, files, edit=False)
        self.messages[int(msg["id"])] = msg
        return msg

    # ---- REST ------------------------------------------------------------------------
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        rec = RecordedRequest(request.method, path, dict(request.query), at=time.monotonic())
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "payload_json":
                    rec.json = json.loads(await part.text())
                elif part.filename is not None:
                    rec.files.append((part.filename, bytes(await part.read())))
        elif request.can_read_body:
            text = await request.text()
            rec.json = json.loads(text) if text else None
        status, body = _error(404, 0, f"404: Not Found ({request.method} {path})")
        fault = next((f for f in self.faults if f.matches(rec)), None)
        if fault is not None:
            fault.times -= 1
            fault.hits.append(rec.at)
            if fault.delay_s:
                await asyncio.sleep(fault.delay_s)
            if fault.status:
                response = self._faulted(rec, fault)
                await self._notify()
                return response
        for methods, pattern, handler in self._routes:
            match = re.fullmatch(pattern, path)
            if match and request.method in methods.split("|"):
                status, body = await handler(rec, **match.groupdict())
                break
        rec.status, rec.answer = status, body
        self.requests.append(rec)
        await self._notify()
        return web.Response(status=204) if body is None else _json(body, status)

    def _faulted(self, rec: RecordedRequest, fault: Fault) -> web.Response:
        if fault.status == 429:
            body = {"message": "You are being rate limited.", "retry_after": fault.retry_after or 0.0,
                    "global": False, "code": 0}
            headers = {"Via": "1.1 google", "Retry-After": str(fault.retry_after or 0)}
        else:
            body, headers = {"message": f"{fault.status}: emulated fault", "code": fault.code}, {}
        rec.status, rec.answer = fault.status, body
        self.requests.append(rec)
        response = _json(body, fault.status)
        response.headers.update(headers)
        return response

    async def _get_me(self, rec):
        return 200, self.bot_user

    async def _get_application(self, rec):
        owner = self.make_user(self._snowflake(), "owner")
        return 200, {"id": str(self.application_id), "name": "Pintor", "description": "", "icon": None,
                     "bot_public": True, "bot_require_code_grant": False, "owner": owner, "verify_key": "0" * 64,
                     "flags": 0, "bot": self.bot_user, "summary": "", "team": None}

    async def _get_gateway(self, rec, bot):
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": self.gateway_url} | ({"shards": 1, "session_start_limit": limit} if bot else {})

    async def _put_commands(self, rec, app, guild):
        if int(app) != self.application_id:
            return _error(403, 50001, "Missing Access")
        gid = int(guild) if guild else None
        old = {(c["name"], c.get("type", 1)): c["id"] for c in self.commands.get(gid, [])}
        self.commands[gid] = [
            {"type": 1, "description": "", "options": [], "default_member_permissions": None, **cmd,
             "id": old.get((cmd["name"], cmd.get("type", 1))) or str(self._snowflake()),
             "application_id": str(self.application_id), "version": str(self._snowflake()),
             **({"guild_id": guild} if gid else {})}
            for cmd in rec.json or []
        ]
        return 200, self.commands[gid]

    async def _get_commands(self, rec, app, guild):
        return 200, self.commands.get(int(guild) if guild else None, [])

    def _interaction(self, app_or_iid: str, token: str, *, by_app: bool) -> Interaction | None:
        if by_app and int(app_or_iid) != self.application_id:
            return None
        inter = next((i for i in self.interactions.values() if i.token == token), None)
        return inter if inter and (by_app or inter.id == int(app_or_iid)) else None

    async def _callback(self, rec, iid, token):
        inter = self._interaction(iid, token, by_app=False)
        if inter is None:
            return _error(404, 10062, "Unknown interaction")
        if inter.callbacks:
            return _error(400, 40060, "Interaction has already been acknowledged.")
        body, kind = rec.json or {}, (rec.json or {}).get("type")
        data = body.get("data") or {}
        refusal = None
        if kind == 4:
            refusal = self._check(data, rec.files)
        elif kind == 7 and inter.original is not None:
            refusal = self._check(data, rec.files, inter.original)
        elif kind == 9:
            refusal = _modal_refused(data)
        if refusal is not None:
            return refusal
        inter.callbacks.append({**body, "files": rec.files, "at": rec.at, "dispatched_at": inter.dispatched_at})
        message = None
        if kind in (4, 5):  # a new message (5: "thinking..." until edited)
            flags = (data.get("flags") or 0) | (LOADING if kind == 5 else 0)
            message = self._new_message(int(inter.payload["channel_id"]), {**data, "flags": flags}, rec.files, inter)
            inter.original_id = int(message["id"])
        elif kind == 7 and inter.original is not None:  # a component updates its own message
            message = self._apply(inter.original, data, rec.files, edit=True)
        response = {"interaction": {"id": str(inter.id), "type": inter.type,
                                    "response_message_id": message["id"] if message else None,
                                    "response_message_loading": kind == 5,
                                    "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL)},
                    "resource": {"type": kind} | ({"message": message} if message else {})}
        return (200, response) if rec.query.get("with_response") in ("1", "true", "True") else (204, None)

    async def _followup(self, rec, app, token):
        inter = self._interaction(app, token, by_app=True)
        if inter is None:
            return _error(404, 10015, "Unknown Webhook")
        if refusal := self._check(rec.json or {}, rec.files):
            return refusal
        message = self._new_message(int(inter.payload["channel_id"]), rec.json or {}, rec.files, inter)
        inter.followups.append(message)
        return (200, message) if rec.query.get("wait") in ("1", "true", "True") else (204, None)

    async def _webhook_message(self, rec, app, token, mid):
        inter = self._interaction(app, token, by_app=True)
        if inter is None:
            return _error(404, 10015, "Unknown Webhook")
        ids = {inter.original_id} | {int(m["id"]) for m in inter.followups}
        msg_id = inter.original_id if mid == "@original" else int(mid)
        if msg_id not in ids or msg_id not in self.messages:
            return _error(404, 10008, "Unknown Message")
        if rec.method == "DELETE":
            del self.messages[msg_id]
            return 204, None
        if rec.method == "PATCH":
            if refusal := self._check(rec.json or {}, rec.files, self.messages[msg_id]):
                return refusal
            self._apply(self.messages[msg_id], rec.json or {}, rec.files, edit=True)
        return 200, self.messages[msg_id]

    async def _create_channel_message(self, rec, cid):
        if int(cid) not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        if refusal := self._check(rec.json or {}, rec.files):
            return refusal
        body = rec.json or {}
        nonce = (int(cid), str(body["nonce"])) if body.get("enforce_nonce") and body.get("nonce") else None
        if nonce in self._nonces and self._nonces[nonce] in self.messages:  # Discord: the message it made
            return 200, self.messages[self._nonces[nonce]]
        message = self._new_message(int(cid), body, rec.files)
        if nonce is not None:
            self._nonces[nonce] = int(message["id"])
        return 200, message

    async def _channel_message(self, rec, cid, mid):
        msg = self.messages.get(int(mid))
        if msg is None or msg["channel_id"] != cid:
            return _error(404, 10008, "Unknown Message")
        if rec.method == "PATCH":
            if refusal := self._check(rec.json or {}, rec.files, msg):
                return refusal
            self._apply(msg, rec.json or {}, rec.files, edit=True)
        return 200, msg

    async def _get_channel(self, rec, cid):
        channel = self.channels.get(int(cid))
        return (200, channel) if channel else _error(404, 10003, "Unknown Channel")

    async def _create_dm(self, rec):
        return 200, self._dm_channel(int((rec.json or {})["recipient_id"]))

    async def _serve_attachment(self, request: web.Request) -> web.Response:
        self.attachment_gets.append(int(request.match_info["aid"]))
        data, content_type = self._files.get(int(request.match_info["aid"]), (None, ""))
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type=content_type)

    # ---- gateway ---------------------------------------------------------------------
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        # The client asks for compress=zlib-stream, but reads text frames as plain JSON.
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None})
            async for frame in ws:
                if frame.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(frame.data)
                self.gateway_received.append(payload)
                if payload["op"] == 1:  # heartbeat
                    await self._send(ws, {"op": 11, "d": None, "s": None, "t": None})
                elif payload["op"] == 2:  # identify
                    self.identify, self._ws, self._seq = payload["d"], ws, 0
                    self.session_id = secrets.token_hex(16)
                    await self.dispatch("READY", {
                        "v": 10, "user": self.bot_user, "guilds": [], "session_id": self.session_id,
                        "resume_gateway_url": self.gateway_url, "shard": payload["d"].get("shard", [0, 1]),
                        "application": {"id": str(self.application_id), "flags": 0}, "private_channels": []})
                    self._ready.set()
                elif payload["op"] == 6:  # resume
                    self._ws = ws
                    await self.dispatch("RESUMED", {})
                    self._ready.set()
        finally:
            self._sockets.discard(ws)
            if self._ws is ws:
                self._ws = None
                self._ready.clear()
        return ws

    async def _send(self, ws: web.WebSocketResponse, payload: dict) -> None:
        async with self._send_lock:
            await ws.send_str(json.dumps(payload))

    async def dispatch(self, event: str, data: dict) -> None:
        """Send a DISPATCH (op 0) event to the connected client."""
        if self._ws is None:
            raise RuntimeError("no client is connected to the gateway (call wait_ready first)")
        self._seq += 1
        await self._send(self._ws, {"op": 0, "t": event, "s": self._seq, "d": data})

    # ---- interactions ----------------------------------------------------------------
    def _base_interaction(self, kind: int, data: dict, channel: dict, user_id: int | None,
                          attachment_size_limit: int, permissions: str) -> dict:
        user = self.make_user(user_id or self.user_id)
        payload = {"id": str(self._snowflake()), "application_id": str(self.application_id), "type": kind,
                   "token": "tok" + secrets.token_hex(24), "version": 1, "data": data,
                   "channel_id": channel["id"], "channel": channel, "locale": "en-US",
                   "app_permissions": str((1 << 51) - 1), "entitlements": [], "entitlement_sku_ids": [],
                   "attachment_size_limit": attachment_size_limit}
        if channel["type"] == 1:
            payload.update(user=user, context=1, authorizing_integration_owners={"0": "0"})
        else:
            guild_id = channel["guild_id"]
            payload.update(
                guild_id=guild_id, guild_locale="en-US", context=0,
                guild={"id": guild_id, "locale": "en-US", "features": []},
                authorizing_integration_owners={"0": guild_id},
                member={"user": user, "roles": [], "joined_at": _now(), "deaf": False, "mute": False,
                        "flags": 0, "pending": False, "nick": None, "avatar": None, "permissions": permissions})
        return payload

    async def _dispatch_interaction(self, payload: dict, original_id: int | None = None) -> Interaction:
        inter = Interaction(self, payload, original_id)
        self.interactions[inter.id] = inter
        inter.dispatched_at = time.monotonic()
        await self.dispatch("INTERACTION_CREATE", payload)
        return inter

    def _find_command(self, name: str, guild: bool) -> dict:
        for gid in ([self.guild_id] if guild else []) + [None]:
            for cmd in self.commands.get(gid, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        raise LookupError(f"/{name} was not synced (commands: {self.commands})")

    async def slash(self, name: str, options: dict | None = None, *, user_id: int | None = None,
                    guild: bool = True, attachments: dict[str, dict] | None = None,
                    attachment_size_limit: int = 10 * 1024 * 1024, permissions: str = "0",
                    subcommand: str | None = None, channel_id: int | None = None) -> Interaction:
        """Run ``/name`` (``subcommand`` as "sub" or "group sub") with options given as {name: value}.

        An attachment option takes an attachment object (from ``add_attachment``) or its id
        (then pass the object in ``attachments``, keyed by id).
        """
        cmd = self._find_command(name, guild)
        resolved = {str(k): v for k, v in (attachments or {}).items()}
        schema, nested = cmd.get("options", []), []
        for sub in (subcommand or "").split():
            spec = next(o for o in schema if o["name"] == sub)
            nested.append({"name": sub, "type": spec["type"], "options": []})
            schema = spec.get("options", [])
        values = []
        for key, value in (options or {}).items():
            kind = next((o["type"] for o in schema if o["name"] == key), OPTION_TYPES.get(type(value), 3))
            if isinstance(value, dict):  # an attachment object
                resolved[str(value["id"])], value = value, value["id"]
            value = {3: str, 4: int, 5: bool, 10: float}.get(kind, str)(value)
            values.append({"name": key, "type": kind, "value": value})
        if nested:
            for parent, child in zip(nested, nested[1:], strict=False):
                parent["options"] = [child]
            nested[-1]["options"], values = values, nested[:1]
        data = {"id": cmd["id"], "name": name, "type": 1, "options": values}
        if resolved:
            data["resolved"] = {"attachments": resolved}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        channel = self.channels[channel_id or self.channel_id] if guild else self._dm_channel(user_id or self.user_id)
        payload = self._base_interaction(2, data, channel, user_id, attachment_size_limit, permissions)
        return await self._dispatch_interaction(payload)

    async def click(self, message_id: int, custom_id: str, *, user_id: int | None = None,
                    values: list[str] | None = None, attachment_size_limit: int = 10 * 1024 * 1024,
                    permissions: str = "0") -> Interaction:
        """Click a button (or pick ``values`` in a select menu) on a message as the bot last left it."""
        message = self.messages[int(message_id)]

        def walk(components: list[dict]):
            for c in components:
                yield c
                yield from walk(c.get("components", []) + ([c["accessory"]] if "accessory" in c else []))

        component = next((c for c in walk(message["components"]) if c.get("custom_id") == custom_id), None)
        if component is None:
            raise LookupError(f"no component {custom_id!r} on message {message_id}")
        data = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            data["values"] = values
        channel = self.channels[int(message["channel_id"])]
        payload = self._base_interaction(3, data, channel, user_id, attachment_size_limit, permissions)
        payload["message"] = json.loads(json.dumps(message))  # a snapshot, as Discord sends it
        return await self._dispatch_interaction(payload, original_id=int(message_id))

    async def submit_modal(self, opened: Interaction, values: dict[str, str], *,
                           user_id: int | None = None) -> Interaction:
        """Fill in and submit the modal the bot answered ``opened`` with (callback type 9).

        ``values`` are keyed by a text input's custom_id or its label; inputs left out are sent
        empty. A modal opened from a message's button may update that message (callback 7).
        """
        modal = next(c["data"] for c in opened.callbacks if c["type"] == 9)
        inputs: dict[str, str | None] = {}  # custom_id → label
        for row in modal["components"]:
            if row["type"] == 18:  # a Label around one input
                inputs[row["component"]["custom_id"]] = row.get("label")
            else:  # an action row (the older layout)
                inputs.update((c["custom_id"], c.get("label")) for c in row["components"])
        rows = [{"type": 1,
                 "components": [{"type": 4, "custom_id": cid, "value": values.get(cid, values.get(label, ""))}]}
                for cid, label in inputs.items()]
        opener = (opened.payload.get("member") or opened.payload)["user"]
        payload = self._base_interaction(5, {"custom_id": modal["custom_id"], "components": rows},
                                         opened.payload["channel"], user_id or int(opener["id"]),
                                         opened.payload["attachment_size_limit"], "0")
        original_id = None
        if "message" in opened.payload:  # opened from a button: the submit may edit that message
            original_id = opened.original_id
            payload["message"] = json.loads(json.dumps(self.messages.get(original_id, opened.payload["message"])))
        return await self._dispatch_interaction(payload, original_id=original_id)

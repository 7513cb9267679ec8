"""The real discord.py client (commands.Bot, app commands, DynamicItem buttons) against the emulator."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from bot.discord_endpoints import DEFAULT_API_BASE, DEFAULT_GATEWAY_URL, point_discord_at
from tests.discord_emulator import DiscordEmulator


def png_bytes(size: tuple[int, int] = (16, 8), color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


class CounterButton(discord.ui.DynamicItem[discord.ui.Button], template=r"test:b:(?P<n>\d+)"):
    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"#{n}", custom_id=f"test:b:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(cls, interaction, item, match):
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"clicked {self.n}", ephemeral=True)


def make_bot() -> commands.Bot:
    bot = commands.Bot(command_prefix="!", intents=discord.Intents.default(), guild_ready_timeout=0)

    async def setup_hook() -> None:
        bot.add_dynamic_items(CounterButton)
        await bot.tree.sync()

    bot.setup_hook = setup_hook

    @bot.tree.command(description="Echo some text")
    async def echo(interaction: discord.Interaction, text: str) -> None:
        await interaction.response.defer(thinking=True)
        view = discord.ui.View(timeout=None)
        view.add_item(CounterButton(7))
        await interaction.edit_original_response(
            content=f"echo: {text}", attachments=[discord.File(io.BytesIO(png_bytes()), "echo.png")], view=view
        )

    @bot.tree.command(description="Size of an image")
    @app_commands.describe(image="any file", scale="a number")
    async def size(interaction: discord.Interaction, image: discord.Attachment, scale: int = 1) -> None:
        data = await image.read()
        await interaction.response.send_message(f"{image.filename}: {len(data) * scale} bytes")

    return bot


@pytest.fixture
async def emu():
    async with DiscordEmulator() as emulator:
        point_discord_at(emulator.api_base, emulator.gateway_url)
        try:
            yield emulator
        finally:
            point_discord_at(DEFAULT_API_BASE, DEFAULT_GATEWAY_URL)


@pytest.fixture
async def bot(emu: DiscordEmulator):
    client = make_bot()
    await client.login("fake-token")
    task = asyncio.create_task(client.connect(reconnect=False))
    try:
        await emu.wait_ready()
        await asyncio.wait_for(client.wait_until_ready(), 5)
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


def test_point_discord_at_sets_endpoints():
    import discord.gateway
    import discord.http
    import yarl

    try:
        point_discord_at("http://127.0.0.1:1/api/v10/", "ws://127.0.0.1:1/gateway")
        assert discord.http.Route("GET", "/users/@me").url == "http://127.0.0.1:1/api/v10/users/@me"
        assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == yarl.URL("ws://127.0.0.1:1/gateway")
    finally:
        point_discord_at(DEFAULT_API_BASE, DEFAULT_GATEWAY_URL)
    assert discord.http.Route.BASE == "https://discord.com/api/v10"
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == yarl.URL("wss://gateway.discord.gg/")


async def test_login_sync_and_ready(emu: DiscordEmulator, bot: commands.Bot):
    assert bot.user.id == emu.bot_user_id
    assert bot.application_id == emu.application_id
    assert emu.identify["token"] == "fake-token"
    synced = {c["name"]: c for c in emu.commands[None]}
    assert set(synced) == {"echo", "size"}
    assert [(o["name"], o["type"]) for o in synced["size"]["options"]] == [("image", 11), ("scale", 4)]
    sync = await emu.wait_for(lambda r: r.method == "PUT" and r.path.endswith("/commands"))
    assert sync.status == 200


async def test_echo_defers_edits_with_png_and_button_click(emu: DiscordEmulator, bot: commands.Bot):
    inter = await emu.slash("echo", {"text": "hello"})
    callback = await inter.wait_callback(timeout=3)
    assert callback["type"] == 5
    assert callback["at"] - inter.dispatched_at < 3

    original = await inter.wait_original(lambda m: m["attachments"])
    assert original["content"] == "echo: hello"
    assert not original["flags"] & 128  # no longer "thinking"
    [att] = original["attachments"]
    assert att["filename"] == "echo.png" and (att["width"], att["height"]) == (16, 8)
    edit = await emu.wait_for(lambda r: r.method == "PATCH" and r.path.endswith("/messages/@original"))
    [(filename, data)] = edit.files
    assert filename == "echo.png"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (16, 8) and img.getpixel((0, 0)) == (255, 0, 0)
    button = original["components"][0]["components"][0]
    assert button["custom_id"] == "test:b:7"

    click = await emu.click(int(original["id"]), "test:b:7")
    reply = await click.wait_callback()
    assert reply["type"] == 4
    assert reply["data"]["content"] == "clicked 7"
    assert reply["data"]["flags"] & 64
    assert click.original["flags"] & 64  # stored as ephemeral

    # A second answer to the same interaction is refused, as Discord does.
    async with aiohttp.ClientSession() as session:
        url = f"{emu.api_base}/interactions/{click.id}/{click.token}/callback"
        async with session.post(url, json={"type": 6}) as resp:
            assert resp.status == 400 and resp.headers["Content-Type"] == "application/json"
            assert (await resp.json())["code"] == 40060
    assert click.callbacks == [reply]


async def test_attachment_option_is_downloaded(emu: DiscordEmulator, bot: commands.Bot):
    data = png_bytes((32, 32), "blue")
    att = emu.add_attachment("in.png", data)
    inter = await emu.slash("size", {"image": att["id"], "scale": 2}, attachments={att["id"]: att})
    original = await inter.wait_original(lambda m: m["content"])
    assert original["content"] == f"in.png: {len(data) * 2} bytes"
    assert inter.callbacks[0]["type"] == 4

    # an attachment object may be passed directly, and a DM works too
    inter = await emu.slash("size", {"image": att}, guild=False)
    assert "user" in inter.payload and "member" not in inter.payload
    original = await inter.wait_original(lambda m: m["content"])
    assert original["content"] == f"in.png: {len(data)} bytes"


async def test_unknown_route_is_recorded_as_404(emu: DiscordEmulator, bot: commands.Bot):
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/guilds/{guild_id}/nothing", guild_id=1))
    rec = await emu.wait_for(lambda r: r.status == 404)
    assert rec.path == "/guilds/1/nothing"


# -- Discord's limits, as the emulator enforces them --------------------------------------------


async def test_messages_over_discords_limits_are_refused_as_discord_does(emu: DiscordEmulator, bot: commands.Bot):
    channel = bot.get_partial_messageable(emu.channel_id)
    fits = await channel.send("x" * 2000)
    assert emu.messages[fits.id]["content"] == "x" * 2000
    for too_long in ("x" * 2001, "🦊" * 1001):  # an emoji outside the BMP counts twice (UTF-16)
        with pytest.raises(discord.HTTPException) as refused:
            await channel.send(too_long)
        assert (refused.value.status, refused.value.code) == (400, 50035)
        assert "content" in str(refused.value) and "2000 or fewer" in str(refused.value)

    def embed(**values) -> discord.Embed:
        made = discord.Embed(title=values.pop("title", "t"), description=values.pop("description", None))
        for name, value in values.get("fields", []):
            made.add_field(name=name, value=value)
        return made

    for bad in (embed(title="t" * 257), embed(description="d" * 4097), embed(fields=[("n", "v" * 1025)]),
                embed(fields=[("n" * 257, "v")]), embed(fields=[("n", "v")] * 26)):
        with pytest.raises(discord.HTTPException) as refused:
            await channel.send(embed=bad)
        assert (refused.value.status, refused.value.code) == (400, 50035)
    # each embed within its own limits, but six of them over the 6,000 of a whole message
    six = [embed(title="t" * 200, description="d" * 900) for _ in range(6)]
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(embeds=six)
    assert refused.value.code == 50035 and "6000" in str(refused.value)
    assert (await channel.send(embeds=six[:5])).embeds

    view = discord.ui.View()
    view.add_item(discord.ui.Button(label="L" * 81, custom_id="long"))
    with pytest.raises(discord.HTTPException):
        await channel.send("buttons", view=view)
    # nothing refused was stored
    assert [m["content"] for m in emu.messages.values()] == ["x" * 2000, ""]


async def test_an_edit_to_an_empty_message_is_refused(emu: DiscordEmulator, bot: commands.Bot):
    channel = bot.get_partial_messageable(emu.channel_id)
    sent = await channel.send(embed=discord.Embed(title="a page"))
    with pytest.raises(discord.HTTPException) as refused:
        await sent.edit(embeds=[])
    assert (refused.value.status, refused.value.code) == (400, 50006)
    assert emu.messages[sent.id]["embeds"][0]["title"] == "a page"
    await sent.edit(content="no pages any more", embeds=[])
    assert emu.messages[sent.id]["content"] == "no pages any more" and not emu.messages[sent.id]["embeds"]
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(view=discord.ui.View().add_item(discord.ui.Button(label="only a button", custom_id="b")))
    assert refused.value.code == 50006


async def test_bare_links_are_unfurled_and_wrapped_or_suppressed_ones_are_not(emu: DiscordEmulator,
                                                                            bot: commands.Bot):
    channel = bot.get_partial_messageable(emu.channel_id)
    bare = await channel.send("look https://example.com/a_b and HTTP://shout.example")
    escaped = await channel.send(r"look \<https://escaped.example>")  # an escaped < is no wrapping
    await channel.send("look <https://example.com/wrapped> or **<http://bold.example/x>**")
    await channel.send("look https://example.com/suppressed", suppress_embeds=True)
    assert emu.unfurled == [(bare.id, "https://example.com/a_b"), (bare.id, "HTTP://shout.example"),
                            (escaped.id, "https://escaped.example>")]
    await bare.edit(content="now <https://example.com/a_b>")
    assert len(emu.unfurled) == 3

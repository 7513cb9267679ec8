"""Where the discord.py client sends its REST calls and opens its gateway websocket.

By default, Discord's own endpoints. An admin can point the bot at a REST proxy (or the
test suite at a local Discord emulator) with :func:`point_discord_at`, which must run
before ``Client.login``.
"""

from __future__ import annotations

import discord.gateway
import discord.http
import yarl

from bot.settings import DEFAULT_API_BASE, DEFAULT_GATEWAY_URL  # noqa: F401 - Discord's own, the defaults


def point_discord_at(api_base: str, gateway_url: str) -> None:
    """Send every REST call to ``api_base`` and connect the gateway to ``gateway_url``.

    discord.py builds every REST URL (interaction callbacks and webhook edits included)
    from ``Route.BASE`` (a ``str``) and opens its first gateway connection at
    ``DiscordWebSocket.DEFAULT_GATEWAY`` (a ``yarl.URL``); later ones go to the
    ``resume_gateway_url`` the gateway itself announces in READY.
    """
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)

"""A server's rules that refuse every job at once: paused, or a channel not in its list."""

from __future__ import annotations

from bot.intake import id_list
from storage.models import ServerRules

PAUSED = "Pintor is paused on this server by its admins. Try again later."


def answer_refusal(rules: ServerRules | None, channel_id: int | None, *, check_channel: bool = True) -> str | None:
    """Why Pintor takes no job at all under a server's `rules` (None: no server's), whatever is
    asked: paused, or (with `check_channel`; not for a DM about a server's job) `channel_id` not
    in its channel list; None where it answers. A button that opens a form checks this first, so
    that a member does not type into a form that will be refused."""
    if rules is not None and rules.paused:
        return PAUSED
    return channel_refusal(rules, channel_id) if check_channel else None


def channel_refusal(rules: ServerRules | None, channel_id: int | None) -> str | None:
    """Why Pintor does not answer in `channel_id` under a server's channel list; None where it
    does (no list, or a listed channel)."""
    channels = id_list(rules.channel_ids) if rules is not None else []
    if channels and channel_id not in channels:
        return "Pintor does not answer in this channel. Use one of: " + ", ".join(f"<#{c}>" for c in channels) + "."
    return None

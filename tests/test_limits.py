"""bot/limits.py: member text echoed safely, and messages that stay inside Discord's limits."""

from __future__ import annotations

import re
import unicodedata

import pytest

from bot.limits import (
    CONTENT,
    FSI,
    PDI,
    Echo,
    clean,
    clip,
    compose,
    echo,
    embeds_length,
    length,
    listing,
    plain,
    shares,
)

MENTION = "— <@123456789012345678>"
ESCAPED_RUN = re.compile(r"(\\[\\*_~|`\[\]<]|[^\\])*")  # text whose every backslash starts an escape


def test_length_counts_utf16_units():
    assert length("abc") == 3 and length("🦊") == 2 and length("é") == 1 and length("") == 0


@pytest.mark.parametrize("text", ["_" * 990, "*" * 1000, "\\" * 1000, "a_" * 700, "[x](y)" * 300, "🦊_" * 600])
def test_only_the_member_text_is_shortened_and_no_escape_is_split(text):
    content = compose("**", Echo(text), "** ", Echo("--ar 3:2"), f" {MENTION}\nseed 5 · tiny-sd · job 42")
    assert length(content) <= CONTENT
    assert content.endswith(f"** --ar 3:2 {MENTION}\nseed 5 · tiny-sd · job 42")
    shown = content[2:content.index("** --ar")]
    assert shown.endswith("…") and ESCAPED_RUN.fullmatch(shown[:-1]), shown[-20:]
    assert length(content) >= CONTENT - 2  # the room is used, not thrown away


def test_two_long_member_texts_share_the_room_and_a_short_one_stays_whole():
    prompt, negative = "_" * 1000, "*" * 1000
    content = compose("**", Echo(prompt), "** ", Echo("--no " + negative), " ", Echo("--ar 3:2"), f" {MENTION}")
    assert length(content) <= CONTENT and content.endswith(f"… --ar 3:2 {MENTION}")
    first, second = content.split("** ")
    assert abs(length(first) - length(second)) < 40  # equal shares


def test_fixed_parts_alone_too_long_are_cut_at_the_end():
    content = compose("line one\n", Echo("prompt"), "\n" + "x" * 3000)  # no room left for the echo
    assert length(content) == CONTENT and content.startswith("line one\n\nxxx") and content.endswith("…")


def test_echo_escapes_markdown_masked_links_and_mentions():
    assert echo("a_b *c* ~~d~~ ||e|| `f` [g](h) <@1> <#2> \\") == \
        r"a\_b \*c\* \~\~d\~\~ \|\|e\|\| \`f\` \[g\](h) \<@1> \<#2> \\"
    assert echo("  plain words  ") == "plain words" and echo("") == ""


@pytest.mark.parametrize("text, wrapped", [
    ("a cat https://example.com/cat_pic.png now", "a cat <https://example.com/cat_pic.png> now"),
    ("HTTP://SHOUT.example/x?a=1&b=_2", "<HTTP://SHOUT.example/x?a=1&b=_2>"),
    ("[free](https://evil.example)", r"\[free\](<https://evil.example>)"),
    ("<https://already.example>", r"\<<https://already.example>>"),
    ("two:https://a.example,https://b.example", "two:<https://a.example,https://b.example>"),
])
def test_echoed_links_are_wrapped_so_discord_does_not_unfurl_them(text, wrapped):
    assert echo(text) == wrapped


def test_a_link_cut_short_is_still_wrapped():
    shown = echo("see https://example.com/" + "a" * 100, 40)
    assert length(shown) <= 40 and shown.startswith("see <https://example.com/") and shown.endswith(">…")


@pytest.mark.parametrize("control", ["\u202e", "\u202d", "\u202a", "\u202b", "\u202c", "\u2066", "\u2067",
                                     "\u2068", "\u2069", "\u200e", "\u200f", "\u061c", "\u200b", "\u2060",
                                     "\ufeff", "\u3164", "\U000e0041", "\n", "\r", "\t", "\x00", "\u2028"])
def test_direction_controls_and_invisible_characters_are_removed(control):
    shown = echo(f"{control}evil{control} prompt{control}")
    assert shown in ("evil prompt", "evil  prompt"), repr(shown)


def test_right_to_left_text_is_isolated_and_left_to_right_text_is_not():
    assert echo("שלום עולם") == f"{FSI}שלום עולם{PDI}"
    assert echo("\u202eشمس\u2069 sun") == f"{FSI}شمس sun{PDI}"  # an unpaired PDI cannot close our isolate
    assert echo("a red fox") == "a red fox"
    shown = echo("שלום " * 100, 50)
    assert shown.startswith(FSI) and shown.endswith(f"…{PDI}") and length(shown) <= 50


def test_emoji_sequences_keep_their_joiners_and_tags():
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    family = "👩\u200d👩\u200d👧"
    assert clean(f"{england} {family} ❤\ufe0f") == f"{england} {family} ❤\ufe0f"
    assert clean("hidden\U000e0068\U000e0069 text") == "hidden text"


def test_no_format_character_that_reorders_survives():
    every = "".join(chr(c) for c in range(0x10000) if unicodedata.bidirectional(chr(c)) in
                    ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI", "FSI", "PDI"))
    assert clean(f"a{every}b") == "ab"


def test_plain_keeps_pintors_sentence_and_its_mentions_but_not_previews_or_controls():
    text = plain("⚠️ Unknown parameter --x https://evil.example. Use one of: <#123>, \u202e<#456>.")
    assert text == "⚠️ Unknown parameter --x <https://evil.example>. Use one of: <#123>, <#456>."
    assert plain("see <https://kept.example>") == "see <https://kept.example>"
    assert length(plain("x" * 5000)) == CONTENT


def test_clip_and_listing():
    assert clip("abcdef", 4) == "abc…" and clip("abc", 3) == "abc" and clip("🦊🦊🦊", 4) == "🦊…"
    lines = [f"job {n} (imagine): position {n}" for n in range(1, 41)]
    shown = listing(lines, 1024)
    assert length(shown) <= 1024 and shown.startswith("job 1 (imagine)")
    kept = shown.splitlines()[:-1]
    assert kept == lines[:len(kept)] and shown.splitlines()[-1] == f"… and {40 - len(kept)} more"
    assert listing(lines[:3], 1024) == "\n".join(lines[:3]) and listing([], 10) == "none"
    assert listing(["<#1>", "<#2>", "<#3>"], 18, separator=", ") == "<#1>, … and 2 more"
    assert listing(["<#1>", "<#2>", "<#3>"], 17, separator=", ") == "… and 3 more"


def test_shares_give_short_texts_what_they_want():
    assert shares([10, 500, 2000], 1000) == [10, 495, 495]
    assert shares([10, 20], 1000) == [10, 20] and shares([5], -3) == [0]


def test_embeds_length_counts_what_discord_counts():
    embed = {"title": "t" * 10, "description": "d" * 20, "fields": [{"name": "n", "value": "v" * 5}],
             "footer": {"text": "f" * 3}, "author": {"name": "a" * 2}, "url": "https://not.counted"}
    assert embeds_length([embed, embed]) == 2 * (10 + 20 + 1 + 5 + 3 + 2)


# -- any member text at all (property tests) ---------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.discord_emulator import unfurled_links  # noqa: E402 - what Discord would preview
from tests.properties import examples  # noqa: E402

MEMBER_TEXT = st.text(st.characters(codec="utf-8"), max_size=1500) | st.lists(
    st.sampled_from(["_", "*", "\\", "`", "|", "<@1>", "https://a.example/x_y", "\u202e", "\u2069", "שלום", "🦊",
                     " ", "\n", "\u200b", "[", "](", "http://b.example"]), max_size=700).map("".join)


@settings(max_examples=examples(150))
@given(prompt=MEMBER_TEXT, negative=MEMBER_TEXT)
def test_any_member_text_fits_keeps_the_fixed_parts_and_cannot_unfurl_or_reorder(prompt, negative):
    fixed_end = f" {MENTION}\nseed 5 · tiny-sd · job 42"
    content = compose("**", Echo(prompt), "** ", Echo("--no " + negative), fixed_end)
    assert length(content) <= CONTENT and content.startswith("**") and content.endswith(fixed_end)
    echoed = content[:-len(fixed_end)]
    assert not [c for c in echoed if unicodedata.bidirectional(c) in
                ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI", "RLI") or c in "\n\r\u200b\u202e"]
    assert echoed.count(FSI) == echoed.count(PDI) <= 2
    assert unfurled_links(echoed) == []  # every link Discord would find is in <…>
    assert "<@" not in echoed.replace("\\<@", "")  # no mention made by the member's text


def test_a_cut_leaves_no_joiner_or_half_flag_dangling():
    family = "👩\u200d👩\u200d👧"
    assert echo(f"ab {family} cd", 5) == "ab…"
    assert echo(f"ab {family} cd", 6) == "ab 👩…"
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    assert echo(f"x{england}", 5) == "x…"

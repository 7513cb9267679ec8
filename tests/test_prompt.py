import dataclasses
import math
import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from generation.prompt import (
    _CONTROL_RE,
    MAX_PROMPT_CHARS,
    MAX_REPEAT,
    ParsedPrompt,
    PromptError,
    PromptPart,
    emphasis_segments,
    format_parameters,
    has_emphasis,
    image_link,
    parse_prompt,
    plain_text,
    size_for_aspect,
    weight_sides,
)
from tests.properties import examples

pytestmark = pytest.mark.smoke  # also run on the dependency floors (constraints-floors.txt)


def error_for(text: str, **kwargs) -> str:
    with pytest.raises(PromptError) as info:
        parse_prompt(text, **kwargs)
    return str(info.value)


# --- plain text -------------------------------------------------------------


def test_plain_prompt_has_defaults():
    p = parse_prompt("  a red   fox\tin the\nsnow  ")
    assert p == ParsedPrompt(parts=(PromptPart("a red fox in the snow"),))
    assert p.text == "a red fox in the snow"
    assert p.given == frozenset()
    assert (p.aspect, p.seed, p.chaos, p.stylize, p.quality, p.steps, p.model, p.negative) == (
        (1, 1), None, 0, None, 1.0, None, None, "")
    assert format_parameters(p) == ""


def test_single_colons_are_text():
    p = parse_prompt("ratio 3:2 at noon: nice")
    assert p.parts == (PromptPart("ratio 3:2 at noon: nice"),)


def test_lone_dashes_are_text():
    assert parse_prompt("a — b -- c --5").text == "a — b -- c --5"


def test_control_characters_count_as_whitespace():
    assert parse_prompt("a\x00b\x07 c\x1b").text == "a b c"
    assert parse_prompt("a\u200b--seed\ufeff 7").seed == 7
    assert parse_prompt("family 👨\u200d👩\u200d👧").text == "family 👨\u200d👩\u200d👧"


@pytest.mark.parametrize("text", ["", "   ", "--ar 16:9", "\x00"])
def test_empty_prompt(text):
    assert "no text" in error_for(text)


def test_prompt_too_long_says_length_and_limit():
    # long prompts are fine (the text encoder's cut is said when the pictures are made);
    # only text over the abuse limit is refused
    assert parse_prompt("x" * MAX_PROMPT_CHARS).text == "x" * MAX_PROMPT_CHARS
    assert MAX_PROMPT_CHARS >= 2000
    message = error_for("x" * (MAX_PROMPT_CHARS + 1))
    assert str(MAX_PROMPT_CHARS + 1) in message and str(MAX_PROMPT_CHARS) in message
    message = error_for("abcdef", max_chars=5)
    assert "6" in message and "5" in message


# --- parameters ---------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("16:9", (16, 9)), ("9:16", (9, 16)), ("1:1", (1, 1)), ("4:2", (2, 1)), ("3:1", (3, 1)),
    ("1:3", (1, 3)), ("10000:9999", (10000, 9999)), ("300:100", (3, 1)), ("016:09", (16, 9)),
])
def test_aspect_accepted(value, expected):
    for name in ("--ar", "--aspect", "--AR"):
        p = parse_prompt(f"cat {name} {value}")
        assert p.aspect == expected
        assert p.given == {"ar"}


@pytest.mark.parametrize("value", [
    "0:1", "1:0", "0:0", "16x9", "16:9:1", "16", "-1:1", "١٦:٩", "a:b", ":", "16:", "banana", "1..5:1",
])
def test_aspect_refused(value):
    assert "--ar" in error_for(f"cat --ar {value}")


@pytest.mark.parametrize("value, expected", [("0", 0), ("7", 7), ("007", 7), (str(2**32 - 1), 2**32 - 1)])
def test_seed_accepted(value, expected):
    p = parse_prompt(f"cat --seed {value}")
    assert p.seed == expected and p.given == {"seed"}


@pytest.mark.parametrize("value", [
    str(2**32), "-1", "+5", "1.0", "1e3", "inf", "nan", "-inf", "١٢", "1_000", "x", "9" * 3000,
])
def test_seed_refused(value):
    message = error_for(f"cat --seed {value}")
    assert "--seed" in message and "4294967295" in message


@pytest.mark.parametrize("name, field, lo, hi", [
    ("--chaos", "chaos", 0, 100), ("--c", "chaos", 0, 100),
    ("--stylize", "stylize", 0, 1000), ("--s", "stylize", 0, 1000),
    ("--steps", "steps", 1, 150),
])
def test_integer_parameters(name, field, lo, hi):
    canonical = "--" + field
    for value in (lo, (lo + hi) // 2, hi):
        assert getattr(parse_prompt(f"cat {name} {value}"), field) == value
    for bad in (lo - 1, "1.5", "ten", "２", "-5"):
        message = error_for(f"cat {name} {bad}")
        assert canonical in message and str(hi) in message and f"“{bad}”" in message
    # above the range, the intent is plain: the highest value, said
    p = parse_prompt(f"cat {name} {hi + 50}")
    assert getattr(p, field) == hi
    assert p.notices == (f"{canonical} “{hi + 50}” is over the highest value; used {hi}.",)


def test_steps_limit_is_configurable():
    assert parse_prompt("cat --steps 300", max_steps=300).steps == 300
    assert parse_prompt("cat --steps 21", max_steps=20).steps == 20
    assert "1 to 20" in error_for("cat --steps 0", max_steps=20)


@pytest.mark.parametrize("value, expected", [
    (".5", 0.5), ("0.5", 0.5), ("1", 1.0), ("1.0", 1.0), ("2", 2.0), ("2.0", 2.0),
])
def test_quality_accepted(value, expected):
    for name in ("--q", "--quality"):
        p = parse_prompt(f"cat {name} {value}")
        assert p.quality == expected and p.given == {"q"}


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "one", "1e0"])
def test_quality_refused(value):
    message = error_for(f"cat --q {value}")
    assert "--q" in message and "0.5, 1 or 2" in message


@pytest.mark.parametrize("value, expected", [(".25", 0.5), ("0", 0.5), ("4", 2.0), ("3", 2.0),
                                             ("1.5", 2.0), ("0.75", 1.0), ("1.2", 1.0)])
def test_quality_brought_to_the_nearest(value, expected):
    p = parse_prompt(f"cat --q {value}")
    assert p.quality == expected
    assert p.notices == (f"--q “{value}”: used the nearest quality, {expected:g} (one of 0.5, 1, 2).",)


@pytest.mark.parametrize("value", ["sdxl", "SD-1.5", "flux_dev", "a", "9" + "x" * 63])
def test_model_accepted(value):
    assert parse_prompt(f"cat --model {value}").model == value


@pytest.mark.parametrize("value", ["-sdxl", ".hidden", "a/b", "a" * 65, "naïve", "x;rm"])
def test_model_refused(value):
    assert "--model" in error_for(f"cat --model {value}")


def test_negative_prompt_takes_words_until_next_parameter():
    p = parse_prompt("a street --no people,   cars and  text --ar 2:1")
    assert p.negative == "people, cars and text"
    assert p.aspect == (2, 1)
    assert p.given == {"no", "ar"}


def test_negative_prompt_errors():
    assert "--no" in error_for("cat --no")
    assert "--no" in error_for("cat --no --ar 1:1")
    message = error_for("cat --no " + "y" * 20, max_chars=10)
    assert "29" in message and "10" in message


def test_dashes_from_phones_and_case():
    p = parse_prompt("cat —ar 16:9 –seed 3 —-chaos 5 --NO Dogs --Model X1")
    assert (p.aspect, p.seed, p.chaos, p.negative, p.model) == ((16, 9), 3, 5, "Dogs", "X1")


def test_unknown_parameters_in_strict_mode_are_refused_all_named():
    message = error_for("cat --foo 3 --raw --sref 12 --foo 4", strict=True)
    assert "“--foo”" in message and "“--raw”" in message and "“--sref”" in message
    for name in ("--ar", "--seed", "--no", "--chaos", "--stylize", "--q", "--steps", "--model"):
        assert name in message
    # the same prompt, not strict: made, every one named once
    p = parse_prompt("cat --foo 3 --raw --sref 12 --foo 4")
    assert p.text == "cat"
    assert p.notices == ("Ignored what Pintor does not have: “--foo 3” (×2), “--raw”; "
                         "“--sref 12” — Pintor has image prompts (links at the start of the prompt, --iw), "
                         "not style or character references.",)


@pytest.mark.parametrize("name", ["--ar", "--seed", "--chaos", "--stylize", "--q", "--steps", "--model"])
def test_missing_value(name):
    assert name in error_for(f"cat {name}")
    assert name in error_for(f"cat {name} --no dogs")


def test_parameter_given_twice():
    assert "--seed" in error_for("cat --seed 1 --seed 2")
    assert "--ar" in error_for("cat --ar 1:1 --aspect 2:1")
    p = parse_prompt("cat --no a --no b, c")
    assert p.negative == "a, b, c" and p.notices == ("Merged the --no lists “a”, “b, c” into one.",)


def test_words_after_a_value_are_prompt_text_and_said():
    p = parse_prompt("cat --seed 1 2")
    assert (p.text, p.seed) == ("cat 2", 1)
    assert p.notices == ("Read “2” after “--seed” as prompt text.",)
    p = parse_prompt("--ar 16:9 a cat")
    assert (p.text, p.aspect) == ("a cat", (16, 9))


# --- multi-prompts --------------------------------------------------------------


def test_weights():
    p = parse_prompt("text::2 other text::1")
    assert p.parts == (PromptPart("text", 2.0), PromptPart("other text", 1.0))
    assert p.text == "text::2 other text::1"


def test_weights_defaults_and_display():
    assert parse_prompt("a:: b").parts == (PromptPart("a"), PromptPart("b"))
    assert parse_prompt("a::0.5 b c").parts == (PromptPart("a", 0.5), PromptPart("b c"))
    assert parse_prompt("a::.5 b::-0.25").text == "a::0.5 b::-0.25"
    assert parse_prompt("a:: b").text == "a::1 b::1"
    assert parse_prompt("hot dog::1.5 --ar 2:1").aspect == (2, 1)


def test_single_part_weight_is_normalised():
    p = parse_prompt("a castle::2")
    assert p.parts == (PromptPart("a castle", 1.0),)
    assert p.text == "a castle"


@pytest.mark.parametrize("text, named", [("a::1e999 b", "“::1e999” after “a”"),
                                         ("a::-1e999 b::1", "“::-1e999” after “a”")])
def test_weight_refused(text, named):
    """A weight too large for a float (1e999 reads as infinity) is refused as too large, not as
    "not a number" (the tester's `a::1e999` was told to write a number)."""
    message = error_for(text)
    assert "weight" in message and named in message and "too large" in message
    assert "write a number" not in message


def test_weights_are_relative_of_any_size():
    assert parse_prompt("castle::20 fog::5").parts == (PromptPart("castle", 20.0), PromptPart("fog", 5.0))
    assert parse_prompt("a::-10.5 b::100").parts == (PromptPart("a", -10.5), PromptPart("b", 100.0))


@pytest.mark.parametrize("text, parts", [
    ("a::b", (PromptPart("a"), PromptPart("b"))),
    ("a::x", (PromptPart("a"), PromptPart("x"))),
    ("a::2b c", (PromptPart("a"), PromptPart("2b c"))),
    ("a::inf b", (PromptPart("a"), PromptPart("inf b"))),
    ("hot dog::red sauce::2", (PromptPart("hot dog"), PromptPart("red sauce", 2.0))),
])
def test_text_glued_after_double_colon_is_text(text, parts):
    assert parse_prompt(text).parts == parts
    if text != "hot dog::red sauce::2":
        assert parse_prompt(text).parts == parse_prompt(text.replace("::", ":: ")).parts


@pytest.mark.parametrize("text, named", [
    ("::2 a", "“::2” at the start"), ("a::2 ::1", "“::1” after “a::2”"), ("a:::: b", "“::” after “a::”"),
    ("::", "“::” at the start"),
    # the tester's example: which part is empty, quoted (it said only "a part … is empty")
    ("castle::1 fog::-.5::2", "“::2” after “fog::-.5”"), ("castle::1 fog::2 ::", "“::” after “fog::2”"),
])
def test_empty_part_refused_naming_it(text, named):
    message = error_for(text)
    assert "empty" in message and f"{named} has no text before it" in message
    assert_names_the_input(message.replace("'::'", ""), text)


@pytest.mark.parametrize("text, shown", [("a::1 b::-1", "“a::1”, “b::-1” add up to 0"),
                                         ("a::-2 b::1", "“a::-2”, “b::1” add up to -1")])
def test_weights_must_sum_above_zero(text, shown):
    message = error_for(text)
    assert "more than 0" in message and shown in message
    assert " = " not in message  # it read "-1 = -1" for a lone weight


def test_part_ending_in_colon_round_trips():
    p = parse_prompt("ratio 3: ::2 b")
    assert p.parts == (PromptPart("ratio 3:", 2.0), PromptPart("b"))
    assert parse_prompt(p.text) == p


# --- format_parameters ------------------------------------------------------------


def test_format_parameters_is_canonical():
    p = parse_prompt("cat —aspect 4:2 --SEED 007 --c 5 --s 50 --quality .5 --steps 30 "
                     "--model sdxl --no dogs,  cats")
    assert format_parameters(p) == (
        "--ar 2:1 --seed 7 --no dogs, cats --chaos 5 --stylize 50 --q 0.5 --steps 30 --model sdxl")
    assert parse_prompt(p.text + " " + format_parameters(p)) == p


# --- size_for_aspect -------------------------------------------------------------------


def test_size_for_aspect_examples():
    assert size_for_aspect((1, 1), 512) == (512, 512)
    assert size_for_aspect((1, 1), 1024) == (1024, 1024)
    assert size_for_aspect((16, 9), 1024) == (1344, 768)
    assert size_for_aspect((9, 16), 1024) == (768, 1344)
    assert size_for_aspect((1, 1), 512, multiple=8) == (512, 512)


@pytest.mark.parametrize("aspect", [(1, 1), (16, 9), (9, 16), (4, 3), (3, 4), (3, 2), (2, 3),
                                    (21, 9), (3, 1), (1, 3), (5, 4)])
@pytest.mark.parametrize("native", [512, 768, 1024])
def test_size_for_aspect_properties(aspect, native):
    w, h = aspect
    width, height = size_for_aspect(aspect, native)
    assert width % 64 == 0 and height % 64 == 0
    assert width >= 64 and height >= 64
    assert abs(math.log((width / height) / (w / h))) < 0.1
    assert 0.8 < width * height / native**2 < 1.25
    if w > h:
        assert width > height
    elif w < h:
        assert width < height
    else:
        assert width == height


@given(st.integers(1, 10_000), st.integers(1, 10_000), st.integers(64, 2048),
       st.sampled_from([8, 16, 64]))
@settings(max_examples=examples(200))
def test_size_for_aspect_any_ratio(w, h, native, multiple):
    width, height = size_for_aspect((w, h), native, multiple)
    assert width % multiple == 0 and height % multiple == 0
    assert width >= multiple and height >= multiple
    assert (width >= height) if w >= h else (width <= height)


# --- property tests ---------------------------------------------------------------------

# Real parameter tokens and tricky values, mixed with random text, so that random
# inputs reach deep into the parser rather than failing at the first word.
TOKENS = st.sampled_from([
    "--ar", "—ar", "–aspect", "--AR", "--seed", "—seed", "--no", "—no", "--c", "--chaos",
    "--s", "--stylize", "--q", "--quality", "--steps", "--model", "--foo", "—", "--", "---ar",
    "::", "::2", "::-1", "::0", "::.5", "::1e999", ":::", ":", "a::", "::x",
    "16:9", "1:3", "4:1", "0:1", "1:0", "1", "0", "100", "1000", "4294967296", ".5", "2.0",
    "inf", "nan", "-1", "١٢", "²", "9" * 50, "sdxl", "a cat", "people, text", "\x00", "\u200b",
])
WORDS = st.one_of(TOKENS, st.text(max_size=8))
MIXED = st.lists(WORDS, max_size=14).flatmap(
    lambda words: st.lists(st.sampled_from([" ", "  ", "\t", "\n", ""]),
                           min_size=len(words), max_size=len(words))
    .map(lambda gaps: "".join(g + w for g, w in zip(gaps, words, strict=True))))


def check_parse(text: str) -> None:
    try:
        p = parse_prompt(text)
    except PromptError as err:
        assert str(err)
        return
    assert p.parts and all(part.text for part in p.parts)
    # Whatever parses, its canonical form parses back to the same thing.
    again = parse_prompt(" ".join([*p.image_urls, p.text, format_parameters(p)]))
    assert without_negative_notice(again) == dataclasses.replace(p, notices=())
    # every notice names something that really is in the input
    for notice in p.notices:
        assert_names_the_input(notice, text)


def without_negative_notice(p: ParsedPrompt) -> ParsedPrompt:
    """`p` without the notice that says how its negative parts are read (said each time a
    prompt with one is read, its canonical form too)."""
    return dataclasses.replace(p, notices=tuple(n for n in p.notices if " as less of " not in n))


def assert_names_the_input(notice: str, text: str) -> None:
    quoted = re.findall(r"“(.*?)”", notice)
    assert quoted, notice
    flat = " ".join(_CONTROL_RE.sub(" ", text).split())
    for fragment in quoted:
        fragment = fragment.removesuffix("…")
        assert fragment in flat, (notice, text)


@given(st.text())
@settings(max_examples=examples(300))
def test_arbitrary_text_raises_only_prompt_error(text):
    check_parse(text)


@given(MIXED)
@settings(max_examples=examples(400))
def test_mixed_tokens_raise_only_prompt_error(text):
    check_parse(text)


WORD_CHARS = "abcxyzABC0129,.!?'()éü"
WORD = st.builds(
    lambda head, tail: head + (":" + tail if tail else ""),
    st.text(WORD_CHARS, min_size=1, max_size=8), st.text("ab12", max_size=3))
PHRASE = st.lists(WORD, min_size=1, max_size=5).map(" ".join)
# a part of weight 0 is left out when parsed (said): never in a parsed prompt
WEIGHT = st.floats(-10, 10, allow_nan=False).map(lambda w: w + 0.0).filter(lambda w: w != 0)


@st.composite
def parsed_prompts(draw):
    texts = draw(st.lists(PHRASE, min_size=1, max_size=4))
    if len(texts) == 1:
        weights = [1.0]
    else:
        weights = draw(st.lists(WEIGHT, min_size=len(texts), max_size=len(texts)))
        assume(sum(weights) > 0)
    names = draw(st.sets(st.sampled_from(["ar", "seed", "no", "chaos", "stylize", "q", "steps", "model"])))
    fields: dict[str, Any] = {}  # ParsedPrompt's fields, each of its own type
    if "ar" in names:
        w = draw(st.integers(1, 10_000))
        h = draw(st.integers(max(1, -(-w // 3)), min(10_000, 3 * w)))
        g = math.gcd(w, h)
        fields["aspect"] = (w // g, h // g)
    if "seed" in names:
        fields["seed"] = draw(st.integers(0, 2**32 - 1))
    if "no" in names:
        fields["negative"] = draw(PHRASE)
    if "chaos" in names:
        fields["chaos"] = draw(st.integers(0, 100))
    if "stylize" in names:
        fields["stylize"] = draw(st.integers(0, 1000))
    if "q" in names:
        fields["quality"] = draw(st.sampled_from([0.5, 1.0, 2.0]))
    if "steps" in names:
        fields["steps"] = draw(st.integers(1, 150))
    if "model" in names:
        fields["model"] = draw(st.text("aZ09", min_size=1, max_size=1)) + draw(
            st.text("aZ09._-", max_size=63))
    parts = tuple(PromptPart(t, w) for t, w in zip(texts, weights, strict=True))
    return ParsedPrompt(parts=parts, given=frozenset(names), **fields)


@given(parsed_prompts())
@settings(max_examples=examples(300))
def test_format_parameters_round_trip(p):
    again = parse_prompt(p.text + " " + format_parameters(p))
    # a negative part is said each time it is read (how it is read: less of it, as --no)
    assert len(again.notices) - len(without_negative_notice(again).notices) == any(x.weight < 0 for x in p.parts)
    assert without_negative_notice(again) == p


# --- prompts as members paste them: one table per category --------------------------------------
# Written after MidJourney's public gallery and Stable Diffusion sharing sites: what members paste.

# (prompt, text made, parameters as given, selectors, notices in order)
MIDJOURNEY_GALLERY = [
    ("cinematic still of an old fisherman mending nets at dawn, fog, kodak portra 400 --ar 16:9 --v 6.0 "
     "--style raw --s 250",
     "cinematic still of an old fisherman mending nets at dawn, fog, kodak portra 400",
     "--ar 16:9 --stylize 250", (("v", "6"), ("style", "raw")), ()),
    ("a cozy ramen shop in the rain at night, studio ghibli style --niji 6 --ar 2:3",
     "a cozy ramen shop in the rain at night, studio ghibli style", "--ar 2:3", (("niji", "6"),), ()),
    ("watercolor botanical pattern of ferns and moths --tile --v 5.2",
     "watercolor botanical pattern of ferns and moths", "--tile", (("v", "5.2"),), ()),
    ("watercolor botanical pattern of ferns and moths --raw --v 5.2",
     "watercolor botanical pattern of ferns and moths", "", (("v", "5.2"),),
     ("Ignored what Pintor does not have: “--raw”.",)),
    ("portrait of a knight in ornate silver armor, baroque painting --sref 2395876241 --sw 300 --p --v 6.1",
     "portrait of a knight in ornate silver armor, baroque painting", "", (("v", "6.1"),),
     ("Ignored what Pintor does not have: “--sref 2395876241”, “--sw 300” — Pintor has image prompts "
      "(links at the start of the prompt, --iw), not style or character references; “--p”.",)),
    ("isometric diorama of a tiny bakery, 3d render, soft light --w 1080 --h 720 --q 2",
     "isometric diorama of a tiny bakery, 3d render, soft light", "--q 2", (),
     ("Ignored what Pintor does not have: “--w 1080”, “--h 720” — use --ar for the shape.",)),
    ("https://s.mj.run/aB3dE5fG7hI cyberpunk street market, neon, rain --iw 1.5 --ar 9:16 --niji",
     "cyberpunk street market, neon, rain", "--ar 9:16 --iw 1.5", (("niji", ""),), ()),
    ("product photo of a perfume bottle on wet black stone --ar 4:5 --style raw --stylize 50 --weird 250 "
     "--chaos 30 --relax",
     "product photo of a perfume bottle on wet black stone", "--ar 4:5 --chaos 30 --stylize 50",
     (("style", "raw"),), ("Ignored what Pintor does not have: “--weird 250”, “--relax”.",)),
    ("character sheet of a fox adventurer --cref https://cdn.midjourney.com/a/0_0.png "
     "https://cdn.midjourney.com/b/0_1.png --cw 0 --v 6",
     # --cw is Pintor's ControlNet weight now: parsed here; bot.intake ignores it, with a
     # notice, where no control image comes with the prompt (MidJourney's --cw goes with --cref)
     "character sheet of a fox adventurer", "--cw 0", (("v", "6"),),
     None),  # checked apart: the long value is cut
]


@pytest.mark.parametrize("prompt, text, parameters, selectors, notices", MIDJOURNEY_GALLERY)
def test_midjourney_gallery_prompts(prompt, text, parameters, selectors, notices):
    p = parse_prompt(prompt)
    assert (p.text, format_parameters(dataclasses.replace(p, selectors=())), p.selectors) == (
        text, parameters, selectors)
    if "cref" in prompt:  # a long value is cut in the notice
        [notice] = p.notices
        assert notice.startswith("Ignored what Pintor does not have: “--cref https://cdn.midjourney.com/")
        assert "--cw" not in notice
    else:
        assert p.notices == notices
    for notice in p.notices:
        assert_names_the_input(notice, prompt)
    with pytest.raises(PromptError):  # a strict server refuses what it does not know
        if any(n.startswith("Ignored") for n in p.notices):
            parse_prompt(prompt, strict=True)
        else:
            raise PromptError("nothing unknown")


# (prompt, text made, a field and its value, the notice)
CLAMPED = [
    ("a panoramic mountain ridge at sunrise --ar 7:2", "aspect", (3, 1),
     "--ar “7:2”: used 3:1, the nearest ratio Pintor makes (from 3:1 to 1:3)."),
    ("a lighthouse on a cliff --ar 1:4", "aspect", (1, 3),
     "--ar “1:4”: used 1:3, the nearest ratio Pintor makes (from 3:1 to 1:3)."),
    ("anamorphic film still, desert convoy --ar 2.39:1", "aspect", (239, 100),
     "--ar “2.39:1”: used 239:100, the same ratio (from 3:1 to 1:3)."),
    ("a moth on lichen, macro --q 4", "quality", 2.0,
     "--q “4”: used the nearest quality, 2 (one of 0.5, 1, 2)."),
    ("quick sketch of a cat --q .25", "quality", 0.5,
     "--q “.25”: used the nearest quality, 0.5 (one of 0.5, 1, 2)."),
    ("surreal dreamscape of floating islands --chaos 150", "chaos", 100,
     "--chaos “150” is over the highest value; used 100."),
    ("oil painting of a harbour --s 2000", "stylize", 1000,
     "--stylize “2000” is over the highest value; used 1000."),
    ("a busy street --no cars --no people, text", "negative", "cars, people, text",
     "Merged the --no lists “cars”, “people, text” into one."),
]


@pytest.mark.parametrize("prompt, field, value, notice", CLAMPED)
def test_values_with_a_plain_intent_are_brought_into_range_and_said(prompt, field, value, notice):
    p = parse_prompt(prompt)
    assert getattr(p, field) == value
    assert p.notices == (notice,)
    assert_names_the_input(notice, prompt)


@pytest.mark.parametrize("prompt, shown", [
    ("a castle --ar banana", "“banana”"), ("a castle --ar 0:1", "“0:1”"), ("a castle --seed -1", "“-1”"),
    ("a castle --chaos -5", "“-5”"), ("a castle --steps 0", "“0”"), ("a castle --q high", "“high”"),
    ("castle::-1 fog::1", "“castle::-1”, “fog::1” add up to 0"), ("castle::-3", "(“castle::-3”)"),
])
def test_nonsense_is_refused_showing_the_value(prompt, shown):
    assert shown in error_for(prompt)


# (prompt, text made, parameters as given, notices)
PASTE_LEFTOVERS = [
    ("/imagine prompt: a red fox in the snow --ar 3:2", "a red fox in the snow", "--ar 3:2",
     ("Removed “/imagine prompt:” from the start: it is part of the command, not of the prompt.",)),
    ("/Imagine  prompt:a red fox", "a red fox", "",
     ("Removed “/Imagine prompt:” from the start: it is part of the command, not of the prompt.",)),
    ("a red fox ——ar 16:9 -—seed 5 –-chaos 20", "a red fox", "--ar 16:9 --seed 5 --chaos 20", ()),
    ("a red fox −ar 16:9 ‐‐seed 5", "a red fox", "--ar 16:9 --seed 5", ()),
    ("a red fox -- ar 16:9", "a red fox", "--ar 16:9",
     ("Read “-- ar” as --ar (write parameters without a space after the dashes).",)),
    ("a red fox --ar16:9", "a red fox", "--ar 16:9", ("Read “--ar16:9” as --ar 16:9.",)),
    ("a quiet room — no people, just light", "a quiet room — no people, just light", "", ()),
    ("a red fox --ar 16:9 in the snow", "a red fox in the snow", "--ar 16:9",
     ("Read “in the snow” after “--ar” as prompt text.",)),
    ("a red fox --raw seamless pattern", "a red fox seamless pattern", "",
     ("Read “seamless pattern” after “--raw” as prompt text.",
      "Ignored what Pintor does not have: “--raw”.")),
    ("a red fox https://i.imgur.com/y.png in <https://cdn.discordapp.com/a/b.jpg> snow",
     "a red fox in snow", "",
     ("Removed 2 links (“i.imgur.com”, “cdn.discordapp.com”) from the prompt: a link is an image prompt "
      "only at the start of the prompt, and elsewhere not words to draw.",)),
]


@pytest.mark.parametrize("prompt, text, parameters, notices", PASTE_LEFTOVERS)
def test_copy_and_paste_leftovers(prompt, text, parameters, notices):
    p = parse_prompt(prompt)
    assert (p.text, format_parameters(p), p.notices) == (text, parameters, notices)


# Stable Diffusion prompts as shared on model sites
STABLE_DIFFUSION = [
    ("(masterpiece:1.2), best quality, (detailed eyes:1.3), 1girl, silver hair, ((night sky)), [blurry]",
     "(masterpiece:1.2), best quality, (detailed eyes:1.3), 1girl, silver hair, ((night sky)), [blurry]", ()),
    ("portrait of a witch <lora:witchcraft_v2:0.8> dark forest, volumetric light",
     "portrait of a witch dark forest, volumetric light", ()),
    ("portrait of a witch <lyco:witchcraft_v2:0.8> dark forest", "portrait of a witch dark forest",
     ("Removed “<lyco:witchcraft_v2:0.8>”: LyCORIS and hypernetwork tags are not supported; "
      "LoRAs are: <lora:NAME:0.7> or --lora NAME:0.7.",)),
    ("a castle on a hill BREAK stormy sky, lightning", "a castle on a hill, stormy sky, lightning",
     ("Read “BREAK” as a comma: Pintor does not split the prompt into chunks.",)),
    ("a [cat|dog] sitting on a windowsill", "a cat, dog sitting on a windowsill",
     ("Read “[cat|dog]” as its words separated by commas: Pintor does not alternate words from step to step.",)),
]


@pytest.mark.parametrize("prompt, text, notices", STABLE_DIFFUSION)
def test_stable_diffusion_prompts(prompt, text, notices):
    p = parse_prompt(prompt)
    assert (p.text, p.notices) == (text, notices)


@pytest.mark.parametrize("prompt, loras, parameters, notices", [
    ("portrait of a witch <lora:witchcraft_v2:0.8> dark forest", (("witchcraft_v2", 0.8),),
     "--lora witchcraft_v2:0.8", ()),
    ("a cat --lora pixel-art", (("pixel-art", None),), "--lora pixel-art", ()),
    ("a cat --lora ink:0.5 --lora pixel-art:-1", (("ink", 0.5), ("pixel-art", -1.0)),
     "--lora ink:0.5 --lora pixel-art:-1", ()),
    ("a cat <lora:ink> —lora glow:1.25", (("glow", 1.25), ("ink", None)), "--lora glow:1.25 --lora ink", ()),
    ("a cat --lora ink:3", (("ink", 2.0),), "--lora ink:2",
     ("--lora “ink:3”: a LoRA's weight is from -2 to 2; used 2.",)),
    ("a cat --lora ink:0.5 <lora:Ink:1>", (("ink", 0.5),), "--lora ink:0.5",
     ("Read “<lora:Ink:1>” after “--lora” as prompt text.",
      "The LoRA “Ink” is named twice; used it once, as first given.")),
    ("a cat <lora:ink:0.8:0.5>", (("ink", 0.8),), "--lora ink:0.8",
     ("Read “<lora:ink:0.8:0.5>” as --lora ink:0.8: the weights after the first are not used.",)),
])
def test_loras_from_parameters_and_pasted_tags(prompt, loras, parameters, notices):
    p = parse_prompt(prompt)
    assert (p.loras, format_parameters(p), p.notices) == (loras, parameters, notices)
    assert "lora" not in p.text and parse_prompt(p.text + " " + parameters).loras == loras


@pytest.mark.parametrize("prompt, message", [
    ("a cat --lora", "--lora needs a value"),
    ("a cat --lora ink:strong", "--lora must be a LoRA's name"),
    ("a cat --lora ../../etc/passwd", "--lora must be a LoRA's name"),
    ("a cat <lora::0.5>", "must be <lora:NAME> or <lora:NAME:0.7>"),
    ("a cat <lora:ink:nan>", "must be <lora:NAME> or <lora:NAME:0.7>"),
    ("a cat " + " ".join(f"--lora l{i}" for i in range(9)), "names 9 LoRAs; at most 8"),
])
def test_bad_loras_are_refused_with_what_to_write(prompt, message):
    with pytest.raises(PromptError, match=re.escape(message)):
        parse_prompt(prompt)


@pytest.mark.parametrize("text, segments", [
    ("a (red:1.5) fox", (("a", 1.0), ("red", 1.5), ("fox", 1.0))),
    ("((night sky)), [blurry]", (("night sky", 1.21), (",", 1.0), ("blurry", 0.9091))),
    ("(a (b:2) c)", (("a", 1.1), ("b", 2.2), ("c", 1.1))),
    ("(a (b:2.0) c:0.5)", (("a", 0.5), ("b", 1.0), ("c", 0.5))),
    (r"a \(literal\) (x:1.2)", (("a (literal)", 1.0), ("x", 1.2))),
    ("unclosed (paren and [bracket", (("unclosed (paren and [bracket", 1.0),)),
    ("(photo:realistic)", (("photo:realistic", 1.1),)),
])
def test_emphasis_segments(text, segments):
    assert emphasis_segments(text) == segments


@pytest.mark.parametrize("text, emphasis", [
    ("a (red:1.5) fox", True), ("((night sky))", True), ("[blurry]", True),
    ("a cat (orange) on a mat", False),  # single parentheses are prose, as in MidJourney prompts
    ("a cat", False), ("ratio 3:2 (approx)", False),
])
def test_has_emphasis(text, emphasis):
    assert has_emphasis(text) is emphasis
    assert (plain_text(text) != text) is emphasis


@pytest.mark.parametrize("pasted, words", [
    (r"makima \(chainsaw man\), red hair", "makima (chainsaw man), red hair"),
    (r"a \[bracketed\] word", "a [bracketed] word"),
    (r"((masterpiece)), makima \(chainsaw man\)", "masterpiece , makima (chainsaw man)"),
])
def test_escaped_brackets_reach_the_model_as_brackets(pasted, words):
    r"""A Stable Diffusion tag such as "makima \(chainsaw man\)" sent its backslashes to the text
    encoder when the prompt had no emphasis (the weighted path already read the escapes)."""
    assert plain_text(pasted) == words


# --- more properties --------------------------------------------------------------------------

PASTED = st.sampled_from([
    "--v", "6", "6.0", "--niji", "--style", "raw", "--raw", "--tile", "--repeat", "--r", "3", "--sref",
    "https://x.io/a.png", "1234",
    "--p", "--w", "1080", "--h", "--iw", "--relax", "--unknown", "/imagine", "prompt:", "(a:1.3)",
    "((b))", "[c]", "[a|b]", "BREAK", "<lora:x:0.5>", "--", "-- ar", "——ar", "-—seed", "−ar", "7:2",
    "2.39:1", "--q", "4", ".25", "--chaos", "150", "--no", "a::b", "::20", "::5", "\\(", ")", "(", "“", "”",
])
PASTED_MIXED = st.lists(st.one_of(PASTED, TOKENS, st.text(max_size=6)), max_size=16).map(" ".join)


@given(PASTED_MIXED, st.booleans())
@settings(max_examples=examples(500))
def test_pasted_prompts_raise_only_prompt_error_and_notices_name_the_input(text, strict):
    try:
        p = parse_prompt(text, strict=strict)
    except PromptError as err:
        assert str(err)
        return
    for notice in p.notices:
        assert_names_the_input(notice, text)
    again = parse_prompt(" ".join([*p.image_urls, p.text, format_parameters(p)]))
    assert without_negative_notice(again) == dataclasses.replace(p, notices=())


@given(st.text())
@settings(max_examples=examples(200))
def test_emphasis_never_raises_and_keeps_the_words(text):
    segments = emphasis_segments(text)
    assert all(fragment.strip() and weight > 0 for fragment, weight in segments)
    words = " ".join(f for f, _ in segments)
    assert set(words.replace(" ", "")) <= set(text)


def test_parameters_alone_when_no_text_is_required():
    p = parse_prompt("/imagine prompt: --no text --chaos 150 --raw", require_text=False)
    assert p.parts == () and p.negative == "text" and p.chaos == 100
    assert p.notices == (
        "Removed “/imagine prompt:” from the start: it is part of the command, not of the prompt.",
        "--chaos “150” is over the highest value; used 100.",
        "Ignored what Pintor does not have: “--raw”.")
    assert parse_prompt("", require_text=False).parts == ()
    assert parse_prompt("soft light --q 2", require_text=False).text == "soft light"
    assert "--seed" in error_for("--seed -1", require_text=False)


def test_many_unknown_parameters_make_one_short_notice():
    prompt = "a fox " + " ".join(f"--x{i} {i}" for i in range(40))
    [notice] = parse_prompt(prompt).notices
    assert notice.endswith("; and 28 more.") and len(notice) < 400
    assert_names_the_input(notice, prompt)


def test_a_ratio_in_parentheses_is_not_a_weight():
    assert emphasis_segments("(ratio 16:9)") == (("ratio 16:9", 1.1),)
    assert not has_emphasis("a poster (ratio 16:9)")
    assert emphasis_segments("(red fox:1.6)") == (("red fox", 1.6),)


def test_a_parameter_glued_after_double_colon_is_a_parameter():
    p = parse_prompt("castle::--ar 16:9")
    assert (p.text, p.aspect) == ("castle", (16, 9))
    assert "--no" in error_for("a fox::--no")


@pytest.mark.parametrize("text", [" —seed::--ar", " —ar::--ar", " : --no — --ara::—ar--ar", "6 --niji 4294967296",
                                  "6 --no 6 --no 6 --no 6", " — ::: ::: :::  ::--no x"])
def test_found_by_longer_property_runs(text):
    check_parse(text)
    try:
        p = parse_prompt(text)
    except PromptError:
        return
    for notice in p.notices:
        assert_names_the_input(notice, text)


# --- image prompts ------------------------------------------------------------------------------

def test_links_at_the_start_are_image_prompts_with_their_weight():
    p = parse_prompt("<https://cdn.discordapp.com/attachments/1/2/a.png> https://media.discordapp.net/b.webp?ex=1 "
                     "a cat in the style of ukiyo-e --iw 1.5 --ar 3:2")
    assert p.image_urls == ("https://cdn.discordapp.com/attachments/1/2/a.png",
                            "https://media.discordapp.net/b.webp?ex=1")
    assert (p.text, p.image_weight, p.aspect, p.notices) == ("a cat in the style of ukiyo-e", 1.5, (3, 2), ())
    assert format_parameters(p) == "--ar 3:2 --iw 1.5"
    plain = parse_prompt("https://cdn.discordapp.com/a.png a cat")
    assert (plain.image_urls, plain.image_weight, "iw" in plain.given) == (("https://cdn.discordapp.com/a.png",), 1.0,
                                                                          False)
    assert parse_prompt("/imagine prompt: https://x.io/a.png a cat").image_urls == ("https://x.io/a.png",)
    # a link after the first word is not an image prompt
    later = parse_prompt("a cat https://x.io/a.png")
    assert later.image_urls == () and later.text == "a cat" and "only at the start" in later.notices[0]


CAT = "https://cdn.discordapp.com/attachments/1/2/cat.png"


@pytest.mark.parametrize(("typed", "links", "text"), [
    (f"{CAT}, a cat", (CAT,), "a cat"),  # the report: Discord's CDN answered 404 to "cat.png,"
    (f"{CAT}. A cat", (CAT,), "A cat"),
    (f"{CAT}: a cat", (CAT,), "a cat"),
    (f"{CAT}; a cat", (CAT,), "a cat"),
    (f"{CAT}! a cat", (CAT,), "a cat"),
    (f"{CAT}?! a cat", (CAT,), "a cat"),
    (f"{CAT}... a cat", (CAT,), "a cat"),
    (f"{CAT}… a cat", (CAT,), "a cat"),
    (f"{CAT}， 一只猫", (CAT,), "一只猫"),  # a full-width comma
    (f"{CAT}。 一只猫", (CAT,), "一只猫"),
    (f"<{CAT}>, a cat", (CAT,), "a cat"),  # Discord's no-preview brackets, then a comma
    (f"{CAT}), a cat", (CAT,), "a cat"),  # a bracket the link does not open
    (f"{CAT}, https://x.io/b.png, a cat", (CAT, "https://x.io/b.png"), "a cat"),
    (f"{CAT}?ex=65&is=66&hm=ab&, a cat", (f"{CAT}?ex=65&is=66&hm=ab&",), "a cat"),  # a CDN link's own '&'
    # what belongs to the link stays: brackets it opens, a dot or comma inside it
    ("https://en.wikipedia.org/wiki/Cat_(animal), a cat", ("https://en.wikipedia.org/wiki/Cat_(animal)",), "a cat"),
    ("https://x.io/a.b,c/cat.png a cat", ("https://x.io/a.b,c/cat.png",), "a cat"),
])
def test_punctuation_after_an_image_link_is_not_part_of_it(typed, links, text):
    p = parse_prompt(typed)
    assert (p.image_urls, p.text) == (links, text)


@pytest.mark.parametrize("word", ["https://", "https://,", "<https://>.", "http:/x.io/a.png", "cat.png,"])
def test_a_word_that_is_only_punctuation_after_the_scheme_is_no_image_link(word):
    assert image_link(word) is None


@pytest.mark.parametrize("value", ["0", "0.25", "1", "2.5", "3", "3.0", ".5"])
def test_image_weight_from_0_to_3(value):
    assert parse_prompt(f"https://x.io/a.png a cat --iw {value}").image_weight == float(value)


@pytest.mark.parametrize("value", ["4", "3.01", "-1", "abc", "1e2", "nan"])
def test_image_weight_outside_0_to_3_is_refused(value):
    message = error_for(f"https://x.io/a.png a cat --iw {value}")
    assert message == (f"--iw must be a number from 0 to 3: how much the image prompts count against the text "
                       f"(default 1); got “{value}”.")


def test_image_prompts_need_a_text_and_are_at_most_five():
    assert "image links but no text" in error_for("https://x.io/a.png https://x.io/b.png --iw 2")
    assert "at most 5 image prompts" in error_for(" ".join(f"https://x.io/{n}.png" for n in range(6)) + " a cat")


# --- --tile and --repeat ------------------------------------------------------------------------


def test_tile_takes_no_value_and_repeat_takes_a_count():
    p = parse_prompt("a moss texture --tile --repeat 3 --ar 3:2")
    assert p.text == "a moss texture" and p.tile and p.repeat == 3 and p.aspect == (3, 2)
    assert p.notices == () and format_parameters(p) == "--ar 3:2 --tile --repeat 3"
    assert parse_prompt("a moss texture").tile is False and parse_prompt("a moss texture").repeat == 1
    # "—tile" from a phone, --r for --repeat (MidJourney's short form), a second --tile is still one
    p = parse_prompt("a moss texture —tile --r 2 --tile")
    assert p.tile and p.repeat == 2 and p.text == "a moss texture"
    # a word after --tile is prompt text, said
    p = parse_prompt("a red fox --tile seamless pattern")
    assert p.tile and p.text == "a red fox seamless pattern"
    assert p.notices == ("Read “seamless pattern” after “--tile” as prompt text.",)


def test_repeat_out_of_range():
    p = parse_prompt("a fox --repeat 40")
    assert p.repeat == MAX_REPEAT
    assert p.notices == (f"--repeat “40” is over the highest value; used {MAX_REPEAT}.",)
    for typed in ("0", "-2", "two", "1.5"):
        assert "--repeat must be a whole number from 1 to" in error_for(f"a fox --repeat {typed}")
    assert "--repeat needs a value" in error_for("a fox --repeat")


# --- the sentence's punctuation after a value (pasted from galleries and chats) ----------


@pytest.mark.parametrize("pasted, field, value", [
    ("a cat --ar 16:9, --v 6", "aspect", (16, 9)),
    ("a cat, --ar 2:3,", "aspect", (2, 3)),
    ("a cat --ar 16：9", "aspect", (16, 9)),  # a CJK keyboard's full-width colon
    ("a cat --stylize 750, --chaos 20", "stylize", 750),
    ("a cat --chaos 20, --no text", "chaos", 20),
    ("a cat --seed 5.", "seed", 5),
    ("a cat --seed 5;", "seed", 5),
    ("a cat --seed 5，", "seed", 5),  # full-width comma
    ("a cat --q .5.", "quality", 0.5),
    ("a cat --steps 3,, in the snow", "steps", 3),
])
def test_punctuation_after_a_value_is_not_part_of_it(pasted, field, value):
    parsed = parse_prompt(pasted)
    assert getattr(parsed, field) == value
    assert any(n.startswith("Read “--") and "without the punctuation" in n for n in parsed.notices), parsed.notices


def test_punctuation_after_a_selector_value_and_after_words():
    assert parse_prompt("a cat --v 6.1, --niji 6.").selectors == (("v", "6.1"), ("niji", "6"))
    bare = parse_prompt("a cat --niji cute.")  # a bare --niji: the word after it keeps its full stop
    assert bare.selectors == (("niji", ""),) and bare.text.endswith("cute.")
    assert parse_prompt("a cat --no dogs, cats,").negative == "dogs, cats,"  # --no's text as written
    assert "“,”" in error_for("a cat --seed ,")  # nothing left: still refused, quoting it


@pytest.mark.parametrize("pasted, field, value", [
    ("portrait --seed=42", "seed", 42),
    ("portrait --ar=16:9", "aspect", (16, 9)),
    ("portrait —stylize=750", "stylize", 750),
    ("portrait --no=blurry, lowres --seed 1", "negative", "blurry, lowres"),
    ("portrait --AR=2:3, in the snow", "aspect", (2, 3)),
])
def test_a_parameter_written_with_an_equals_sign_is_read(pasted, field, value):
    """"--seed=42" was ignored as a parameter "Pintor does not have"."""
    parsed = parse_prompt(pasted)
    assert getattr(parsed, field) == value
    assert not any("does not have" in n for n in parsed.notices) and parsed.text.startswith("portrait")
    assert any(n.startswith("Read “") and "=" in n for n in parsed.notices)


def test_an_equals_sign_after_an_unknown_name_or_without_a_value():
    assert "“--x=1”" in parse_prompt("a cat --x=1").notices[0]  # still ignored, as typed
    assert "--seed needs a value" in error_for("a cat --seed=")


@pytest.mark.parametrize("pasted, parts", [
    ("a red apple::2, green leaves::1,", (("a red apple", 2.0), ("green leaves", 1.0))),
    ("castle::2; fog::0.5", (("castle", 2.0), ("fog", 0.5))),
    ("space::, cats::2", (("space", 1.0), ("cats", 2.0))),
    ("cat::1,5 dog", (("cat", 1.0), ("1,5 dog", 1.0))),  # not a weight: text, as before
])
def test_a_comma_after_a_weight_separates_the_parts(pasted, parts):
    """"apple::2, leaves::1," lost both weights: "2, leaves" and "1," were read as text."""
    assert tuple((p.text, p.weight) for p in parse_prompt(pasted).parts) == parts


def _named_as_missing() -> dict[str, list[str]]:
    """Every `--name` that a text for members or admins gives as a parameter Pintor does not
    have: /pintor-admin strict-parameters' description and the README's list."""
    from pathlib import Path

    from bot.cogs.admin import Admin

    [option] = Admin.strict_parameters.parameters
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    bullet = readme[readme.index("- MidJourney parameters Pintor does not have"):]
    bullet = bullet[:bullet.index("\n- ")]
    # what to use instead (→ `--ar`) and a parameter said to be Pintor's own are not examples
    bullet = re.sub(r"→ `--\w+`|Pintor's own `--\w+`[^;.)]*", "", bullet)
    found = {"strict-parameters": option.description, "README": bullet}
    return {where: re.findall(r"--(\w+)", text) for where, text in found.items()}


def test_texts_name_as_missing_only_parameters_pintor_does_not_have():
    """strict-parameters' description called --tile (and the README --cw) a parameter Pintor
    does not have: each example named so is one a strict server refuses."""
    from generation.prompt import KNOWN_PARAMETERS

    own = set(re.findall(r"--(\w+)", KNOWN_PARAMETERS))
    for where, names in _named_as_missing().items():
        assert names, where
        assert not own & set(names), (where, own & set(names))
        for name in names:
            with pytest.raises(PromptError, match="does not have"):
                parse_prompt(f"a fox --{name} 5", strict=True)


# --- negative weights: less of it, as MidJourney reads them (issue 26 item 9) -------------


def test_the_issues_negative_weight_is_kept_shown_and_said():
    p = parse_prompt("still life gouache painting::1 fruit::-.5")
    assert p.parts == (PromptPart("still life gouache painting", 1.0), PromptPart("fruit", -0.5))
    assert p.text == "still life gouache painting::1 fruit::-0.5"  # what the job uses, shown
    assert p.notices == ("Read “fruit” (“::-.5”) as less of it, as --no does: it goes to the negative side "
                         "(::-0.5 beside parts weighing 1 counts as much as --no).",)
    assert_names_the_input(p.notices[0], "still life gouache painting::1 fruit::-.5")
    assert parse_prompt(p.text).parts == p.parts
    two = parse_prompt("a bowl::2 fruit::-.5 dust :: -1")
    assert two.parts == (PromptPart("a bowl", 2.0), PromptPart("fruit", -0.5), PromptPart("dust", 1.0),
                         PromptPart("-1"))  # a weight is glued to '::'
    two = parse_prompt("a bowl::2 fruit::-.5 dust::-1")
    assert two.notices == ("Read “fruit” (“::-.5”), “dust” (“::-1”) as less of each, as --no does: they go to the "
                           "negative side (::-0.5 beside parts weighing 1 counts as much as --no).",)


@pytest.mark.parametrize("text, shown", [("fruit::-1 bowl::-.5", "(“fruit::-1”, “bowl::-.5”)"),
                                         ("fruit::-2", "(“fruit::-2”)"), ("fog::-1", "(“fog::-1”)"),
                                         ("a::0 b::-1", "(“a::0”, “b::-1”)"), ("a::0 b::0", "(“a::0”, “b::0”)"),
                                         ("fog::0", "(“fog::0”)"), ("fog::-0", "(“fog::-0”)")])
def test_a_prompt_of_negative_parts_only_is_refused_plainly(text, shown):
    """It read "The weights after '::' add up to -1 = -1": now what is wrong (no part above 0),
    the parts as typed, and what is allowed."""
    message = error_for(text)
    assert message.startswith(f"No part of your multi-prompt has a weight above 0 {shown}: at least one part "
                              "must say what to draw, with a positive weight")
    assert "less of that part" in message and "a weight of 0 adds nothing" in message and " = " not in message
    assert_names_the_input(message, text)


def test_a_negative_part_may_not_outweigh_the_rest():
    message = error_for("a castle::1 fog::-2")
    assert message == ("The weights of “a castle::1”, “fog::-2” add up to -1; they must add up to more than 0: a "
                       "negative part means less of it and cannot outweigh the rest (e.g. castle::1 fog::-0.5).")


# --- a part of weight 0 adds nothing: left out, and said (MidJourney: weights are relative) ---


@pytest.mark.parametrize("text, parts, shown, left_out", [
    ("castle::1 fog::-0", (PromptPart("castle"),), "castle", "“fog” (“::-0”)"),  # the tester's example
    ("castle::1 fog::0", (PromptPart("castle"),), "castle", "“fog” (“::0”)"),
    ("castle::3 fog::0 sky::2", (PromptPart("castle", 3.0), PromptPart("sky", 2.0)), "castle::3 sky::2",
     "“fog” (“::0”)"),
    ("castle::2 fog::0.0 dust::0 sky", (PromptPart("castle", 2.0), PromptPart("sky")), "castle::2 sky::1",
     "“fog” (“::0.0”), “dust” (“::0”)"),
    ("fog::0 castle", (PromptPart("castle"),), "castle", "“fog” (“::0”)"),
    # a parameter between a part's text and its weight: each is quoted as it is in the input
    ("castle fog --niji ::0 sky", (PromptPart("sky"),), "sky", "“castle fog” (“::0”)"),
    # a text Pintor rewrote (an alternation, said): named by its weight, as typed
    ("[a|b] ::0 sky", (PromptPart("sky"),), "sky", "the part before “::0”"),
])
def test_a_part_of_weight_zero_is_left_out_and_said(text, parts, shown, left_out):
    p = parse_prompt(text)
    assert p.parts == parts and p.text == shown  # what the job uses is what is shown
    one = ", " not in left_out
    assert p.notices[-1] == (f"Left out {left_out}: a weight of 0 adds none of {'it' if one else 'them'} "
                             "(weights are relative).")
    for notice in p.notices:
        assert_names_the_input(notice, text)
    assert parse_prompt(p.text).parts == p.parts and parse_prompt(p.text).notices == ()


def test_a_part_of_weight_zero_beside_a_negative_one():
    p = parse_prompt("castle::2 fog::0 dust::-0.5")
    assert p.parts == (PromptPart("castle", 2.0), PromptPart("dust", -0.5))
    assert p.notices[0] == "Left out “fog” (“::0”): a weight of 0 adds none of it (weights are relative)."
    assert p.notices[1].startswith("Read “dust” (“::-0.5”) as less of it")
    # left out, the rest must still add up to more than 0
    assert "add up to -1" in error_for("castle::1 fog::0 dust::-2")


@pytest.mark.parametrize("parts, negative, positive, lessened, rest", [
    # the issue's example: `x::-.5` beside a weight of 1 is `--no x`
    ([("still life", 1.0), ("fruit", -0.5)], "", [("still life", 1.0)], [("fruit", 1.0)], 0.0),
    ([("still life", 1.0), ("fruit", -0.25)], "", [("still life", 1.0)], [("fruit", 0.5)], 0.5),
    ([("a", 3.0), ("b", 1.0), ("c", -0.5)], "", [("a", 0.75), ("b", 0.25)], [("c", 0.25)], 0.75),
    ([("a", 1.0), ("c", -0.25)], "dog", [("a", 1.0)], [("dog", 2 / 3), ("c", 1 / 3)], 0.0),
    ([("a", 1.0), ("c", -0.9)], "", [("a", 1.0)], [("c", 1.0)], 0.0),  # beyond --no: all of it
    ([("a", 2.0)], "dog", [("a", 1.0)], [("dog", 1.0)], 0.0),
    ([], "", [], [], 1.0),
])
def test_weight_sides(parts, negative, positive, lessened, rest):
    sides = weight_sides(parts, negative)
    for got, wanted in ((sides.positive, positive), (sides.negative, lessened)):
        assert [text for text, _ in got] == [text for text, _ in wanted]
        assert [share for _, share in got] == pytest.approx([share for _, share in wanted])
    assert sides.rest == pytest.approx(rest)
    one_text = len(lessened) == 1 and lessened[0][1] == 1.0  # the whole negative side is one text
    assert sides.plain_negative == (lessened[0][0] if one_text else "" if not lessened else None)


def test_weight_sides_refuses_parts_without_a_positive_one():
    with pytest.raises(ValueError, match="positive weight"):
        weight_sides([("a", -1.0)])


@pytest.mark.parametrize("text, word", [(" —ar::.5", "—ar"), ("x -- ar::2", "-- ar"), ("a —ar::.5 b::1", "—ar"),
                                        ("a fox::2 —seed::1", "—seed")])
def test_a_parameter_glued_before_a_weight_is_refused_not_read_as_text(text, word):
    """"—ar::.5" was read as the text "—ar", which the prompt as shown ("—ar") reads back as a
    parameter without its value (found by test_mixed_tokens_raise_only_prompt_error)."""
    with pytest.raises(PromptError, match=f"“{word}” before '::' reads as a parameter"):
        parse_prompt(text)
    check_parse(text)

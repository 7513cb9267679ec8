"""/describe: four prompts for a picture, as MidJourney's /describe gives.

A BLIP captioning model (transformers' `BlipForConditionalGeneration` with its
`BlipProcessor`; a registry entry of family "blip") writes four captions: one by beam search
(its most likely caption) and the rest sampled with fixed seeds from the job's seed, so that
the four differ and a job run again after a crash writes the same ones. Where the entry names
a `clip` model (transformers' `CLIPModel`), style words from a small built-in list (mediums,
styles, artists) are ranked by their CLIP similarity to the picture and added to the
captions, as MidJourney's /describe adds them. Each prompt ends with the picture's `--ar`.

Runs in the worker (torch); nothing here knows about queues, databases or Discord.
"""

from __future__ import annotations

import logging
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from generation.availability import MODEL_CONFIG, explain, require
from generation.devices import DeviceChoice
from generation.registry import ModelSpec

log = logging.getLogger(__name__)

CAPTION_COUNT = 4  # prompts per /describe, as MidJourney's
MAX_NEW_TOKENS = 30  # BLIP's captions are short (its own examples: ~10 words)
NUM_BEAMS = 4  # the first caption: beam search, the model's most likely wording
TOP_P = 0.9  # the others: nucleus sampling (Holtzman et al. 2019), each from its own seed
MAX_SAMPLES = 8  # sampled attempts at most, for captions distinct from the others
CAPTION_SIDE = 768  # a picture is shrunk to this side first: the processors resize to 384 (BLIP) or 224 (CLIP) anyway
MAX_CAPTION_CHARS = 300
# when a model writes nothing usable (no words, or only words it wrote before): neutral prompts
NEUTRAL_CAPTIONS = ("a picture", "a photograph", "an image", "an illustration", "a scene", "a composition")

# The words CLIP ranks (a short list in the spirit of CLIP Interrogator's mediums, movements and
# artists; Pintor's own choice). Each prompt takes a different rank, so the four differ.
MEDIUMS = ("a photograph", "a digital painting", "an oil painting", "a watercolor painting", "a pencil sketch",
           "a 3d render", "an illustration", "an anime drawing", "a charcoal drawing", "a pixel art image",
           "a vector graphic", "a film still")
STYLES = ("cinematic lighting", "soft pastel colors", "high contrast", "minimalism", "surrealism",
          "impressionism", "art nouveau", "cyberpunk", "vaporwave", "baroque", "studio lighting",
          "golden hour", "muted tones", "vibrant colors", "dramatic shadows", "bokeh")
ARTISTS = ("Claude Monet", "Vincent van Gogh", "Hokusai", "Alphonse Mucha", "Greg Rutkowski", "Studio Ghibli",
           "Edward Hopper", "Ansel Adams", "Moebius", "Wes Anderson", "Rembrandt", "Salvador Dali",
           "Annie Leibovitz", "Makoto Shinkai", "J. M. W. Turner", "Gustav Klimt")

# aspect ratios a describe prompt may name (--ar), landscape; portrait ones are their inverses
COMMON_RATIOS = ((1, 1), (5, 4), (4, 3), (3, 2), (8, 5), (16, 9), (2, 1), (7, 3), (3, 1))  # reduced, as --ar reads

_SPECIAL = re.compile(r"\[[A-Z]+\]|<\|?[a-z_]+\|?>|</?s>")  # [SEP], [unused0]-like, <|endoftext|>, <s>
# BLIP's known artefact words (from its training captions' "a rafed …"): "arafed", "araffe", "arafly"…
_ARAFED = re.compile(r"\bar+af+[a-z]*\b", re.IGNORECASE)
_REPEATED_WORD = re.compile(r"\b(\w+)(\s+\1\b)+", re.IGNORECASE)
# dash-like characters starting a word: the prompt parser reads "-ar", "—no" as parameters
# (generation.prompt: phones turn "--" into "—")
_WORD_DASHES = re.compile("(?:^|(?<=\\s))[-\u2010-\u2015\u2212\ufe58\ufe63\uff0d]+")


@dataclass
class Captioner:
    """A loaded captioning model: BLIP (`processor`, `model`) and, optionally, CLIP to rank
    style words (`clip_processor`, `clip_model`), on `device` (a torch device string)."""

    processor: Any
    model: Any
    device: str
    clip_processor: Any = None
    clip_model: Any = None


def load_captioner(spec: ModelSpec, device: DeviceChoice) -> Captioner:
    """The captioner of registry entry `spec` (family "blip"; its `clip`, when set), on
    `device` in float32 (the models are small; BLIP's generate in float16 is not worth its
    rounding), in eval mode.

    Raises ModelLoadError when a source cannot be had here (a missing folder, a hub id not
    downloaded while offline) or cannot be loaded as a BLIP / CLIP model."""
    from transformers import BlipForConditionalGeneration, BlipProcessor, CLIPModel, CLIPProcessor

    def load(cls: Any, source: str) -> Any:
        require(spec.name, source, index=MODEL_CONFIG)
        try:
            return cls.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise explain(spec.name, source, err) from err

    log.info("loading captioner %s from %s on %s", spec.name, spec.source, device.device)
    model = load(BlipForConditionalGeneration, spec.source).to(device.device).eval()
    captioner = Captioner(load(BlipProcessor, spec.source), model, device.device)
    if spec.clip:
        captioner.clip_model = load(CLIPModel, spec.clip).to(device.device).eval()
        captioner.clip_processor = load(CLIPProcessor, spec.clip)
    return captioner


def describe(captioner: Captioner, image: Image.Image, *, seed: int, count: int = CAPTION_COUNT,
             on_caption: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> list[str]:
    """`count` distinct prompts describing `image` (RGB, any size): cleaned captions (see
    `clean_caption`), with CLIP-ranked style words where the captioner has CLIP, each ending
    in the picture's `--ar` (none for a square picture).

    The first caption is BLIP's beam search; the others are sampled, attempt k (0, 1, …)
    from the generator seeded with `seed + k`, so the same seed gives the same prompts. A
    caption that comes out empty or repeats an earlier one is dropped and another sampled, up
    to MAX_SAMPLES attempts; what is still missing then is filled with NEUTRAL_CAPTIONS.
    `on_caption(written, count)` is called after each attempt and `should_stop()` before each:
    when it says so, the attempts end early (the caller, which asked, raises its own stop).
    Raises what transformers and torch raise while generating."""
    picture = image.convert("RGB")
    picture.thumbnail((CAPTION_SIDE, CAPTION_SIDE), Image.Resampling.LANCZOS)
    captions: list[str] = []
    attempts = 1 + MAX_SAMPLES
    for attempt in range(attempts):
        if len(captions) >= count or (should_stop is not None and should_stop()):
            break
        sample_seed = None if attempt == 0 else seed + attempt - 1
        caption = clean_caption(_caption(captioner, picture, sample_seed))
        if caption and caption.lower() not in {c.lower() for c in captions}:
            captions.append(caption)
        if on_caption is not None:
            on_caption(len(captions), count)
    captions = fill_neutral(captions, count)
    styles = rank_style_words(captioner, picture) if captioner.clip_model is not None else None
    return prompts_for(captions, styles, image.width, image.height)


def _caption(captioner: Captioner, picture: Image.Image, seed: int | None) -> str:
    """One caption: beam search for `seed` None, else sampled with that seed."""
    inputs = captioner.processor(images=picture, return_tensors="pt").to(captioner.device)
    tokenizer = captioner.processor.tokenizer
    eos = captioner.model.config.text_config.eos_token_id
    # special tokens never belong in a caption (the end token ends it); random or poorly
    # trained weights would otherwise spend their words on them
    suppress = [i for i in tokenizer.all_special_ids if i != eos]
    kwargs: dict[str, Any] = {"max_new_tokens": MAX_NEW_TOKENS, "suppress_tokens": suppress or None}
    if seed is None:
        kwargs.update(num_beams=NUM_BEAMS, do_sample=False)
    else:
        torch.manual_seed(seed)  # generate's sampling draws from torch's global generator
        kwargs.update(do_sample=True, top_p=TOP_P, num_beams=1)
    with torch.inference_mode():
        ids = captioner.model.generate(**inputs, **kwargs)
    text: str = captioner.processor.batch_decode(ids, skip_special_tokens=True)[0]
    return text


def clean_caption(text: str) -> str:
    """A caption as a prompt: control and invisible characters and special tokens that
    survived decoding removed, BLIP's "arafed"
    artefact words removed, a word repeated at once kept once ("cat cat" → "cat"),
    whitespace collapsed, stray punctuation at the ends stripped, dashes that start a word
    and `::` removed (a prompt reads them as parameters and weights), at most
    MAX_CAPTION_CHARS (cut at a word). May return ""."""
    # control and invisible characters (Unicode's C categories) are spaces to a prompt's parser
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = _SPECIAL.sub(" ", text)
    text = _ARAFED.sub(" ", text)
    text = text.replace("::", " ")
    text = _WORD_DASHES.sub(" ", " ".join(text.split()))
    text = " ".join(text.split())
    text = _REPEATED_WORD.sub(r"\1", text)
    text = text.strip(" ,.;:-_'\"`")
    if len(text) > MAX_CAPTION_CHARS:
        text = text[:MAX_CAPTION_CHARS].rsplit(" ", 1)[0].rstrip(" ,.;:")
    return text


def fill_neutral(captions: Sequence[str], count: int) -> list[str]:
    """`captions` (distinct) completed to `count` with NEUTRAL_CAPTIONS not already among them."""
    filled = list(captions[:count])
    for neutral in NEUTRAL_CAPTIONS:
        if len(filled) >= count:
            break
        if neutral.lower() not in {c.lower() for c in filled}:
            filled.append(neutral)
    return filled


def rank_style_words(captioner: Captioner, picture: Image.Image) -> dict[str, list[str]]:
    """MEDIUMS, STYLES and ARTISTS, each sorted by CLIP's similarity to `picture` (cosine of
    the image and text embeddings), best first: {"medium": […], "style": […], "artist": […]}."""
    lists = {"medium": MEDIUMS, "style": STYLES, "artist": tuple(f"art by {a}" for a in ARTISTS)}
    texts = [text for words in lists.values() for text in words]
    inputs = captioner.clip_processor(text=texts, images=picture, return_tensors="pt", padding=True,
                                      truncation=True).to(captioner.device)
    with torch.inference_mode():
        scores = captioner.clip_model(**inputs).logits_per_image[0].float().cpu().tolist()
    ranked: dict[str, list[str]] = {}
    start = 0
    for name, words in lists.items():
        own = scores[start:start + len(words)]
        order = sorted(range(len(words)), key=lambda i: -own[i])
        ranked[name] = [ARTISTS[i] if name == "artist" else words[i] for i in order]
        start += len(words)
    return ranked


def prompts_for(captions: Sequence[str], styles: dict[str, list[str]] | None, width: int, height: int) -> list[str]:
    """Each caption as a prompt: with style words (prompt i takes the i-th ranked medium
    style and artist, so the four differ), then the picture's `--ar` (none when square)."""
    aspect = aspect_parameter(width, height)
    prompts = []
    for i, caption in enumerate(captions):
        parts = [caption]
        if styles:
            medium, style, artist = (styles[name][i % len(styles[name])] for name in ("medium", "style", "artist"))
            parts += [medium, style, f"in the style of {artist}"]
        prompts.append(", ".join(parts) + (f" {aspect}" if aspect else ""))
    return prompts


def aspect_parameter(width: int, height: int) -> str:
    """`--ar W:H` for a picture of width × height pixels: the exact ratio where it is simple
    (both terms at most 21 once reduced), else the nearest of COMMON_RATIOS (by log ratio);
    "" for a square picture. Beyond 3:1, 3:1 (Pintor's limit: generation.prompt)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"a picture's size is positive, not {width}×{height}")
    divisor = math.gcd(width, height)
    w, h = width // divisor, height // divisor
    if max(w, h) > 21 or max(w, h) > 3 * min(w, h):
        landscape = [(a, b) for a, b in COMMON_RATIOS]
        candidates = landscape + [(b, a) for a, b in landscape]
        w, h = min(candidates, key=lambda r: abs(math.log(r[0] / r[1]) - math.log(width / height)))
    return "" if w == h else f"--ar {w}:{h}"

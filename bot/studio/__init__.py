"""The Studio: the one door of every front end (Discord, the CLI, the Python API).

Being split by job (issue 28, item 3): today everything still lives in `bot.studio.facade`;
this package re-exports the names other modules import, so `from bot.studio import Studio`
keeps working while parts move out into their own modules.
"""

from bot.studio.facade import (
    CAPTION_COUNT,
    NO_CAPTIONER,
    VARY_STRONG,
    VARY_SUBTLE,
    AlreadyMade,
    OwnerBusy,
    Studio,
    Submitted,
    fit_image_to_image,
    image_prompt_request,
    image_prompt_strength,
)
from bot.studio.rules import answer_refusal, channel_refusal
from bot.studio.words import FORM_CHARS, blend_label, editable_prompt, link_name, own_words

__all__ = [
    "CAPTION_COUNT", "FORM_CHARS", "NO_CAPTIONER", "VARY_STRONG", "VARY_SUBTLE", "AlreadyMade", "OwnerBusy",
    "Studio", "Submitted", "answer_refusal", "blend_label", "channel_refusal", "editable_prompt",
    "fit_image_to_image", "image_prompt_request", "image_prompt_strength", "link_name", "own_words",
]

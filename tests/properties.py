"""How many examples the property tests draw (hypothesis; tests/README.md, "Property tests").

Two profiles, chosen by PINTOR_HYPOTHESIS: "quick" (the default: the README's test command) and
"thorough" (what `.ci/run` sets). Each property test names the count that found its faults;
"quick" draws that count, "thorough" twice it, so CI looks harder than before at a cost of
seconds. (A quarter of it by default was tried: the property tests' own coverage of
generation/prompt.py fell from 83 % to 74 % and the suite gained under 20 s, so the default
keeps the counts.) Tests that name no count take the profile's own: hypothesis' 100, or 200.
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("PINTOR_HYPOTHESIS", "quick")
SHARES = {"quick": 1.0, "thorough": 2.0}
if PROFILE not in SHARES:
    raise ValueError(f"PINTOR_HYPOTHESIS={PROFILE!r}: quick or thorough")

settings.register_profile("quick", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=200, deadline=None)
settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """The examples to draw for a test that found its faults with `count`: `count` in the quick
    profile, twice it in the thorough one."""
    return round(count * SHARES[PROFILE])

"""How many examples the property tests draw (hypothesis; tests/README.md, "Property tests").

Two profiles, chosen by PINTOR_HYPOTHESIS: "quick" (the default: the README's test command) and
"thorough" (what `.ci/run` sets). Each property test names the count that found its faults (the
count it ran before the two profiles); "quick" draws a quarter of it, "thorough" twice it, so CI
looks harder than before and a newcomer's run stays short. Tests that name no count take the
profile's own (hypothesis' default of 100 in "thorough", 25 in "quick").
"""

from __future__ import annotations

import os

from hypothesis import settings

PROFILE = os.environ.get("PINTOR_HYPOTHESIS", "quick")
SHARES = {"quick": 0.25, "thorough": 2.0}
if PROFILE not in SHARES:
    raise ValueError(f"PINTOR_HYPOTHESIS={PROFILE!r}: quick or thorough")

settings.register_profile("quick", max_examples=25, deadline=None)
settings.register_profile("thorough", max_examples=100, deadline=None)
settings.load_profile(PROFILE)


def examples(count: int) -> int:
    """The examples to draw for a test that found its faults with `count`: a quarter of it in
    the quick profile (at least 5), twice it in the thorough one."""
    return max(5, round(count * SHARES[PROFILE]))

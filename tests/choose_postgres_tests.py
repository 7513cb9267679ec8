"""Choose the Discord tests that `.ci/run` runs a second time with the shared bot on PostgreSQL
(tests/README.md, "What runs on PostgreSQL").

Every query Pintor makes is in `storage/`; `tests/test_storage.py` and `tests/test_postgres.py`
run them on both databases. What the Discord tests add on PostgreSQL is the SQL each feature
sends in the order and with the values a member's actions give. Running all of them twice
proves nothing more than running, on PostgreSQL, a set of tests that together reach every line
and branch of `storage/` that all of them reach: this script finds such a set from a coverage
run with one context per test (greedy set cover: the test adding the most uncovered arcs first),
plus the first test of every `test_discord_*.py` module, so that each feature keeps one.

    PINTOR_TEST_DATABASE=postgresql .venv/bin/coverage run --rcfile=tests/choose_postgres_tests.rc \\
        -m pytest tests/test_discord_*.py tests/test_cli_discord.py
    .venv/bin/python -m tests.choose_postgres_tests .coverage.postgres-choice > tests/discord_on_postgresql.txt

Run it again when Discord tests are added or storage/ changes; `tests/test_postgres.py` checks
that every name in the list is still a test.
"""

from __future__ import annotations

import sys
from collections import defaultdict

from coverage import CoverageData


def arcs_by_test(data_file: str) -> dict[str, set[tuple[str, int, int]]]:
    """Each test's node id (a coverage context: `tests.test_x.test_name`, the parameters
    dropped by coverage's test_function contexts) and the (file, from, to) arcs it ran."""
    data = CoverageData(data_file)
    data.read()
    found: dict[str, set[tuple[str, int, int]]] = defaultdict(set)
    contexts = [context for context in data.measured_contexts() if context]
    paths = data.measured_files()
    for context in contexts:
        data.set_query_contexts([context])
        for path in paths:
            for start, end in data.arcs(path) or ():
                found[context].add((path, start, end))
    return found


def choose(arcs: dict[str, set[tuple[str, int, int]]]) -> list[str]:
    """Greedy set cover of every arc any test ran, then the first test (by name) of each
    module that has none chosen yet."""
    left = set().union(*arcs.values()) if arcs else set()
    chosen: list[str] = []
    while left:
        best = max(sorted(arcs), key=lambda test: len(arcs[test] & left))
        if not arcs[best] & left:
            break
        chosen.append(best)
        left -= arcs[best]
    modules = {test.rsplit(".", 1)[0] for test in arcs}
    for module in sorted(modules):
        if not any(test.rsplit(".", 1)[0] == module for test in chosen):
            chosen.append(min(test for test in arcs if test.rsplit(".", 1)[0] == module))
    return sorted(chosen)


def main(argv: list[str]) -> int:
    arcs = arcs_by_test(argv[1] if len(argv) > 1 else ".coverage")
    chosen = choose(arcs)
    total = set().union(*arcs.values())
    print(f"# {len(chosen)} of {len(arcs)} Discord tests reach the {len(total)} arcs of storage/ "
          "that all of them reach", file=sys.stderr)
    for test in chosen:
        module, name = test.rsplit(".", 1)
        print(f"{module.replace('.', '/')}.py::{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

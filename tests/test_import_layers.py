"""The bot package imports one way: each module only from layers below its own.

Read from the source with `ast` (every import, top-level or inside a function), so a cycle
cannot hide behind an import moved into a function. Imports under `if TYPE_CHECKING:` are
types only (never run): the one allowed there is the Discord client's type
(`bot.discord_bot`: `PintorBot`, `Interaction`), as discord.py's examples and RoboDanny do,
besides lower layers' types that a module imports late.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Bottom to top. A module may import bot modules of lower layers only (same layer: no).
LAYERS: list[set[str]] = [
    {"bot.settings", "bot.limits", "bot.attachments", "bot.downloads", "bot.progress", "bot.metrics",
     "bot.cli_parser"},  # leaves
    {"bot.intake"},  # what members ask for, checked
    {"bot.studio.rules", "bot.studio.words"},  # the Studio's pure parts
    {"bot.studio.facade"},  # the Studio's parts (issue 28: being split by job)
    {"bot.studio"},  # the one door of every front end (re-exports its parts)
    {"bot.wiring", "bot.discord_endpoints"},  # building a Studio; Discord's URLs
    {"bot.local"},  # Python front end
    {"bot.cli_jobs", "bot.doctor"},  # terminal front end
    # the Discord front end, bottom to top
    {"bot.buttons"},  # persistent items and their views; a press goes to interaction.client
    {"bot.results"},  # message texts, pictures and views
    {"bot.delivery"},  # where a job's messages go
    {"bot.cogs.account", "bot.cogs.admin", "bot.cogs.blend", "bot.cogs.describe", "bot.cogs.history",
     "bot.cogs.imagine",
     "bot.cogs.preferences", "bot.cogs.show"},  # one per feature, loaded by name
    {"bot.discord_bot"},  # the client: loads the cogs, registers the buttons, reports jobs
    {"bot.app"},  # the process: Studio + client
    {"bot.cli"},  # `pintor`
]
DISCORD_FRONT_END = {"bot.buttons", "bot.results", "bot.delivery", "bot.discord_bot", "bot.progress",
                     "bot.limits", *LAYERS[-4]}
TYPE_ONLY_ALLOWED = {"bot.discord_bot"}
LAYER_OF = {module: n for n, layer in enumerate(LAYERS) for module in layer}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def bot_modules() -> list[str]:
    return sorted(name for name in map(module_name, (ROOT / "bot").rglob("*.py"))
                  if not name.endswith("__init__") and name not in {"bot", "bot.cogs"})


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str) -> list[tuple[str, bool, bool]]:
    """(imported bot module, at top level, for types only) for each import in `module`."""
    path = ROOT / Path(*module.split(".")).with_suffix(".py")
    if not path.is_file():  # a package: its __init__.py
        path = ROOT / Path(*module.split(".")) / "__init__.py"
    found: list[tuple[str, bool, bool]] = []

    def visit(node: ast.AST, *, top: bool, types_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, top=top, types_only=True)
                for stmt in child.orelse:
                    visit_stmt(stmt, top=top, types_only=types_only)
            else:
                visit_stmt(child, top=top, types_only=types_only)

    def visit_stmt(node: ast.AST, *, top: bool, types_only: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from bot import limits` imports the module bot.limits
            names = [f"{node.module}.{alias.name}" if node.module in ("bot", "bot.cogs") else node.module
                     for alias in node.names]
        for name in names:
            if name.startswith("bot."):
                found.append((name, top, types_only))
        inner_top = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            visit(node, top=inner_top, types_only=types_only)

    visit(ast.parse(path.read_text(encoding="utf-8")), top=True, types_only=False)
    return found


def test_every_bot_module_has_a_layer():
    assert sorted(LAYER_OF) == bot_modules()


@pytest.mark.parametrize("module", bot_modules())
def test_a_module_imports_only_from_layers_below(module):
    upward = [(name, top) for name, top, types_only in imports_of(module)
              if not types_only and LAYER_OF[name] >= LAYER_OF[module]]
    assert upward == [], f"{module} imports from its own layer or above"


@pytest.mark.parametrize("module", bot_modules())
def test_imports_for_types_only_name_a_lower_layer_or_the_client(module):
    """`if TYPE_CHECKING:` hides no import from above but the client's type (a lower layer's
    type there is what a module imports late, as `bot.cli` imports its settings)."""
    type_only = {name for name, _, types_only in imports_of(module) if types_only}
    assert {name for name in type_only if LAYER_OF[name] >= LAYER_OF[module]} <= TYPE_ONLY_ALLOWED


@pytest.mark.parametrize("module", sorted(DISCORD_FRONT_END))
def test_the_discord_front_end_imports_at_the_top(module):
    """No import inside a function (the old way to hide a cycle)."""
    assert [name for name, top, _ in imports_of(module) if not top] == []


def test_the_bot_loads_only_cogs_of_a_lower_layer():
    from bot.discord_bot import EXTENSIONS

    assert all(LAYER_OF[name] < LAYER_OF["bot.discord_bot"] for name in EXTENSIONS)
    assert set(EXTENSIONS) == LAYERS[-4]


def test_each_discord_module_imports_first_in_a_fresh_interpreter():
    """Whatever module is imported first (an entry point, a test), it loads: for each module, a
    process with no module of Pintor's imported yet imports it. (One interpreter imports the
    libraries they share, which cannot hide a cycle among Pintor's modules, and forks a child per
    module: 14 fresh interpreters cost about 18 s of CPU.)"""
    modules = sorted(DISCORD_FRONT_END)
    script = (
        "import importlib, os, sys, traceback\n"
        "import aiohttp, discord, discord.ext.commands, PIL.Image, sqlalchemy  # Pintor's own: none yet\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('bot', 'generation', 'storage')]\n"
        f"for module in {modules!r}:\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            importlib.import_module(module)\n"
        "        except BaseException:\n"
        "            traceback.print_exc()\n"
        "            os._exit(1)\n"
        "        os._exit(0)\n"
        "    print(module, os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    codes = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    assert codes == dict.fromkeys(modules, "0"), done.stderr[-4000:]


def test_the_command_line_front_end_imports_no_torch():
    """`pintor` and every front end below it (the Studio, the Python API's modules) import
    neither torch nor diffusers nor transformers: only the worker process does. So `pintor
    health` (the container's HEALTHCHECK, every minute) and every verb start in about 2 s instead
    of 5, and 700 MB lighter; a module that pulls torch in again (generation/outpaint.py once
    did, for one generator) fails here. Alembic (~0.5 s) waits for a migration or a copy:
    `pintor health` reads the revision with SQLAlchemy alone (storage.db.HEAD_REVISION)."""
    script = ("import sys, bot.cli, bot.local, bot.wiring, bot.doctor, storage.db\n"
              "print(sorted({m.split('.')[0] for m in sys.modules}\n"
              "             & {'torch', 'diffusers', 'transformers', 'alembic'}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_command_line_reads_its_arguments_before_importing_what_the_verbs_need():
    """`pintor --help` and a mistyped argument answer at once: `bot.cli` alone imports neither the
    database layer, the Studio, pydantic nor the worker's libraries (each verb imports what it
    runs; `pintor --help` took 2.4 s when bot.cli imported the job verbs' modules, now ~0.2 s)."""
    heavy = ["sqlalchemy", "pydantic", "bot.studio", "bot.cli_jobs", "aiohttp", "PIL", "numpy", "torch"]
    script = f"import sys, bot.cli\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

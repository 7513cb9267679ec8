"""The `pintor` command line's grammar: every verb and its arguments (argparse only).

Kept apart from what the verbs do so that `pintor --help` and a mistyped argument answer at
once, without importing the database, the Studio or pydantic (bot.cli imports those only for
the verb it runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

JOB_COMMANDS = ("imagine", "blend", "describe", "upscale", "vary", "reroll", "show", "history")


def _index(text: str) -> int:
    if text not in ("1", "2", "3", "4"):
        raise argparse.ArgumentTypeError(f"picture number must be 1, 2, 3 or 4, not {text!r}")
    return int(text)


def _job_id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a job number such as 42, not {text!r}")
    return int(text)


def _page(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a page number from 1, not {text!r}")
    return int(text)


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="file for the grid (PNG; default pintor-JOB.png)")
    parser.add_argument("--separate", action="store_true", help="also write each picture as NAME-1.png …")


def add_job_commands(commands) -> None:
    """The job verbs beside `imagine` (added by `build_parser`); bot.cli_jobs runs them."""
    p = commands.add_parser("blend", help="mix 2–5 pictures (and a text) into a new grid, as /blend does")
    p.add_argument("images", nargs="+", type=Path, help="2–5 picture files (PNG, JPEG, WebP, GIF …)")
    p.add_argument("--prompt", default="", help='optional text and parameters, e.g. "a new animal --seed 5" '
                   '(parameters alone: --prompt="--seed 5")')
    p.add_argument("--weights", default="", help="one per picture, and one more for the prompt: e.g. 1,1,0.5")
    p.add_argument("--dimensions", default="square", help="square, portrait or landscape")
    p.add_argument("--model", default=None, help="a model that can blend (pintor models)")
    _outputs(p)
    p = commands.add_parser("describe", help="four prompts that describe a picture, as /describe does")
    p.add_argument("image", type=Path, help="a picture file (PNG, JPEG, WebP, GIF …)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="also write the picture as described (upright PNG) here")
    p.set_defaults(separate=False)
    p = commands.add_parser("upscale", help="picture N of a job, larger (U1–U4)")
    p.add_argument("job", type=_job_id)
    p.add_argument("index", type=_index, metavar="N")
    _outputs(p)
    p = commands.add_parser("vary", help="four variations of picture N of a job (V1–V4)")
    p.add_argument("job", type=_job_id)
    p.add_argument("index", type=_index, metavar="N")
    p.add_argument("--strong", action="store_true", help="vary more (Vary (Strong))")
    _outputs(p)
    p = commands.add_parser("reroll", help="a job's grid again with a new seed (🔄)")
    p.add_argument("job", type=_job_id)
    _outputs(p)
    p = commands.add_parser("show", help="a finished job's details and pictures (yours, or posted publicly in "
                                         "a server)")
    p.add_argument("job", type=_job_id)
    p.add_argument("-o", "--output", type=Path, default=None, help="write the grid here (PNG)")
    p.add_argument("--separate", action="store_true", help="also write each picture as NAME-1.png …")
    p = commands.add_parser("history", help="the jobs you may read, newest first")
    p.add_argument("--page", type=_page, default=1, help="20 jobs a page; 1 is the newest")


def build_parser() -> argparse.ArgumentParser:
    """The parser of `pintor`: each verb a subcommand (`args.command`), its arguments as its help says."""
    parser = argparse.ArgumentParser(prog="pintor", description="A self-hosted, MidJourney-style image bot.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the Discord bot and its generation worker")
    commands.add_parser("worker", help="run one generation worker for a Redis queue (PINTOR_QUEUE_URL; "
                                       "PINTOR_DEVICE=cuda:N picks its GPU); SIGTERM stops it after its step")
    p = commands.add_parser("imagine", help="make a 2×2 grid from a prompt (or one per line of a file), as "
                                            "/imagine does")
    p.add_argument("prompt", nargs="?", help='e.g. "a red fox in the snow --ar 3:2 --seed 7 --no people"')
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="grid file (PNG; default pintor.png); with --from, the folder for the pictures")
    p.add_argument("--separate", action="store_true", help="also write the four images as NAME-1.png …")
    p.add_argument("--from", dest="batch", type=Path, default=None, metavar="FILE",
                   help="a batch: one prompt per line (# comments), written as NNN-<prompt>.png")
    p.add_argument("--resume", action="store_true", help="finish a batch that was interrupted")
    add_job_commands(commands)
    m = commands.add_parser("models", help="the configured models: where each comes from, downloaded or not, "
                                           "what it can do; `pintor models pull [NAME…]` downloads them ahead")
    m.add_argument("action", nargs="?", choices=["pull"], help="pull: download the models into the "
                   "Hugging Face cache (HF_HOME), with progress, resuming an interrupted download")
    m.add_argument("names", nargs="*", metavar="NAME", help="the models to pull (default: all)")
    m.add_argument("--fp16", action="store_true", help="pull the half-precision weights (a GPU server's) even "
                   "where this machine has no GPU")
    d = commands.add_parser("doctor", help="check device, versions, database and models; say how to fix problems")
    d.add_argument("--reach", action="store_true", help="also ask each remote model's API (OpenAI) whether "
                   "it answers to Pintor's key (lists its models: costs nothing)")
    commands.add_parser("health", help="cheap check for a container's HEALTHCHECK: database and data folder")
    db = commands.add_parser("db", help="database maintenance")
    db_actions = db.add_subparsers(dest="action", required=True)
    db_actions.add_parser("upgrade", help="apply the migrations to DATABASE_URL")
    copy = db_actions.add_parser("copy", help="copy every row (ids kept) of the database FROM into the new, "
                                              "empty database TO, e.g. SQLite to PostgreSQL (docs/operations.md)")
    copy.add_argument("source", metavar="FROM", help="a database URL, e.g. sqlite+aiosqlite:///./data/pintor.db")
    copy.add_argument("target", metavar="TO", help="a database URL, e.g. postgresql+asyncpg://pintor:PASSWORD@host/pintor")
    # an option spelt in part (`--separat`, `--pag 2`) is refused, not read as the one it starts:
    # a typo should not run a job
    for sub in (parser, *commands.choices.values(), *db_actions.choices.values()):
        sub.allow_abbrev = False
    return parser

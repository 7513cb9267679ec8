"""The `pintor` verbs that make and read pictures (imagine, blend, describe, upscale, vary, reroll, show,
history, and batches of prompts): each runs through `bot.local.Pintor` — the same studio, queue,
worker and database as Discord — shows progress on the terminal, writes its pictures where
`-o` says, and exits 2 with the member-facing message on bad input (nothing stored), 1 when a
job fails, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.intake import USER_ERRORS, ModelUnavailable, RequestError, check_model_files
from bot.limits import clean
from bot.local import JobFailed, Pintor, Result, Watcher, check_output_name, copy_atomic, output_paths
from bot.settings import Settings
from bot.studio import Submitted
from generation.events import Done, Event, Progress, Queued, Started
from generation.request import Request, kind_name
from storage.models import Job, JobStatus

EXIT_BAD_INPUT, EXIT_FAILED = 2, 1
MANIFEST = ".pintor-batch.json"  # in a batch's output folder: which job made which line


def _check_writable(paths: list[Path]) -> None:
    """Exit with EXIT_BAD_INPUT (2), the reason on stderr, before any job is made when a file
    of `paths` cannot be written: a folder, a format Pillow cannot write (`x.psd`), a folder
    that does not exist, no permission."""
    for path in paths:
        reason = None
        if path.is_dir():
            reason = f"{path} is a folder; give a file name such as {path / 'out.png'}"
        else:
            try:
                check_output_name(path)
            except ValueError as err:
                reason = str(err)
        parent = path.parent if str(path.parent) else Path(".")
        if reason is None and not parent.is_dir():
            reason = f"cannot write {path}: the folder {parent} does not exist"
        if reason is None and (not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK))):
            reason = f"cannot write {path}: permission denied"
        if reason is not None:
            print(f"error: {reason}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT)


def said_resumed(jobs: Sequence[Job]) -> None:
    """On stderr: the operator's jobs that an earlier command left unfinished, run first now."""
    print(f"note: first finishing {'this job' if len(jobs) == 1 else 'these jobs'} that an earlier command "
          f"left unfinished (stopped or killed): {', '.join(f'job {job.id}' for job in jobs)}", file=sys.stderr)


class TerminalProgress(Watcher):
    """One job on the terminal: what was queued, its position, notices, a progress bar."""

    def __init__(self) -> None:
        self._bar = None

    def submitted(self, submitted: Submitted) -> None:
        """The job's header (its kind, the size it makes, steps, seed, model), then its notices:
        the prompt's, then the job's own (e.g. an upscale of an upscale, a model replaced)."""
        request = submitted.request
        size = f"{request.width}×{request.height}"
        made = submitted.size or (request.width, request.height)
        if made != (request.width, request.height):  # an upscale: the picture it enlarges, then what it makes
            size += f" → {made[0]}×{made[1]}"
        print(f"job {submitted.job_id}: {request.kind}, {size}, {request.steps} steps, "
              f"seed {request.seed}, model {request.model}", file=sys.stderr)
        for notice in dict.fromkeys((*request.notices, *submitted.notices)):  # what was changed or ignored
            print(f"note: {notice}", file=sys.stderr)

    def resumed(self, jobs: Sequence[Job]) -> None:
        said_resumed(jobs)

    def existing(self, job: Job) -> None:
        what = f"picture {job.parent_index} of job {job.parent_id}" if job.parent_id else "this picture"
        state = "made" if job.status == JobStatus.DONE else f"{job.status}: waiting for it"
        print(f"job {job.id} already upscales {what} ({state}); nothing new is queued", file=sys.stderr)

    def event(self, event: Event) -> None:
        from tqdm import tqdm

        if isinstance(event, Queued):
            print(f"queued — position {event.position}", file=sys.stderr)
        elif isinstance(event, Started):
            for notice in event.notices:
                print(f"note: {notice}", file=sys.stderr)
        elif isinstance(event, Progress):
            if self._bar is None:
                self._bar = tqdm(total=event.total, unit="step", desc="generating", file=sys.stderr)
            self._bar.update(event.step - self._bar.n)
        elif self._bar is not None:  # the final event
            self._bar.close()
            self._bar = None
        if isinstance(event, Done):
            for notice in event.notices:
                print(f"note: {notice}", file=sys.stderr)


async def run_job(settings: Settings, output: Path | None, separate: bool,
                  make: Callable[[Pintor], Awaitable[Result]]) -> int:
    """Run one job verb: check the output first, make the job, write its pictures.
    `output` None: `pintor-<job id>.png` in the current folder."""
    _check_writable(output_paths(output or Path("pintor-job.png"), separate))
    progress = TerminalProgress()
    try:
        async with Pintor(settings, watcher=progress) as pintor:
            result = await make(pintor)  # Ctrl-C cancels the job (`Pintor.finish`)
    except ModelUnavailable as err:  # the operator is the admin: the hub id or path, what to do
        print(f"error: {err.detail}", file=sys.stderr)
        return EXIT_FAILED
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except JobFailed as err:
        print(f"error: job {err.job_id}: {err}", file=sys.stderr)
        return EXIT_FAILED
    if result.prompts:  # a describe: its prompts are the result (its picture only with -o)
        for n, prompt in enumerate(result.prompts, start=1):
            print(f"{n}. {clean(prompt)}")
        print(f"(job {result.job_id}: `pintor imagine \"PROMPT\"` makes one)", file=sys.stderr)
        if output is None:
            return 0
    written = result.save(output or Path(f"pintor-{result.job_id}.png"), separate=separate)
    print(f"wrote {', '.join(str(p) for p in written)} (job {result.job_id}, seed {result.seed})")
    return 0


async def imagine(settings: Settings, prompt: str, output: Path, separate: bool) -> int:
    from bot.intake import prepare
    from bot.settings import registry_from

    _check_writable(output_paths(output, separate))
    try:  # bad prompts and models that cannot be had are answered before the worker starts
        registry = registry_from(settings)
        check_model_files(registry, prepare(registry, prompt).model)
    except ModelUnavailable as err:
        print(f"error: {err.detail}", file=sys.stderr)
        return EXIT_FAILED
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return await run_job(settings, output, separate, lambda pintor: pintor.imagine(prompt))


async def show(settings: Settings, job_id: int, output: Path | None, separate: bool) -> int:
    if output is not None:
        _check_writable(output_paths(output, separate))
    try:
        async with Pintor(settings) as pintor:
            result = await pintor.show(job_id)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # member text without direction controls: they would reorder the terminal's line
    print(f"job {result.job_id}: {result.kind}, model {result.model}, seed {result.seed}: {clean(result.prompt)}")
    for n, prompt in enumerate(result.prompts, start=1):  # a describe: its four prompts are its result
        print(f"{n}. {clean(prompt)}")
    for notice in result.notices:
        print(f"note: {clean(notice)}")
    if output is None:
        print(f"grid: {result.grid_path}")
    else:
        written = result.save(output, separate=separate)
        print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def jobs_count(total: int) -> str:
    """"1 job", "2 jobs"."""
    return f"{total} job" + ("" if total == 1 else "s")


async def history(settings: Settings, page: int) -> int:
    async with Pintor(settings) as pintor:
        jobs, total = await pintor.history(page=page)
    if not jobs:
        print("no jobs yet: try pintor imagine" if total == 0 else f"page {page} is empty ({jobs_count(total)})")
        return 0
    for job in jobs:
        who = "operator" if job.user_id == 0 else f"member {job.user_id}"
        made = job.created_at.strftime("%Y-%m-%d %H:%M")
        kind = kind_name(job.kind, Request.from_json(job.request).outpaint, job.parent_index)  # "U2", "Zoom Out 2x"
        print(f"{job.id:>6}  {job.status:<9} {kind:<13} {job.model:<16} {made}  {who:<26} {clean(job.prompt)[:80]}")
    print(f"page {page} · {jobs_count(total)} (yours and those posted publicly in a server)")
    return 0


# -- batches ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    number: int  # in the file, for messages
    prompt: str
    name: str  # NNN-<slug>.png


def slug(text: str, max_chars: int = 40) -> str:
    """A file-name-safe form of a prompt's text: ASCII letters and digits joined by '-'."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", plain.lower()).strip("-")[:max_chars].rstrip("-") or "prompt"


def read_batch(settings: Settings, source: Path) -> list[Line]:
    """The prompts of a batch file (one per line; blank lines and lines starting with # are
    skipped), each checked as /imagine checks it. Raises RequestError naming every bad line."""
    from bot.intake import prepare
    from bot.settings import registry_from

    try:
        data = source.read_bytes()
        # UTF-8 (with or without a BOM), or UTF-16 with its BOM: what Windows' PowerShell writes
        # with `>` and Notepad's "Unicode"
        text = data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise RequestError(f"cannot read {source}: {err}") from None
    registry = registry_from(settings)
    entries, errors = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        prompt = raw.strip()
        if not prompt or prompt.startswith("#"):
            continue
        try:
            entries.append((number, prompt, prepare(registry, prompt).prompt))
        except USER_ERRORS as err:
            errors.append(f"{source}:{number}: {err}")
    if errors:
        raise RequestError("\n".join(errors))
    if not entries:
        raise RequestError(f"{source} holds no prompts (one per line; # starts a comment).")
    width = max(3, len(str(len(entries))))
    return [Line(number, prompt, f"{n:0{width}d}-{slug(display)}.png")
            for n, (number, prompt, display) in enumerate(entries, start=1)]


def _read_manifest(folder: Path) -> dict[str, dict]:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["lines"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def _write_manifest(folder: Path, lines: dict[str, dict]) -> None:
    partial = folder / f"{MANIFEST}.part"
    partial.write_text(json.dumps({"version": 1, "lines": lines}, indent=1), encoding="utf-8")
    os.replace(partial, folder / MANIFEST)


class BatchProgress(Watcher):
    """One bar for the whole batch; the current line's step beside it."""

    def __init__(self, total: int, done: int):
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, unit="prompt", desc="batch", file=sys.stderr)
        self.current = ""

    def resumed(self, jobs: Sequence[Job]) -> None:
        self.bar.clear()
        said_resumed(jobs)
        self.bar.refresh()

    def event(self, event: Event) -> None:
        if isinstance(event, Progress):
            self.bar.set_postfix_str(f"{self.current} step {event.step}/{event.total}", refresh=False)
            self.bar.refresh()


async def imagine_batch(settings: Settings, source: Path, folder: Path, resume: bool) -> int:
    """Queue every prompt of `source` at once (the queue keeps members fair: a batch does not
    hold Discord's members back), then write each grid as `folder/NNN-<slug>.png` as it is done.

    A line is finished when its file exists (files are written by rename, so a file is whole).
    The jobs of unfinished lines are recorded in `folder/.pintor-batch.json`; `--resume` follows
    the jobs a stop left queued (the start queues them again) instead of queueing them twice,
    and queues anew only lines whose job failed, was cancelled or is gone. (A stop in the
    instant between storing a job and recording it in the file would leave one job unrecorded:
    its line is queued again on resume.)"""
    try:
        lines = read_batch(settings, source)
    except RequestError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if folder.exists() and not folder.is_dir():
        print(f"error: {folder} is a file; give a folder for a batch's pictures", file=sys.stderr)
        return EXIT_BAD_INPUT
    folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK):
        print(f"error: cannot write in {folder}: permission denied", file=sys.stderr)
        return EXIT_BAD_INPUT
    manifest = _read_manifest(folder)
    done = [line for line in lines if (folder / line.name).exists()]
    if not resume and (done or manifest):
        print(f"error: {folder} already holds a batch ({(done[0].name if done else MANIFEST)}); "
              f"add --resume to finish it, or choose another folder with -o", file=sys.stderr)
        return EXIT_BAD_INPUT
    todo = [line for line in lines if line not in done]
    if done:
        print(f"{len(done)} of {len(lines)} prompts already done", file=sys.stderr)
    progress = BatchProgress(len(lines), len(done))
    failures = 0
    try:
        async with Pintor(settings, watcher=progress) as pintor:
            jobs: dict[Line, int] = {}
            for line in todo:  # a previous run's job, if it can still give this line its picture
                entry = manifest.get(line.name)
                if entry and entry.get("prompt") == line.prompt:
                    job = await pintor.studio.job(entry["job"])
                    ended = (JobStatus.FAILED, JobStatus.CANCELLED)
                    if job is not None and job.user_id == 0 and job.status not in ended:
                        jobs[line] = job.id
            followed = len(jobs)
            for line in todo:
                if line not in jobs:
                    submitted = await pintor.submit_imagine(line.prompt)
                    jobs[line] = submitted.job_id
                    manifest[line.name] = {"prompt": line.prompt, "job": submitted.job_id}
                    _write_manifest(folder, manifest)  # right after the job is stored
            if followed:
                progress.bar.write(f"following {followed} jobs of the previous run", file=sys.stderr)
            for line in todo:
                progress.current = line.name
                try:
                    result = await pintor.finish(jobs[line], cancel_if_interrupted=False)
                except JobFailed as err:
                    failures += 1
                    progress.bar.write(f"error: {source}:{line.number}: job {err.job_id}: {err}", file=sys.stderr)
                    continue
                copy_atomic(result.grid_path, folder / line.name)
                progress.bar.update(1)
                progress.bar.write(f"wrote {folder / line.name} (job {result.job_id}, seed {result.seed})",
                                   file=sys.stdout)
                sys.stdout.flush()
    except asyncio.CancelledError:  # Ctrl-C: the queued jobs stay queued for --resume
        progress.bar.close()
        print("interrupted: run the same command with --resume to finish the batch", file=sys.stderr)
        raise
    progress.bar.close()
    if failures:
        print(f"{failures} of {len(lines)} prompts failed; --resume queues them again", file=sys.stderr)
        return EXIT_FAILED
    print(f"batch done: {len(lines)} pictures in {folder}")
    return 0


def run_job_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run a verb of `add_job_commands`, or `imagine` (one prompt or a batch)."""
    command = args.command
    if command == "imagine":
        if args.prompt is not None and args.batch is not None:
            print("error: give a prompt or --from FILE, not both", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.prompt is None and args.batch is None:
            print("error: " + ("--resume is for batches (--from FILE)" if args.resume
                               else "give a prompt, or --from FILE with one prompt per line"), file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.batch is not None:
            if args.separate:
                print("error: --separate is for one prompt; a batch writes one grid per line", file=sys.stderr)
                return EXIT_BAD_INPUT
            return asyncio.run(imagine_batch(settings, args.batch, args.output or Path("."), args.resume))
        if args.resume:
            print("error: --resume is for batches (--from FILE)", file=sys.stderr)
            return EXIT_BAD_INPUT
        return asyncio.run(imagine(settings, args.prompt, args.output or Path("pintor.png"), args.separate))
    if command == "show":
        return asyncio.run(show(settings, args.job, args.output, args.separate))
    if command == "history":
        return asyncio.run(history(settings, args.page))
    makers = {
        "blend": lambda p: p.blend(args.images, prompt=args.prompt, weights=args.weights,
                                   dimensions=args.dimensions, model=args.model),
        "describe": lambda p: p.describe(args.image),
        "upscale": lambda p: p.upscale(args.job, args.index),
        "vary": lambda p: p.vary(args.job, args.index, strong=getattr(args, "strong", False)),
        "reroll": lambda p: p.reroll(args.job),
    }
    return asyncio.run(run_job(settings, args.output, args.separate, makers[command]))


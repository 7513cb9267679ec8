"""Every job verb of `pintor` as an operator runs it — real subprocesses, the real worker, a real
SQLite file — and the README's Python example run as a script, as written there. Refusals of
bad input run `bot.cli.main` in this process (tests/cli_in_process.py): what they prove is the
message, the exit code and that nothing is stored, not the process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

from tests.cli_in_process import environment, pintor_here
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def env(tmp_path: Path, small_registry_file: Path) -> dict[str, str]:
    return cli_env(tmp_path, small_registry_file)


def png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (48, 40)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


def jobs(tmp_path: Path) -> list[tuple]:
    db = tmp_path / "data" / "pintor.db"
    if not db.exists():
        return []
    with closing(sqlite3.connect(db)) as conn:  # (sqlite3's own `with` commits; it does not close)
        return conn.execute(
            "SELECT id, kind, status, parent_id, parent_index, request FROM jobs ORDER BY id").fetchall()


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        return picture.size


def main_calls_script(*calls: list[str]) -> str:
    """A Python script that calls `bot.cli.main` once per argument list in ONE process (the
    interpreter starts once; each call starts the worker, forked from one forkserver as the
    suite's are: tests/conftest.py), then prints the exit codes and the discord modules it
    loaded."""
    return (
        "import json, sys\n"
        "import generation.queue\n"
        "generation.queue.WORKER_START_METHOD = 'forkserver'\n"
        "from bot.cli import main\n"
        "codes = []\n"
        f"for args in json.loads({json.dumps(json.dumps(calls))}):\n"
        "    try:\n"
        "        codes.append(main(args))\n"
        "    except SystemExit as exit:  # argparse refusing an argument\n"
        "        codes.append(exit.code)\n"
        "    print('---', flush=True)\n"
        "print('CODES', json.dumps(codes))\n"
        "print('DISCORD', sorted(n for n in sys.modules if n.split('.')[0] == 'discord'))\n")


def codes_of(stdout: str) -> list[int]:
    """The exit codes a `main_calls_script` printed; fails if it loaded discord.py."""
    lines = stdout.splitlines()
    assert "DISCORD []" in lines, "a CLI verb loaded discord.py"
    return json.loads(next(line for line in lines if line.startswith("CODES "))[6:])


def run_main(env: dict[str, str], cwd: Path, *calls: list[str]) -> tuple[list[int], str, str]:
    """Run a `main_calls_script`; returns the exit codes, stdout and stderr."""
    done = subprocess.run([sys.executable, "-c", main_calls_script(*calls)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr
    return codes_of(done.stdout), done.stdout, done.stderr


def test_every_job_verb_from_the_terminal(env, tmp_path):
    png(tmp_path / "cat.png", (200, 120, 40))
    png(tmp_path / "tiger.png", (30, 160, 220), (64, 64))
    codes, out, err = run_main(
        env, tmp_path,
        ["blend", "cat.png", "tiger.png", "--prompt", "a new animal --seed 5", "--weights", "1,1,0.5",
         "--dimensions", "landscape", "-o", "mix.png", "--separate"],
        ["upscale", "1", "2", "-o", "big.png"],
        ["upscale", "1", "2", "-o", "big-again.png"],
        ["vary", "1", "3", "--strong", "-o", "vary.png"],
        ["reroll", "1"],  # no -o: pintor-<job>.png
        ["show", "1", "-o", "shown.png"],
        ["history"],
    )
    assert codes == [0, 0, 0, 0, 0, 0, 0], out + err

    rows = jobs(tmp_path)
    assert [(r[0], r[1], r[2], r[3], r[4]) for r in rows] == [
        (1, "blend", "done", None, None), (2, "upscale", "done", 1, 2), (3, "variation", "done", 1, 3),
        (4, "blend", "done", 1, None)]
    blend = json.loads(rows[0][5])
    assert blend["image_weights"] == [1.0, 1.0] and blend["parts"] == [["a new animal", 0.5]]
    assert blend["seed"] == 5 and blend["model"] == "tiny-kandinsky"
    assert json.loads(rows[2][5])["strength"] == 0.7  # --strong

    mix, (tile_width, tile_height) = size_of(tmp_path / "mix.png"), size_of(tmp_path / "mix-1.png")
    assert tile_width > tile_height and mix == (2 * tile_width, 2 * tile_height)  # landscape
    assert (tmp_path / "shown.png").read_bytes() == (tmp_path / "mix.png").read_bytes()
    big_width, big_height = size_of(tmp_path / "big.png")
    assert big_width > tile_width and big_height > tile_height
    assert size_of(tmp_path / "vary.png") == mix
    assert size_of(tmp_path / "pintor-4.png") == mix
    assert "wrote mix.png, mix-1.png, mix-2.png, mix-3.png, mix-4.png (job 1, seed 5)" in out
    # progress on the terminal: what was queued, then the steps
    assert "job 1: blend" in err and "queued — position" in err and "generating" in err
    history = out.split("---")[6]
    assert [int(line.split()[0]) for line in history.strip().splitlines()[:-1]] == [4, 3, 2, 1]
    assert "a new animal" in history and "4 jobs" in history
    listed = {int(line.split()[0]): line for line in history.strip().splitlines()[:-1]}
    assert listed[2].split()[2] == "upscale"  # by its kind's name

    # the same upscale asked for again: the first one's picture is written (it exited 2, "already
    # makes this", writing nothing), and nothing new is queued
    again = out.split("---")[2]
    assert "wrote big-again.png (job 2," in again
    assert "job 2 already upscales picture 2 of job 1 (made); nothing new is queued" in err
    assert (tmp_path / "big-again.png").read_bytes() == (tmp_path / "big.png").read_bytes()

    # a reader that stops early (`pintor history | head`): a quiet end, no "Broken pipe"
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "bot.cli", "history"], env=env, cwd=tmp_path, stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr


@pytest.mark.parametrize("args, message", [
    (["blend", "cat.png"], "takes 2 to 5 images, not 1"),
    (["blend", "cat.png", "missing.png"], "There is no file missing.png"),
    (["blend", "cat.png", "notes.txt"], "notes.txt"),
    (["blend", "cat.png", "cat.png", "--weights", "1,x"], "weights must be numbers"),
    (["blend", "cat.png", "cat.png", "--weights", "1,1,1,1"], "weights: give 2"),
    (["blend", "cat.png", "cat.png", "--model", "tiny-sd"], "'tiny-sd' cannot blend"),
    (["blend", "cat.png", "cat.png", "--dimensions", "round"], "dimensions must be one of"),
    (["blend", "cat.png", "cat.png", "--prompt", "x --ar banana"], "--ar"),
    (["upscale", "7", "1"], "There is no job 7"),
    (["vary", "7", "2"], "There is no job 7"),
    (["reroll", "7"], "There is no job 7"),
    (["show", "7"], "There is no job 7"),
    (["vary", "1", "5"], "picture number must be 1, 2, 3 or 4"),
    (["upscale", "x", "1"], "a job number such as 42"),
    (["upscale", "1", "1", "-o", "x.psd"], "not .psd"),  # exited 1: bad output names are bad input too
    (["show", "1", "-o", "missing/x.png"], "the folder missing does not exist"),
    (["imagine"], "give a prompt, or --from FILE"),
    (["imagine", "a fox", "--from", "notes.txt"], "give a prompt or --from FILE, not both"),
    (["imagine", "--resume"], "--resume is for batches (--from FILE)"),
    (["imagine", "a fox", "--separat"], "unrecognized arguments: --separat"),  # ran a job with --separate
    (["history", "--pag", "2"], "unrecognized arguments: --pag"),
    (["history", "--page", "0"], "a page number from 1"),  # printed "page 0" with page 1's jobs
    (["history", "--page", "-1"], "a page number from 1"),
])
def test_bad_input_is_refused_with_the_members_message_and_stores_nothing(env, tmp_path, args, message):
    png(tmp_path / "cat.png", (200, 120, 40))
    (tmp_path / "notes.txt").write_text("not a picture", encoding="utf-8")
    done = pintor_here(env, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message.lower() in done.stderr.lower()
    assert jobs(tmp_path) == []
    inputs = tmp_path / "data" / "images" / "inputs"
    assert not inputs.exists() or not list(inputs.iterdir())  # no upload kept
    assert not list(tmp_path.glob("pintor-*.png"))


PROMPTS = """\
# foxes first
a red fox in the snow --seed 1

  a Café in Paris, at night! --ar 3:2 --seed 2
# a comment is not a prompt
a blue whale --seed 3 --steps 20
a green frog --seed 4 --steps 20
"""
NAMES = ["001-a-red-fox-in-the-snow.png", "002-a-cafe-in-paris-at-night.png", "003-a-blue-whale.png",
         "004-a-green-frog.png"]


def test_a_batch_is_interrupted_and_resumed_without_redoing_or_doubling_a_line(env, tmp_path):
    (tmp_path / "prompts.txt").write_text(PROMPTS, encoding="utf-8")
    command = [sys.executable, "-m", "bot.cli", "imagine", "--from", "prompts.txt", "-o", "out"]
    # Ctrl-C must reach the CLI as in a terminal: a test run started in the background of a
    # script (`nohup … &`) hands its children SIGINT ignored, and the batch then ran to its end
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C as soon as the first picture is written: the later lines (20 steps each, some seconds here) are still
    # queued or running
    assert first.stdout is not None and first.stderr is not None
    line = first.stdout.readline()
    assert line.startswith("wrote out/001-a-red-fox-in-the-snow.png"), line + first.stderr.read()
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, out + err
    assert "--resume" in err
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").glob("*.png")}
    assert NAMES[0] in written and len(written) < 4
    before = jobs(tmp_path)
    assert len(before) == 4  # all queued at once
    assert [r[2] for r in before if r[2] != "done"], "nothing was left to resume"

    # without --resume, the folder is not overwritten
    again = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert len(jobs(tmp_path)) == 4

    resumed = subprocess.run(command + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{len(written)} of 4 prompts already done" in resumed.stderr
    assert "following" in resumed.stderr  # the previous run's queued jobs, not new ones
    unfinished = ", ".join(f"job {r[0]}" for r in before if r[2] != "done")
    assert f"left unfinished (stopped or killed): {unfinished}" in resumed.stderr
    after = jobs(tmp_path)
    assert len(after) == 4 and all(r[2] == "done" for r in after)  # no line queued twice
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == NAMES
    for name, data in written.items():  # finished lines were not redone
        assert (tmp_path / "out" / name).read_bytes() == data
    seeds = [json.loads(r[5])["seed"] for r in after]
    assert seeds == [1, 2, 3, 4]
    assert size_of(tmp_path / "out" / NAMES[1]) == (256, 128)  # --ar 3:2 at 64 px native: 128×64 tiles
    # one progress bar for the batch
    assert "batch" in resumed.stderr and "prompt" in resumed.stderr


def test_a_batch_with_bad_lines_names_each_and_stores_nothing(env, tmp_path):
    (tmp_path / "prompts.txt").write_text("a fox\n# ok\na fox --ar banana\n\n--seed 3\na cat --seed -1\n",
                                          encoding="utf-8")
    done = pintor_here(env, "imagine", "--from", "prompts.txt", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2
    assert re.search(r"prompts\.txt:3: .*--ar", done.stderr)
    assert re.search(r"prompts\.txt:5: .*has no text", done.stderr)
    assert re.search(r"prompts\.txt:6: .*--seed", done.stderr)
    assert "prompts.txt:1" not in done.stderr
    assert jobs(tmp_path) == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_a_batch_file_saved_on_windows_is_read(env, tmp_path, encoding):
    """PowerShell's `>` writes UTF-16 with a BOM (and Notepad's "Unicode"): the batch was refused
    with "cannot read prompts.txt: 'utf-8' codec can't decode byte 0xff"."""
    text = "a café at night\r\n# a comment\r\na fox --ar banana\r\n"
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = b"\xfe\xff" + data
    (tmp_path / "prompts.txt").write_bytes(data)
    done = pintor_here(env, "imagine", "--from", "prompts.txt", "-o", "out", cwd=tmp_path)
    assert done.returncode == 2  # read: its bad line (and only that one) is named
    assert re.search(r"prompts\.txt:3: .*“banana”", done.stderr), done.stderr
    assert "prompts.txt:1" not in done.stderr and "cannot read" not in done.stderr
    assert jobs(tmp_path) == []


def readme_python_example() -> str:
    """The README's Python example: the first ```python block of its first screen."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(.*?)```", text, re.DOTALL)
    assert match, "README.md has no Python example"
    assert text.index(match.group(0)) < text.index("## Quick start"), "the example is not on the first screen"
    return match.group(1)


def test_the_readme_python_example_runs_as_written(env, tmp_path):
    example = readme_python_example()
    assert "blend" in example and "cat.png" in example and "tiger.png" in example
    png(tmp_path / "cat.png", (200, 120, 40))
    png(tmp_path / "tiger.png", (30, 160, 220), (64, 64))
    (tmp_path / "example.py").write_text(example, encoding="utf-8")
    done = subprocess.run([sys.executable, "example.py"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.name for p in tmp_path.glob("*.png") if p.name not in ("cat.png", "tiger.png"))
    assert written, "the example wrote no picture"
    [blend] = [r for r in jobs(tmp_path) if r[1] == "blend"]
    assert blend[2] == "done" and "a new animal" in json.loads(blend[5])["prompt"]


def test_the_synchronous_interface_gives_pil_images_and_the_same_pictures_for_the_same_seed(env, tmp_path):
    """`Pintor.sync()` and the async form from a running event loop (as in a notebook), run in
    this process with an operator's environment (its worker forks from the suite's forkserver)."""
    from bot.local import USER_ERRORS, Pintor

    with environment(env, tmp_path):
        with Pintor.sync() as pintor:
            one = pintor.imagine("a lighthouse at dusk --seed 9 --raw")
            two = pintor.imagine("a lighthouse at dusk --seed 9")
            assert one.job_id != two.job_id and one.seed == two.seed == 9
            assert [i.tobytes() for i in one.images] == [i.tobytes() for i in two.images]
            assert one.grid.size == (128, 128) and one.grid.mode == "RGB" and len(one.images) == 4
            # the prompt's notices, as the CLI prints them and Discord posts them (they were missing)
            assert one.notices == ("Ignored what Pintor does not have: “--raw”.",), one.notices
            assert two.notices == ()
            with pytest.raises(USER_ERRORS, match=r"--ar.*banana"):
                pintor.imagine("a lighthouse --ar banana")
            shown = pintor.show(one)
            assert shown.grid.tobytes() == one.grid.tobytes() and shown.notices == one.notices
            # upscaled twice: the first upscale again, not AlreadyMade (as Discord's second press)
            big = pintor.upscale(one, 1)
            again = pintor.upscale(one.job_id, 1)
            assert again.job_id == big.job_id and again.paths == big.paths and again.kind == "upscale"

        async def main() -> tuple[list[int], int]:
            async with Pintor() as pintor:
                listed, total = await pintor.history()
                return [j.id for j in listed], total

        assert asyncio.run(main()) == ([3, 2, 1], 3)
    assert len(jobs(tmp_path)) == 3


def test_a_job_a_stopped_command_left_unfinished_runs_first_and_is_said(env, tmp_path):
    """A command that stops before its job ends (killed, a closed pipe, a Python script that
    leaves) leaves it queued; the next command finishes it first and says so (it ran first
    without a word: a tester's `pintor reroll` made two other jobs before its own, 39 s)."""
    from bot.cli_jobs import jobs_count
    from bot.local import Pintor

    async def leave_one() -> int:
        async with Pintor() as pintor:
            return (await pintor.submit_imagine("a lighthouse at dusk --seed 4")).job_id

    with environment(env, tmp_path):
        left = asyncio.run(leave_one())
    assert [(r[0], r[2]) for r in jobs(tmp_path)] in ([(left, "queued")], [(left, "running")])
    made = pintor_here(env, "imagine", "a red fox --seed 5", "-o", "fox.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert (f"note: first finishing this job that an earlier command left unfinished (stopped or killed): job {left}"
            in made.stderr), made.stderr
    assert [r[2] for r in jobs(tmp_path)] == ["done", "done"]
    assert (jobs_count(1), jobs_count(2)) == ("1 job", "2 jobs")


def test_python_save_refuses_a_name_of_a_format_pillow_cannot_write(tmp_path):
    """`result.save("fox.psd")` wrote a PNG under that name; now ValueError, nothing written.
    `.jpg` and a name without a suffix still work."""
    from bot.local import Result
    grid = png(tmp_path / "grid.png", (200, 30, 30), (64, 64))
    pictures = tuple(png(tmp_path / f"{i}.png", (200, 30, 30), (32, 32)) for i in range(1, 5))
    result = Result(job_id=1, kind="imagine", prompt="a fox", model="tiny-sd", seed=1, grid_path=grid, paths=pictures)
    with pytest.raises(ValueError, match=r"cannot write .*fox\.psd: .*not \.psd"):
        result.save(tmp_path / "fox.psd", separate=True)
    assert not list(tmp_path.glob("*fox*"))
    assert result.save(tmp_path / "fox.jpg") == [tmp_path / "fox.jpg"]
    with Image.open(tmp_path / "fox.jpg") as written:
        assert written.format == "JPEG"
    result.save(tmp_path / "fox")
    with Image.open(tmp_path / "fox") as written:
        assert written.format == "PNG"


def test_the_header_says_the_size_a_job_makes_and_its_notices(capsys):
    """An upscale's request holds the size of the picture it enlarges: the header says both,
    what it starts from and what it makes (it said only the first); the job's own notices (an
    upscale of an upscale, a model replaced) follow the prompt's."""
    from bot.cli_jobs import TerminalProgress
    from bot.studio import Submitted
    from generation.request import JobKind, Request

    async def no_events():
        return
        yield

    request = Request(kind=JobKind.UPSCALE, model="tiny-upscaler", prompt="a fox", parts=(("a fox", 1.0),),
                      negative="", width=256, height=192, steps=2, guidance=0.0, seed=7, count=1,
                      notices=("Ignored what Pintor does not have: “--raw”.",))
    again = "Job 2 is an upscale already: its picture is upscaled again (as Upscale (Subtle) under it in Discord)."
    TerminalProgress().submitted(Submitted(3, 1, request, no_events(), size=(1024, 768), notices=(again,)))
    assert capsys.readouterr().err.splitlines() == [
        "job 3: upscale, 256×192 → 1024×768, 2 steps, seed 7, model tiny-upscaler",
        "note: Ignored what Pintor does not have: “--raw”.",
        f"note: {again}"]
    # a grid makes its request's size: said once, as before
    grid = request.replace(kind=JobKind.IMAGINE, width=64, height=64, count=4, notices=())
    TerminalProgress().submitted(Submitted(4, 1, grid, no_events(), size=(64, 64)))
    assert capsys.readouterr().err.splitlines() == ["job 4: imagine, 64×64, 2 steps, seed 7, model tiny-upscaler"]


def test_an_upscale_of_an_upscale_is_upscaled_again_as_its_discord_button_does_and_said(
        tmp_path, small_registry_file):
    """`pintor upscale JOB 1` of a job that is an upscale: Discord has no U under an upscale,
    its Upscale (Subtle) button enlarges that picture again; the CLI does the same, and says so
    (it was silent). Without an upscaling model: resampled ×2 each time (cheap on a CPU)."""
    from bot.local import USER_ERRORS, Pintor, Watcher

    plain = tmp_path / "models.toml"  # the tiny models without the upscaler
    text = re.sub(r'upscaler = "tiny-upscaler"\n|\[models\.tiny-upscaler\][^[]*', "",
                  small_registry_file.read_text(encoding="utf-8"))
    plain.write_text(text, encoding="utf-8")
    told: list = []

    class Told(Watcher):
        def submitted(self, submitted) -> None:
            told.append(submitted)

    with environment(cli_env(tmp_path, plain), tmp_path):
        with Pintor.sync(watcher=Told()) as pintor:
            grid = pintor.imagine("a lighthouse at dusk --seed 9")
            big = pintor.upscale(grid, 2)
            assert big.kind == "upscale" and big.images[0].size == (128, 128)
            assert not any("upscale already" in notice for notice in big.notices)
            bigger = pintor.upscale(big, 1)
            assert bigger.kind == "upscale" and bigger.images[0].size == (256, 256)
            said = (f"Job {big.job_id} is an upscale already: its picture is upscaled again (as Upscale (Subtle) "
                    "under it in Discord).")
            assert bigger.notices[0] == said
            # what the header is made of: the picture it enlarges, the size it makes, the notice
            assert [(s.request.width, s.request.height, s.size) for s in told[1:]] == [
                (64, 64, (128, 128)), (128, 128, (256, 256))]
            assert told[2].notices[0] == said
            with pytest.raises(USER_ERRORS, match=rf"Job {big.job_id} has no image 2 \(it has 1\)"):
                pintor.upscale(big, 2)
    assert len(jobs(tmp_path)) == 3

"""Docs are tested: README.md and docs/*.md must not rot.

Convention (also in docs/DEVELOPING.md, "Docs are tested"):

- Every fenced ``bash``/``sh``/``shell``/``console`` block is CHECKED. Each command line
  (backslash continuations joined, split at ``&&``, ``||``, ``;``, ``|``) that runs ``us3l``, a
  path ending in ``/us3l``, ``python -m us3l.cli.main`` or ``torchrun ... -m
  us3l.cli.main`` / ``torchrun ... $(which us3l)`` is parsed by the real click command
  without being executed: an unknown option, a bad choice or type, or a missing argument fails
  with ``document:line`` and click's message. Shell variables and ``$(...)`` become the placeholder
  ``1`` (``$(which us3l)`` becomes ``us3l``); paths need not exist. A torchrun line must launch
  us3l, and its own flags must parse with torchrun's argument parser.
- A block whose previous non-empty line is ``<!-- doctest: run -->`` is also EXECUTED, in
  document order, in one temporary directory per document (later blocks see earlier files):
  shell blocks with ``bash -e``, ``python`` blocks with this interpreter (``US3L_DOCTEST=1`` set).
  HOME, XDG_CACHE_HOME and XDG_CONFIG_HOME point into the temp dir and the venv's bin dir comes
  first on PATH. Every ``us3l`` invocation gets tiny settings appended (see ``doc_blocks.TINY``;
  the later repeated option wins), and ``.venv/bin/us3l`` / ``.venv/bin/python`` become ``us3l`` /
  ``python``. Repository files are not there: a run-block must make what it uses.
- ``toml`` blocks must load with the device-profile loader (us3l/benchmarks/devices.py), or as a fleet
  file (``us3l.fleet.load_fleet``) when they name ``arch`` or ``checkpoint``.
- ``<!-- doctest: skip -->`` before a block exempts it from checking (for deliberately wrong
  examples or non-profile TOML).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from doc_blocks import (Block, Command, check_argv, check_torchrun, commands, extract_blocks, rewrite_script)

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_TIMEOUT_S = 600
TAIL_LINES = 40


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def _blocks(doc: Path) -> list[Block]:
    return extract_blocks(doc.read_text(encoding="utf-8"))


RUN_DOCS = [d for d in DOCS if d.is_file() and any(b.run for b in _blocks(d))]


def _fleet_problem(block: Block, path: Path) -> str | None:
    """A fleet file (``us3l fleet plan``: top-level ``arch`` or ``checkpoint``) must load with
    ``load_fleet``; files it names are stood in for by empty files. ``"not a fleet file"`` otherwise."""
    import tomllib

    from us3l.fleet import load_fleet
    from us3l.core.errors import US3LError

    try:
        data = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError:
        return "not a fleet file"
    if "arch" not in data and "checkpoint" not in data:
        return "not a fleet file"
    for key in ("checkpoint", "devices_file"):
        if isinstance(data.get(key), str):
            (path.parent / data[key]).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / data[key]).touch()
    try:
        load_fleet(path)
    except US3LError as exc:
        msg = str(exc)
        m = re.match(re.escape(str(path)) + r":(\d+):\s*", msg)
        return f"line {block.body_line + int(m.group(1)) - 1}: {msg[m.end():]}" if m else msg.replace(str(path), "block")
    return None


def _toml_problem(block: Block, tmp: Path) -> str | None:
    """``None`` when the block loads as device profiles with known runners and precisions."""
    from us3l.benchmarks.config import PRECISIONS
    from us3l.benchmarks.devices import load_profiles
    from us3l.benchmarks.runners import list_runners
    from us3l.core.errors import US3LError

    path = tmp / f"block_{block.line}.toml"
    path.write_text(block.text + "\n", encoding="utf-8")
    fleet = _fleet_problem(block, path)
    if fleet != "not a fleet file":
        return fleet
    try:
        profiles = load_profiles(path)
    except US3LError as exc:  # "<path>:<line>: ..." -> the document's line
        msg = str(exc)
        m = re.match(re.escape(str(path)) + r":(\d+):\s*", msg)
        return f"line {block.body_line + int(m.group(1)) - 1}: {msg[m.end():]}" if m else msg.replace(str(path), "block")
    if not profiles:
        return "no [devices.<name>] profile in the block"
    for prof in profiles.values():
        if prof.runner not in list_runners():
            return f"profile {prof.name!r}: runner {prof.runner!r} is not one of {', '.join(list_runners())}"
        if prof.precision not in PRECISIONS:
            return f"profile {prof.name!r}: precision {prof.precision!r} is not one of {', '.join(PRECISIONS)}"
    return None


def doc_problems(doc: Path, tmp: Path) -> list[str]:
    """Every checking failure of ``doc`` as ``doc:line: message`` lines."""
    name = _rel(doc)
    problems: list[str] = []
    for block in _blocks(doc):
        if block.skip:
            continue
        if block.lang == "toml":
            msg = _toml_problem(block, tmp)
            if msg:
                problems.append(f"{name}:{block.line}: toml block is not a valid device profile or fleet file: {msg}")
            continue
        if not block.is_shell:
            continue
        for found in commands(block):
            if not isinstance(found, Command):
                line, text, msg = found
                problems.append(f"{name}:{line}: {msg}\n    {text}")
                continue
            inv = found.invocation
            if inv.launcher == "torchrun":
                msg = check_torchrun(inv.launcher_args)
                if msg:
                    problems.append(f"{name}:{found.line}: torchrun: {msg}\n    {found.text}")
            msg = check_argv(inv.args)
            if msg:
                problems.append(f"{name}:{found.line}: {msg}\n    {found.text}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_doc_commands_parse(doc, tmp_path):
    assert doc.is_file(), f"{_rel(doc)} is missing"
    problems = doc_problems(doc, tmp_path)
    assert not problems, "\n".join(problems)


def _tail(text: str) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-TAIL_LINES:]) if lines else "(empty)"


def run_env(tmp: Path) -> dict[str, str]:
    """Environment of run-blocks: home, caches and config inside ``tmp``, the venv first on PATH."""
    env = dict(os.environ)
    for var, sub in (("HOME", "home"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config")):
        (tmp / sub).mkdir(exist_ok=True)
        env[var] = str(tmp / sub)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(US3L_DOCTEST="1", PYTHONUNBUFFERED="1", COLUMNS="120", MPLBACKEND="Agg")
    env.pop("VIRTUAL_ENV", None)
    return env


def run_blocks(doc: Path, workdir: Path) -> list[tuple[int, float]]:
    """Execute the run-blocks of ``doc`` in order inside ``workdir``; fails the test on the first error.

    Returns:
        ``(block line, seconds)`` per executed block.
    """
    env = run_env(workdir)
    timings = []
    for block in _blocks(doc):
        if not block.run:
            continue
        if block.is_shell:
            script = workdir / f"block_{block.line}.sh"
            script.write_text(rewrite_script(block.text, console=block.lang == "console"), encoding="utf-8")
            argv = ["bash", "-e", str(script)]
        elif block.lang == "python":
            script = workdir / f"block_{block.line}.py"
            script.write_text(block.text + "\n", encoding="utf-8")
            argv = [sys.executable, str(script)]
        else:
            pytest.fail(f"{_rel(doc)}:{block.line}: a ```{block.lang} block cannot be run (bash, sh, shell, "
                        "console or python)")
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"{_rel(doc)}:{block.line}: ```{block.lang} block timed out after {RUN_TIMEOUT_S}s\n"
                        f"--- stdout (tail) ---\n{_tail(exc.stdout or '')}\n--- stderr (tail) ---\n"
                        f"{_tail(exc.stderr or '')}")
        timings.append((block.line, time.perf_counter() - start))
        if proc.returncode != 0:
            pytest.fail(f"{_rel(doc)}:{block.line}: ```{block.lang} block failed with exit code "
                        f"{proc.returncode} (ran {script.name} in {workdir})\n"
                        f"--- stdout (tail) ---\n{_tail(proc.stdout)}\n--- stderr (tail) ---\n{_tail(proc.stderr)}")
    return timings


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUN_DOCS, ids=_rel)
def test_doc_run_blocks(doc, tmp_path, validate_manifest):
    timings = run_blocks(doc, tmp_path)
    assert timings, f"{_rel(doc)} has no run-blocks"
    for manifest in tmp_path.rglob("manifest.json"):  # every fleet manifest a walkthrough writes
        if '"us3l-fleet-manifest/' in manifest.read_text(encoding="utf-8"):
            validate_manifest(manifest)


def test_readme_has_a_tour():
    readme = REPO / "README.md"
    assert any(b.run for b in _blocks(readme)), (
        "README.md has no '<!-- doctest: run -->' block: the tour must be executable")

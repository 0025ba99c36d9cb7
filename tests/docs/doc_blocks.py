"""Pure helpers behind the docs tests: fenced blocks, shell command lines, ``us3l`` argv, tiny-run rewriting.

Nothing here runs a command. The pieces, in the order the tests use them:

- :func:`extract_blocks` finds fenced code blocks in Markdown and the ``<!-- doctest: run -->`` /
  ``<!-- doctest: skip -->`` marker on the previous non-empty line;
- :func:`logical_lines` joins backslash continuations (and lines inside open quotes), skips
  heredoc bodies and comments, and in ``console`` blocks keeps only ``$ `` prompt lines;
- :func:`split_segments` cuts a line into simple commands at ``&&``, ``||``, ``;``, ``|`` and ``&``
  (quotes, ``$(...)`` and comments respected);
- :func:`words` substitutes shell variables and command substitutions with :data:`PLACEHOLDER`
  (``$(which us3l)`` becomes ``us3l``), splits with :mod:`shlex` and drops redirections;
- :func:`us3l_argv` recognises ``us3l``, ``path/to/us3l``, ``python -m us3l.cli.main`` and
  ``torchrun ... -m us3l.cli.main`` / ``torchrun ... $(which us3l)`` and returns the
  arguments after the program;
- :func:`check_argv` parses those arguments with the real click command (never invoking it);
- :func:`rewrite_script` appends :data:`TINY` settings to every ``us3l`` invocation of a run-block.
"""

from __future__ import annotations

import contextlib
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass

RUN_MARKER = "<!-- doctest: run -->"
SKIP_MARKER = "<!-- doctest: skip -->"
SHELL_LANGS = ("bash", "sh", "shell", "console")
PLACEHOLDER = "1"  # parses as a path, a string, an int and a float alike
US3L_MODULE = "us3l.cli.main"
TORCHRUN_MODULE = "torch.distributed.run"

# Appended to us3l invocations of run-blocks; a later repeated option overrides an earlier one.
TINY: dict[str, tuple[str, ...]] = {
    "train": ("--epochs", "1", "--max-steps-per-epoch", "2"),
    "eval": ("--calib-batches", "2"),
    "bench": ("--iterations", "3", "--rounds", "1", "--warmup-ms", "1"),
}

# Words that may precede the program of a simple command.
_PREFIX_WORDS = {"time", "env", "nohup", "exec", "command", "do", "then", "else", "elif", "if", "while", "until",
                 "!", "{"}
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.S)
_REDIRECT = re.compile(r"(\d*|&)(>>|>&|>\||&>|<<<|<<-|<<|<>|<&|>|<)(.*)", re.S)
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*?)\s*$")


class DocCommandError(ValueError):
    """A shell line of a document that cannot be understood (unbalanced quotes, torchrun without us3l)."""


# --------------------------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    """One fenced code block.

    Attributes:
        lang: first word of the info string, lower-cased (``""`` when none).
        text: the body (fence indentation removed), without the fences.
        line: 1-based line of the opening fence in the document.
        marker: ``"run"``, ``"skip"`` or ``None`` (the previous non-empty line).
    """

    lang: str
    text: str
    line: int
    marker: str | None = None

    @property
    def run(self) -> bool:
        return self.marker == "run"

    @property
    def skip(self) -> bool:
        return self.marker == "skip"

    @property
    def is_shell(self) -> bool:
        return self.lang in SHELL_LANGS

    @property
    def body_line(self) -> int:
        """1-based document line of the block's first body line."""
        return self.line + 1


def _marker(previous: str | None) -> str | None:
    text = (previous or "").strip()
    if text == RUN_MARKER:
        return "run"
    if text == SKIP_MARKER:
        return "skip"
    return None


def extract_blocks(markdown: str) -> list[Block]:
    """Fenced code blocks (````` ``` ````` or ``~~~``, any indentation) in document order.

    An unclosed fence runs to the end of the document, as in CommonMark.
    """
    lines = markdown.splitlines()
    blocks: list[Block] = []
    previous: str | None = None
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        lang = (m.group("info").split() or [""])[0].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            close = re.match(r"^\s*(`{3,}|~{3,})\s*$", lines[i])
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                break
            line = lines[i]
            body.append(line[min(indent, len(line) - len(line.lstrip())):])
            i += 1
        blocks.append(Block(lang=lang, text="\n".join(body), line=start + 1, marker=_marker(previous)))
        previous = lines[min(i, len(lines) - 1)]
        i += 1
    return blocks


# --------------------------------------------------------------------------------------------- shell lines


@dataclass(frozen=True)
class _Scan:
    segments: list[tuple[int, int]]  # [start, end) of each simple command, operators excluded
    comment: int | None  # index where a comment starts
    open: bool  # the text ends inside a quote or a $( ... )


def _scan(text: str) -> _Scan:
    """Quote-aware scan of one (logical) line."""
    segments: list[tuple[int, int]] = []
    start, i, n = 0, 0, len(text)
    quote: str | None = None
    depth = 0  # nesting of $( ... ) and backticks (operators inside do not split)
    comment = None
    while i < n:
        c = text[i]
        if c == "\\" and quote != "'":
            i += 2
            continue
        if quote:
            if c == quote:
                quote = None
            elif quote == '"' and c == "$" and text.startswith("$(", i):
                depth += 1
                i += 2
                continue
            elif quote == '"' and c == ")" and depth:
                depth -= 1
            i += 1
            continue
        if c in "'\"":
            quote = c
        elif c == "$" and text.startswith("$(", i):
            depth += 1
            i += 2
            continue
        elif c == ")" and depth:
            depth -= 1
        elif c == "`":
            quote = "`"
        elif depth:
            pass
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|("):
            comment = i
            break
        elif c in ";|&":
            prev, nxt = text[i - 1] if i else "", text[i + 1] if i + 1 < n else ""
            if c == "&" and (prev in "<>" or nxt == ">"):
                i += 1
                continue  # 2>&1, &>file: a redirection, not an operator
            width = 2 if (c in "|&" and nxt == c) or (c == "|" and nxt == "&") or (c == ";" and nxt == ";") else 1
            segments.append((start, i))
            start = i + width
            i += width
            continue
        i += 1
    end = comment if comment is not None else n
    segments.append((start, end))
    segments = [(a, b) for a, b in segments if text[a:b].strip()]
    return _Scan(segments=segments, comment=comment, open=bool(quote) or depth > 0)


def split_segments(line: str) -> list[str]:
    """The simple commands of ``line`` (operators and trailing comment removed, text stripped)."""
    scan = _scan(line)
    return [line[a:b].strip() for a, b in scan.segments]


def _units(text: str, console: bool) -> list[tuple[int, int, str]]:
    """``(first, end, joined text)`` per command line; ``lines[first:end]`` are the physical lines it used."""
    lines = text.split("\n")
    out: list[tuple[int, int, str]] = []
    heredoc: list[str] = []  # pending heredoc delimiters, in order
    i = 0
    while i < len(lines):
        raw = lines[i]
        if heredoc:
            if raw.strip() == heredoc[0]:
                heredoc.pop(0)
            i += 1
            continue
        if console:
            stripped = raw.lstrip()
            if not (stripped.startswith("$ ") or stripped == "$"):
                i += 1
                continue
            raw = stripped[2:]
        first = i
        buf = raw
        while i + 1 < len(lines):
            if buf.endswith("\\") and (len(buf) - len(buf.rstrip("\\"))) % 2 == 1:
                nxt = lines[i + 1]
                if console and nxt.lstrip().startswith("> "):
                    nxt = nxt.lstrip()[2:]
                buf = buf[:-1] + nxt
                i += 1
            elif _scan(buf).open:
                buf = buf + "\n" + lines[i + 1]
                i += 1
            else:
                break
        i += 1
        scan = _scan(buf)
        code = buf[: scan.comment] if scan.comment is not None else buf
        if code.strip():
            out.append((first, i, buf))
            heredoc += [m.group(2) for m in _HEREDOC.finditer(code)]
    return out


def logical_lines(text: str, console: bool = False) -> list[tuple[int, str]]:
    """``(0-based index of the first physical line, joined text)`` per command line of a shell block.

    Backslash-newline pairs are removed (as bash does), lines are joined while a quote or ``$(`` is
    open, heredoc bodies and comment-only lines are skipped; ``console`` keeps only ``$ `` lines
    (their ``> `` continuation prompts are removed).
    """
    return [(first, joined) for first, _, joined in _units(text, console)]


def _substitution_end(text: str, i: int) -> int:
    """Index just past the ``)`` closing the ``(`` at ``i`` (or the end of ``text``)."""
    depth, j = 1, i + 1
    quote = None
    while j < len(text):
        c = text[j]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return len(text)


def expand(segment: str) -> str:
    """``segment`` with ``$VAR``, ``${VAR}``, ``$1``, ``$(...)`` and backticks replaced (outside single quotes).

    ``$(which us3l)`` / ``$(command -v us3l)`` become ``us3l``; everything else becomes :data:`PLACEHOLDER`.
    """
    out: list[str] = []
    i, n = 0, len(segment)
    single = double = False
    while i < n:
        c = segment[i]
        if c == "\\" and not single and i + 1 < n:
            out.append(segment[i:i + 2])
            i += 2
            continue
        if c == "'" and not double:
            single = not single
        elif c == '"' and not single:
            double = not double
        elif not single and c == "$" and i + 1 < n:
            nxt = segment[i + 1]
            if nxt == "(":
                end = _substitution_end(segment, i + 1)
                inner = segment[i + 2:end - 1].strip()
                out.append("us3l" if re.fullmatch(r"(which|command -v)\s+us3l", inner) else PLACEHOLDER)
                i = end
                continue
            if nxt == "{":
                end = segment.find("}", i)
                out.append(PLACEHOLDER)
                i = n if end < 0 else end + 1
                continue
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!-]", segment[i + 1:])
            if m:
                out.append(PLACEHOLDER)
                i += 1 + m.end()
                continue
        elif c == "`" and not single:
            end = segment.find("`", i + 1)
            inner = segment[i + 1:end].strip() if end > 0 else ""
            out.append("us3l" if re.fullmatch(r"(which|command -v)\s+us3l", inner) else PLACEHOLDER)
            i = n if end < 0 else end + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def words(segment: str) -> list[str]:
    """Shell words of one simple command: expanded, ``shlex``-split, redirections dropped.

    Raises:
        DocCommandError: unbalanced quotes.
    """
    try:
        tokens = shlex.split(expand(segment), posix=True)
    except ValueError as exc:
        raise DocCommandError(f"cannot split {segment!r}: {exc}") from None
    out: list[str] = []
    skip = False
    for tok in tokens:
        if skip:
            skip = False
            continue
        m = _REDIRECT.fullmatch(tok)
        if m and not tok.startswith("-"):
            skip = m.group(3) == ""
            continue
        out.append(tok)
    return out


def _strip_prefix(tokens: list[str]) -> list[str]:
    i = 0
    while i < len(tokens) and (tokens[i] in _PREFIX_WORDS or _ASSIGNMENT.fullmatch(tokens[i])):
        i += 1
    return tokens[i:]


def _basename(word: str) -> str:
    return word.rstrip("/").rsplit("/", 1)[-1]


def _is_python(word: str) -> bool:
    return re.fullmatch(r"python(3(\.\d+)?)?", _basename(word)) is not None


def _module_args(tokens: list[str], module: str) -> list[str] | None:
    """The arguments after ``-m MODULE`` (python's own options before it allowed)."""
    for i, tok in enumerate(tokens):
        if tok == "-m" and i + 1 < len(tokens):
            return tokens[i + 2:] if tokens[i + 1] == module else None
        if not tok.startswith("-"):
            return None
    return None


@dataclass(frozen=True)
class Invocation:
    """A ``us3l`` invocation found in a shell line.

    Attributes:
        args: the arguments after the program (``["bench", "CKPT", "--budget-ms", "5"]``).
        launcher: ``"us3l"``, ``"python"`` or ``"torchrun"``.
        launcher_args: torchrun's own arguments up to and including the program (``[]`` otherwise).
    """

    args: list[str]
    launcher: str
    launcher_args: tuple[str, ...] = ()


def us3l_argv(tokens: list[str]) -> Invocation | None:
    """The ``us3l`` invocation in ``tokens`` (the words of one simple command), or ``None``.

    Raises:
        DocCommandError: a ``torchrun`` line that launches neither ``-m us3l.cli.main`` nor
            ``$(which us3l)``.
    """
    tokens = _strip_prefix(tokens)
    if not tokens:
        return None
    prog = tokens[0]
    if _basename(prog) == "us3l":
        return Invocation(list(tokens[1:]), "us3l")
    rest = None
    if _is_python(prog):
        args = _module_args(tokens[1:], US3L_MODULE)
        if args is not None:
            return Invocation(args, "python")
        rest = _module_args(tokens[1:], TORCHRUN_MODULE)
        if rest is None:
            return None
    elif _basename(prog) == "torchrun":
        rest = tokens[1:]
    if rest is None:
        return None
    for i, tok in enumerate(rest):
        if tok in ("-m", "--module") and i + 1 < len(rest) and rest[i + 1] == US3L_MODULE:
            return Invocation(rest[i + 2:], "torchrun", tuple(rest[:i + 2]))
        if _basename(tok) == "us3l" and not tok.startswith("-"):
            return Invocation(rest[i + 1:], "torchrun", tuple(rest[:i + 1]))
    raise DocCommandError("torchrun line launches neither '-m us3l.cli.main' nor '$(which us3l)'")


@dataclass(frozen=True)
class Command:
    """One ``us3l`` invocation of a document: where, what was written, and its parsed arguments."""

    line: int  # 1-based document line
    text: str
    invocation: Invocation


def commands(block: Block) -> Iterator[Command | tuple[int, str, str]]:
    """``us3l`` invocations of a shell block, or ``(line, text, problem)`` for lines that cannot be read."""
    for offset, line in logical_lines(block.text, console=block.lang == "console"):
        for seg in split_segments(line):
            where = block.body_line + offset
            try:
                inv = us3l_argv(words(seg))
            except DocCommandError as exc:
                if re.search(r"(^|[\s/])(us3l|torchrun)\b|us3l\.cli\.main", seg):
                    yield where, seg, str(exc)
                continue
            if inv is not None:
                yield Command(where, seg, inv)


# --------------------------------------------------------------------------------------------- rewriting


def subcommand(args: list[str]) -> str | None:
    """The ``us3l`` sub-command named in ``args`` (root flags such as ``-v`` skipped)."""
    return next((a for a in args if not a.startswith("-")), None)


_PROGRAM = re.compile(r"^(?P<prefix>\s*(?:(?:[A-Za-z_][A-Za-z0-9_]*=\S*|time|env|nohup|exec|command|do|then|else|!|\{)"
                      r"\s+)*)(?P<prog>\S+)")


def _rewrite_segment(seg: str, tiny: dict[str, tuple[str, ...]]) -> str:
    try:
        inv = us3l_argv(words(seg))
    except DocCommandError:
        return seg
    if inv is None:
        return seg
    body = seg.rstrip()
    trailing = seg[len(body):]
    m = _PROGRAM.match(body)
    if m and "/" in m.group("prog") and (_basename(m.group("prog")) == "us3l" or _is_python(m.group("prog"))):
        # .venv/bin/us3l or .venv/bin/python: run-blocks execute elsewhere, with the venv first on PATH
        body = m.group("prefix") + _basename(m.group("prog")) + body[m.end():]
    flags = tiny.get(subcommand(inv.args) or "", ())
    if flags:
        body = body + " " + " ".join(shlex.quote(f) for f in flags)
    return body + trailing


def rewrite_line(line: str, tiny: dict[str, tuple[str, ...]] | None = None) -> str:
    """``line`` with every ``us3l`` invocation given the tiny settings of its sub-command."""
    tiny = TINY if tiny is None else tiny
    scan = _scan(line)
    out, pos = [], 0
    for a, b in scan.segments:
        out.append(line[pos:a])
        out.append(_rewrite_segment(line[a:b], tiny))
        pos = b
    out.append(line[pos:])
    return "".join(out)


def rewrite_script(text: str, tiny: dict[str, tuple[str, ...]] | None = None, console: bool = False) -> str:
    """A shell block ready to run: continuations joined, ``us3l`` invocations given tiny settings.

    Heredoc bodies, blank lines and comments are kept verbatim; ``console`` blocks keep only their
    ``$ `` commands (prompts removed).
    """
    lines = text.split("\n")
    units = {first: (end, joined) for first, end, joined in _units(text, console)}
    out: list[str] = []
    i = 0
    while i < len(lines):
        if i in units:
            end, joined = units[i]
            out.append(rewrite_line(joined, tiny))
            i = end
            continue
        if not console:
            out.append(lines[i])
        i += 1
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------- click parsing


def _click():
    """The click package typer uses (vendored as ``typer._click`` by recent typer releases)."""
    try:
        from typer import _click as click  # type: ignore[attr-defined]
    except ImportError:  # typer releases that depend on click
        import click
    return click


@contextlib.contextmanager
def _paths_need_not_exist(command) -> Iterator[None]:
    """Turn off ``exists=True`` checks of ``command``'s path parameters for the duration (restored after)."""
    changed = []
    for param in getattr(command, "params", []):
        holders = [getattr(param, "type", None),
                   getattr(getattr(param, "type_descriptor", None), "parameter_info", None)]
        for holder in holders:
            if holder is not None and getattr(holder, "exists", False) is True:
                holder.exists = False
                changed.append(holder)
    try:
        yield
    finally:
        for holder in changed:
            holder.exists = True


def _early_exits() -> tuple[type[BaseException], ...]:
    import typer

    click = _click()
    return tuple(c for c in (getattr(click.exceptions, "Exit", None), getattr(typer, "Exit", None)) if c)


_ROOT = None


def root_command():
    """The click command behind ``us3l`` (built once)."""
    global _ROOT
    if _ROOT is None:
        import typer.main

        from us3l.cli.main import app

        _ROOT = typer.main.get_command(app)
    return _ROOT


def parse_argv(args: list[str]) -> tuple[str | None, dict]:
    """Parse ``us3l`` arguments with the real click command without invoking it.

    Path arguments need not exist (documents name files that earlier steps create).

    Returns:
        ``(sub-command name or None, its parsed parameters)``; ``(None, {})`` when ``--help`` /
        ``--version`` / no arguments end parsing early.

    Raises:
        click.ClickException: unknown option, bad choice or type, missing argument, unknown command.
    """
    click = _click()
    root = root_command()
    try:
        ctx = root.make_context("us3l", list(args))
        rest = [*(getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])), *ctx.args]
        if not rest:
            return None, {}
        name, sub, rest = root.resolve_command(ctx, rest)
        while hasattr(sub, "resolve_command"):  # a sub-app ("us3l fleet plan ..."): down to its command
            group_ctx = sub.make_context(name, list(rest), parent=ctx)
            rest = [*(getattr(group_ctx, "_protected_args", None) or getattr(group_ctx, "protected_args", [])),
                    *group_ctx.args]
            if not rest:
                return None, {}
            sub_name, sub, rest = sub.resolve_command(group_ctx, rest)
            name, ctx = f"{name} {sub_name}", group_ctx
        with _paths_need_not_exist(sub):
            sub_ctx = sub.make_context(name, rest, parent=ctx)
        return name, dict(sub_ctx.params)
    except click.exceptions.NoArgsIsHelpError:
        return None, {}
    except _early_exits():  # --help, --version
        return None, {}


def check_argv(args: list[str]) -> str | None:
    """``None`` when ``us3l ARGS`` parses, else click's one-line message."""
    click = _click()
    try:
        parse_argv(args)
    except click.exceptions.ClickException as exc:
        return " ".join(exc.format_message().split())
    return None


def check_torchrun(launcher_args: tuple[str, ...]) -> str | None:
    """``None`` when torchrun's own arguments parse with torchrun's real argument parser, else its message."""
    import argparse

    from torch.distributed.run import get_args_parser

    parser = get_args_parser()

    def fail(message: str) -> None:
        raise argparse.ArgumentError(None, message)

    parser.error = fail  # type: ignore[method-assign]
    try:
        parser.parse_args(list(launcher_args))
    except argparse.ArgumentError as exc:
        return str(exc)
    return None

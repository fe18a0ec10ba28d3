"""The docs name only things that exist: README.md and docs/*.md.

1. Every relative link, [text](path) or [text](path#anchor), points to an existing file and, where an
   anchor is given, to a heading of that file (GitHub's slugs: lowercase, spaces to '-', punctuation
   other than '-' and '_' removed, repeated headings numbered -1, -2, ...).
2. Every command line of a fenced shell block that runs `owdfa`, `dvc` or `python` names something
   real: an `owdfa` subcommand (from the CLI's own argparse parser) and, for `owdfa grid`, grids of
   params/grids.yaml; a `dvc` subcommand and, for `dvc repro` / `dvc exp run` / `dvc commit`, stages
   of dvc.yaml (`name@key` is a foreach/matrix stage `name`); a `python` script that exists or a
   `python -m` module that can be imported.

Fast and in-process: no subprocess, nothing is run. The checkers are tested on made-up text as well,
so that a broken checker cannot pass silently.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import yaml

from owdfa.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# The dvc commands the docs may use, and the subcommands of those that have them.
DVC_COMMANDS = {
    "add", "checkout", "commit", "config", "dag", "diff", "exp", "gc", "init", "metrics", "params",
    "plots", "pull", "push", "queue", "remote", "repro", "stage", "status",
}  # fmt: skip
DVC_SUBCOMMANDS = {
    "exp": {"apply", "branch", "clean", "diff", "list", "pull", "push", "remove", "rename", "run", "save", "show"},
    "queue": {"kill", "logs", "remove", "start", "status", "stop"},
    "metrics": {"diff", "show"},
    "plots": {"diff", "modify", "show", "templates"},
    "params": {"diff"},
    "stage": {"add", "list"},
    "remote": {"add", "default", "list", "modify", "remove", "rename"},
}
# Commands whose positional arguments are stage names, and their options that take a value.
DVC_STAGE_TARGETS = {("repro",), ("exp", "run"), ("commit",)}
DVC_VALUE_OPTIONS = {"-S", "--set-param", "-n", "--name", "-m", "--message", "-j", "--jobs", "-r", "--rev"}
OWDFA_GRID_VALUE_OPTIONS = {"-j", "--jobs", "--grids"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console", "zsh"}
RUNNERS = {"owdfa", "dvc", "python", "python3"}
SEPARATORS = {";", "&", "&&", "|", "||"}


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


# ---- Markdown ------------------------------------------------------------------------------------

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[tuple[int, str]]]]]:
    """The lines outside fenced blocks (numbered from 1), and each fenced block: (info, its lines)."""
    prose: list[tuple[int, str]] = []
    blocks: list[tuple[str, list[tuple[int, str]]]] = []
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence = match.group(1)
                blocks.append((match.group(2).lower(), []))
            else:
                prose.append((number, line))
        elif match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) and not match.group(2):
            fence = None
        else:
            blocks[-1][1].append((number, line))
    return prose, blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).strip().lower()  # inline HTML
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line, target) of every Markdown link outside code blocks and code spans."""
    prose, _ = split_fences(text)
    for number, line in prose:
        for match in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def link_problems(path: Path) -> list[str]:
    problems = []
    for number, target in links(path.read_text(encoding="utf-8")):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # http:, https:, mailto: ...: not ours to check
        file_part, _, anchor = target.partition("#")
        where = f"{_name(path)}:{number}"
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{where}: link to {target!r}: {file_part} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: link to {target!r}: no heading with anchor #{anchor} in {linked.name}")
    return problems


# ---- Commands ------------------------------------------------------------------------------------


def strip_comment(line: str) -> str:
    """The line without a shell comment: a '#' at the start of a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def command_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, command) of each logical line of the fenced shell blocks."""
    _, blocks = split_fences(text)
    for info, lines in blocks:
        if info not in SHELL_BLOCKS:
            continue
        pending: list[str] = []
        start = 0
        for number, line in lines:
            if not pending:
                start = number
            line = strip_comment(line).rstrip()
            if line.endswith("\\"):
                pending.append(line[:-1])
                continue
            pending.append(line)
            yield start, " ".join(pending)
            pending = []
        if pending:
            yield start, " ".join(pending)


def segments(command: str) -> list[list[str]]:
    """The simple commands of a line (split at ; && || |), each without its `$ ` prompt,
    `<placeholders>` and leading VAR=value assignments."""
    command = re.sub(r"^\s*\$\s+", "", command)
    command = re.sub(r"<[^<>]*>", " ", command)  # <commit sha>, <the -S options of ...>
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    parts: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    simple = []
    for words in parts:
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]
        while words and words[0] in {"do", "then", "else", "time", "exec"}:
            words = words[1:]
        if words:
            simple.append(words)
    return simple


@cache
def owdfa_subcommands() -> frozenset[str]:
    parser = build_parser()
    (subparsers,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(subparsers.choices)


@cache
def dvc_stages() -> frozenset[str]:
    return frozenset(yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


@cache
def grid_names() -> frozenset[str]:
    return frozenset(yaml.safe_load((ROOT / "params" / "grids.yaml").read_text(encoding="utf-8")))


def positionals(args: list[str], value_options: set[str]) -> list[str]:
    found, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in value_options:
            skip = True
        elif not arg.startswith("-"):
            found.append(arg)
    return found


def command_problems(words: list[str]) -> list[str]:
    """Why this simple command names something that does not exist (nothing when it is fine)."""
    program, args = words[0], words[1:]
    if program == "owdfa":
        names = positionals(args, set())
        if not names:
            return []
        if names[0] not in owdfa_subcommands():
            return [f"'owdfa {names[0]}' is not an owdfa subcommand ({', '.join(sorted(owdfa_subcommands()))})"]
        if names[0] == "grid":
            grids = positionals(args[args.index("grid") + 1 :], OWDFA_GRID_VALUE_OPTIONS)
            unknown = [name for name in grids if name not in grid_names()]
            return [f"'owdfa grid {name}': no grid {name!r} in params/grids.yaml" for name in unknown]
        return []
    if program == "dvc":
        if not args or args[0] not in DVC_COMMANDS:
            return [f"'dvc {args[0] if args else ''}' is not a dvc command this project uses"]
        command, rest = (args[0],), args[1:]
        if args[0] in DVC_SUBCOMMANDS:
            if not rest or rest[0] not in DVC_SUBCOMMANDS[args[0]]:
                return [f"'dvc {args[0]} {rest[0] if rest else ''}' is not a dvc command"]
            command, rest = (args[0], rest[0]), rest[1:]
        if command not in DVC_STAGE_TARGETS:
            return []
        problems, shown = [], f"dvc {' '.join(command)}"
        for target in positionals(rest, DVC_VALUE_OPTIONS):
            _, colon, stage = target.rpartition(":")  # dvc.yaml:stage, or a stage, or a file
            if not colon and ("/" in target or target.endswith((".yaml", ".dvc"))):
                if not (ROOT / target).exists():
                    problems.append(f"'{shown} {target}': {target} does not exist")
                continue
            name = stage.partition("@")[0]  # name@key: a foreach/matrix stage
            if name not in dvc_stages():
                problems.append(f"'{shown} {target}': no stage {name!r} in dvc.yaml")
        return problems
    if program in {"python", "python3"}:
        if args[:1] == ["-m"]:
            if len(args) < 2 or importlib.util.find_spec(args[1]) is None:
                return [f"'python -m {args[1] if len(args) > 1 else ''}': no such module"]
            return []
        scripts = [arg for arg in args if not arg.startswith("-")]
        if args[:1] == ["-c"] or not scripts:
            return []
        if not (ROOT / scripts[0]).is_file():
            return [f"'python {scripts[0]}': {scripts[0]} does not exist"]
    return []


def text_command_problems(text: str, name: str) -> list[str]:
    problems = []
    for number, line in command_lines(text):
        for words in segments(line):
            if words[0] in RUNNERS:
                problems += [f"{name}:{number}: {problem}" for problem in command_problems(words)]
    return problems


# ---- The tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_links_point_to_existing_files_and_headings(doc: Path) -> None:
    problems = link_problems(doc)
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_name)
def test_commands_name_existing_things(doc: Path) -> None:
    problems = text_command_problems(doc.read_text(encoding="utf-8"), _name(doc))
    assert not problems, "commands that name something that does not exist:\n" + "\n".join(problems)


def test_readme_links_every_docs_file() -> None:
    readme = ROOT / "README.md"
    linked = {(readme.parent / target.partition("#")[0]).resolve() for _, target in links(readme.read_text())}
    missing = [_name(doc) for doc in DOCS[1:] if doc.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_readme_has_the_test_commands() -> None:
    """.ci/run runs the README's test command; the fast tier is the edit-test loop."""
    lines = {strip_comment(line).strip() for _, line in command_lines((ROOT / "README.md").read_text())}
    assert "python -m pytest -q" in lines
    assert 'python -m pytest -m "not slow"' in lines


CITATION = re.compile(r"""docs/([\w.-]+\.md)[\s,:(]+(["'])(.+?)\2""")


def heading_texts(path: Path) -> list[str]:
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    return [match.group(2) for _, line in prose if (match := HEADING.match(line))]


def test_code_citations_of_docs_name_existing_headings() -> None:
    """A comment citing (docs/numerics.md, "The checks you can run") names a file and heading that exist
    (the cited title may be the heading's beginning)."""
    sources = [ROOT / "params.yaml", ROOT / "dvc.yaml", *sorted((ROOT / "params").glob("*.yaml"))]
    for folder in ("src", "stages", "bench", "tests"):
        sources += sorted((ROOT / folder).rglob("*.py"))
    problems = []
    for source in sources:
        if source.name == Path(__file__).name:
            continue
        for match in CITATION.finditer(source.read_text(encoding="utf-8")):
            doc, title = ROOT / "docs" / match.group(1), match.group(3)
            if not doc.is_file():
                problems.append(f"{_name(source)}: cites docs/{match.group(1)}, which does not exist")
            elif not any(slug(heading).startswith(slug(title)) for heading in heading_texts(doc)):
                problems.append(f"{_name(source)}: cites docs/{match.group(1)}, {title!r}: no such heading")
    assert not problems, "\n".join(problems)


# ---- The checkers themselves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "owdfa attribute x.jpg --model data/runs/p1-cal-0",
        "$ owdfa grid 3seeds ablation-p1 -j 2   # a comment with an apostrophe: CAL's",
        "dvc repro",
        "dvc repro --dry -f -s train@p1-cal-2025",
        "dvc exp run -n x -S data.source=hub fetch",
        "dvc exp run -n owdfa40-cal-4gpu <the -S options of the OWDFA-40 line> -S train.nproc=4",
        "dvc exp show --only-changed --keep 'all_acc|novel_acc'",
        "dvc queue status && dvc exp show --only-changed",
        "CI=true python -m pytest -q",
        "pip install x && PYTHONPATH=/tmp/site:src python bench/gpu_check.py --out $OUT/bench-gpu.json",
        "python bench/stage_times.py -- dvc repro",
    ],
)
def test_checker_accepts_real_commands(line: str) -> None:
    assert text_command_problems(f"```bash\n{line}\n```\n", "t") == []


@pytest.mark.parametrize(
    "line",
    [
        "owdfa attribute-all x.jpg",
        "owdfa grid no-such-grid",
        "dvc repro no_such_stage",
        "dvc repro no_such_stage@p1-cal-0",
        "$ dvc exp run -S train.epochs=2 \\\n    no_such_stage   # a comment",
        "dvc frobnicate",
        "dvc exp frobnicate",
        "python bench/no_such_script.py --check",
        "CI=true python no_such_script.py",
        "python -m no_such_module_for_owdfa_docs",
        "pip install -e . && dvc repro no_such_stage",
    ],
)
def test_checker_rejects_made_up_commands(line: str) -> None:
    assert text_command_problems(f"```bash\n{line}\n```\n", "t")


def test_checker_ignores_other_blocks_and_prose() -> None:
    text = "dvc repro no_such_stage\n\n```yaml\npython: no_such_script.py\n```\n\n```\nfetch ─ index\n```\n"
    assert text_command_problems(text, "t") == []


def test_slugs_follow_github() -> None:
    assert slug("Where does CAL's lead come from? A regime study (p1)") == (
        "where-does-cals-lead-come-from-a-regime-study-p1"
    )
    assert slug("Attributing new images: `owdfa`") == "attributing-new-images-owdfa"
    assert slug("Paper preset (OWDFA-40)") == "paper-preset-owdfa-40"
    assert slug("The `cal_dpp` variant") == "the-cal_dpp-variant"


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\n```bash\n# not a heading\n```\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#title) [ok](docs/a.md#same-1) [ok](#top) [web](https://x.invalid/y)\n"
        "`[code](nowhere.md)`\n\n# Top\n\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [fenced heading](docs/a.md#not-a-heading) [here](#nope)\n"
    )
    problems = link_problems(readme)
    assert len(problems) == 4, problems
    assert all(":6:" in problem for problem in problems)

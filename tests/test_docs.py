"""The documentation and the CLI agree: every command and option is documented, every documented option exists.

Documentation means README.md and the Markdown files under docs/. A command
counts as documented when ``awm <command path>`` appears there; an option when
its long name (or, without one, its short name) appears there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click

from awmtrace.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Options the README names that belong to other tools, not to awm: pip, ruff, the benchmark scripts, `ray start`.
OTHER_TOOLS = {"--no-deps", "--index-url", "--extra-index-url", "--check", "--shape", "--impl", "--head", "--address"}
_OPTION = re.compile(r"(?<![\w./-])(--[a-z][a-z0-9-]*)")


def _docs_text() -> str:
    files = [README, *sorted((ROOT / "docs").glob("**/*.md"))]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def _commands(group: click.Group = main, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        path = (*prefix, name)
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def _option_names(command: click.Command) -> list[str]:
    """The name each visible option is documented by: its first long name, else its first short name."""
    names = []
    for param in command.params:
        if not isinstance(param, click.Option) or param.hidden:
            continue
        spelled = [*param.opts, *param.secondary_opts]
        long = [o for o in spelled if o.startswith("--")]
        names.append((long or spelled)[0])
    return names


def test_every_command_and_option_is_documented() -> None:
    text = _docs_text()
    missing = []
    for path, command in _commands():
        spelled = "awm " + " ".join(path)
        if spelled not in text:
            missing.append(f"command `{spelled}` is not mentioned")
        for option in _option_names(command):
            if option in ("--help", "-h") or re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                continue
            missing.append(f"`{spelled}` option {option} is not mentioned")
    for option in _option_names(main):
        if option not in ("--help", "-h", "--version") and option not in text:
            missing.append(f"`awm` option {option} is not mentioned")
    assert not missing, "document these in README.md or docs/*.md:\n  " + "\n  ".join(missing)


def test_every_option_the_readme_names_exists() -> None:
    known = set()
    for command in [main, *(c for _, c in _commands())]:
        for param in command.params:
            if isinstance(param, click.Option):
                known.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    known.update({"--help", "--version"})
    named = set(_OPTION.findall(README.read_text(encoding="utf-8"))) - OTHER_TOOLS
    unknown = sorted(named - known)
    assert not unknown, f"README.md names option(s) no awm command has (check `awm COMMAND --help`): {', '.join(unknown)}"


def test_the_checks_see_what_they_check() -> None:
    # Guards against a vacuous pass: the walk finds the commands and options, and the regex finds README options.
    paths = {" ".join(p) for p, _ in _commands()}
    assert {"compare", "inspect", "demo", "fetch", "suite run", "evaluate", "calibrate"} <= paths
    assert "--json" in _option_names(dict(_commands())[("compare",)])
    assert "--min-shared-tokens" in _OPTION.findall(README.read_text(encoding="utf-8"))

#!/usr/bin/env python3
"""Writes the option reference of every docs/commands/<command>.md from the command line itself.

Why generated: options change (new ones, new help texts); a page copied by hand would drift
from `backdate COMMAND --help`. Each page keeps its hand-written text (what the command is
for, examples, exit codes); only the block between the GENERATED markers is rewritten. A
command without a page gets one, started from its own help text. tests/test_docs.py fails
when a page is out of date.

    .venv/bin/python scripts/gen_docs.py          # rewrite the blocks
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 when a page is out of date
"""

from __future__ import annotations

import enum
import re
import sys
import typing
from pathlib import Path, PurePath
from typing import Any

import typer.main

# typer.main.get_command() gives click's objects (Typer may vendor click); only their documented
# attributes are used here, never an import of click itself.

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ROOT / "docs" / "commands"
BEGIN = "<!-- BEGIN GENERATED from `backdate {name} --help` by scripts/gen_docs.py -->"
END = "<!-- END GENERATED -->"


def cli_group() -> Any:
    from backdate.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


def command_names() -> list[str]:
    group = cli_group()
    return [name for name in group.commands if not group.commands[name].hidden]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _is_argument(param: Any) -> bool:
    return "Argument" in type(param).__name__


def _is_flag(param: Any) -> bool:
    return not _is_argument(param) and bool(getattr(param, "is_flag", False))


def _annotation_type(annotation: Any) -> str:
    """TEXT, PATH, INTEGER, FLOAT or the choices of an Enum, from the Python annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and typing.get_origin(annotation) is not None:
        return _annotation_type(args[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "PATH"
    return {int: "INTEGER", float: "FLOAT", bool: "BOOLEAN"}.get(annotation, "TEXT")


def _takes(param: Any) -> str:
    if _is_flag(param):
        return ""
    click_type = getattr(param, "type", None)
    if click_type is not None:
        if hasattr(click_type, "choices"):
            return "|".join(str(getattr(c, "value", c)) for c in click_type.choices)
        name = getattr(click_type, "name", "text")
        return {"text": "TEXT", "path": "PATH", "integer": "INTEGER", "float": "FLOAT",
                "boolean": "BOOLEAN"}.get(name, name.upper())
    descriptor = getattr(param, "type_descriptor", None)
    return _annotation_type(getattr(descriptor, "annotation", str))


def _default(param: Any) -> str:
    if param.required:
        return "required"
    default = param.default
    if _is_flag(param):
        if param.secondary_opts:
            return param.opts[0] if default else param.secondary_opts[0]
        return ""
    if default is None or default == () or default == []:
        return ""
    return f"`{getattr(default, 'value', default)}`"


def _names(param: Any) -> str:
    if _is_argument(param):
        metavar = (param.metavar or param.name or "").upper()
        return f"`{metavar}...`" if param.nargs == -1 else f"`{metavar}`"
    names = ", ".join(f"`{o}`" for o in param.opts)
    if param.secondary_opts:
        names += " / " + ", ".join(f"`{o}`" for o in param.secondary_opts)
    return names


def option_block(name: str) -> str:
    """The usage line and a table of every argument and option of `backdate NAME`."""
    group = cli_group()
    command = group.commands[name]
    params = [p for p in command.params if p.name != "help"]
    arguments = " ".join(_names(p).strip("`") for p in params if _is_argument(p))
    usage = f"backdate {name} [OPTIONS] {arguments}".strip()
    rows = ["| argument / option | takes | default | what it does |", "|---|---|---|---|"]
    for param in params:
        help_text = getattr(param, "help", None) or ""
        rows.append(f"| {_names(param)} | {_cell(_takes(param))} | {_default(param)} | "
                    f"{_cell(help_text)} |")
    rows.append("| `--help` | | | Show the help and exit. |")
    return "\n".join([BEGIN.format(name=name), "", f"Usage: `{usage}`", "", *rows, "", END])


def new_page(name: str) -> str:
    """A first page for a command that has none, from its own help text."""
    command = cli_group().commands[name]
    text = (command.help or "").strip()
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    examples = [p.split(":", 1)[1].strip() for p in text.splitlines()
                if p.strip().startswith("Example:")]
    purpose = "\n\n".join(p for p in paragraphs if not p.startswith("Example"))
    example_block = "\n".join(examples) or f"backdate {name} --help"
    return (f"# backdate {name}\n\n{purpose}\n\n## Options\n\n{option_block(name)}\n\n"
            f"## Examples\n\n```sh skip=\"written from the help text: make it run against the "
            f"docs' local data\"\n{example_block}\n```\n\n## Exit codes\n\n"
            "0 done, 1 invalid input or refused (nothing written), 2 usage error, 3 target "
            "unreachable or failed.\n")


_BLOCK = re.compile(r"<!-- BEGIN GENERATED from `backdate (?P<name>[\w-]+) --help`.*?"
                    r"<!-- END GENERATED -->", re.DOTALL)


def updated(name: str, text: str) -> str:
    block = option_block(name)
    if not _BLOCK.search(text):
        raise SystemExit(f"docs/commands/{name}.md has no GENERATED block")
    return _BLOCK.sub(lambda _m: block, text, count=1)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in command_names():
        path = COMMANDS / f"{name}.md"
        current = path.read_text(encoding="utf-8") if path.exists() else None
        wanted = new_page(name) if current is None else updated(name, current)
        if wanted != current:
            stale.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(wanted, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if check else 'written'}: {path.relative_to(ROOT)}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

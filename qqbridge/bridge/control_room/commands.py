"""Commands typed in a control room: a registry of handlers with strict parsing.

Each command is an `argparse` parser that raises `CommandError` instead of exiting,
so a malformed command answers with its usage and changes nothing (heisenbridge's
way). Handlers are registered with their help text and whether they need admin
rights or a logged-in QQ account (mautrix's way), and `help` is built from them.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

from qqbridge.bridge.notices import BULLET
from qqbridge.qq import model


class CommandError(Exception):
    """A command the user typed cannot run; the message tells them why and how."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise CommandError(f"{message}\nusage: `{usage(self)}`")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise CommandError(message or f"usage: `{usage(self)}`")


def qq_number(text: str) -> int:  # its arguments are named `QQ number` (metavar) in help and errors
    """A legal QQ number (docs/protocol.md §3, `model.legal_uin`)."""
    if not text.isdigit() or not model.legal_uin(int(text)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a QQ number ({model.MIN_UIN} to {model.MAX_UIN})")
    return int(text)


Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    parser: _Parser
    handler: Handler
    admin: bool = False
    needs_login: bool = False
    control_room_only: bool = False  # `login`: what follows it must never be typed in a portal


class CommandTable:
    def __init__(self) -> None:
        self.commands: dict[str, Command] = {}

    def add(
        self,
        name: str,
        summary: str,
        handler: Handler,
        *,
        arguments: Callable[[argparse.ArgumentParser], object] = lambda parser: None,
        admin: bool = False,
        needs_login: bool = False,
        control_room_only: bool = False,
    ) -> None:
        parser = _Parser(prog=name, description=summary, add_help=False)
        arguments(parser)
        self.commands[name] = Command(name, summary, parser, handler, admin, needs_login, control_room_only)

    def parse(self, text: str) -> tuple[Command, argparse.Namespace]:
        """Find the command and parse its arguments; CommandError on anything wrong."""
        # Plain white-space words: a reason such as "don't know you" must survive as typed.
        words = text.split()
        if not words:
            raise CommandError("empty command; type `help` for the list")
        command = self.commands.get(words[0].lower())
        if command is None:
            # What was typed is never repeated: it may be a password sent too late or
            # in the wrong place. A command name it resembles says nothing of it.
            close = difflib.get_close_matches(words[0].lower(), self.commands, n=1, cutoff=0.75)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise CommandError(f"That is not a command; {hint}type `help` for the list.")
        return command, command.parser.parse_args(words[1:])

    def help_text(self, *, admin: bool) -> str:
        """One list item per command: its usage in words, and what it does."""
        lines = []
        for command in self.commands.values():
            if command.admin and not admin:
                continue
            lines.append(f"{BULLET}`{usage(command.parser)}` — {command.summary}" + (" (admin)" if command.admin else ""))
        return "\n".join(lines)


def usage(parser: argparse.ArgumentParser) -> str:
    """`status [online|busy|invisible|offline]`, `reject <QQ number> [reason]`: the
    command as a person reads it, not argparse's `{a,b}` and `...`."""
    words = [parser.prog]
    for action in parser._actions:  # argparse keeps its arguments here, in order
        name = "|".join(map(str, action.choices)) if action.choices else str(action.metavar or action.dest)
        optional = action.nargs in ("?", "*", argparse.REMAINDER)
        words.append(f"[{name}]" if optional else name if action.choices else f"<{name}>")
    return " ".join(words)


def rest_of_line(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    """An optional free-text argument that takes the remaining words (a reason)."""
    parser.add_argument(name, nargs=argparse.REMAINDER, help=help)


def joined(words: list[str] | None) -> str:
    return " ".join(words or [])

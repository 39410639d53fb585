"""Commands whose modules load only when they run or show their own help.

``gpuperf dsc``/``asl`` (and ``simulate dsc``/``asl``) derive their flags from the options
objects (:class:`gpuperf.dsc.options.DSCOptions`, :class:`gpuperf.asl.options.ASLOptions`),
whose method registries import NumPy and the fit engine: 0.15 s that ``gpuperf --help`` or
``gpuperf run`` do not need. A :class:`LazyGroup` lists such a command from a table (name,
module, function, one-line help) and imports the module when the command is resolved: to run
it, or for ``gpuperf dsc --help``. The click pattern "lazily loading subcommands"
(click.palletsprojects.com, "Complex Applications").

A broken command module still fails loudly: resolving the command imports it without an
``ImportError`` guard, and ``tests/test_architecture.py`` resolves every command.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup


class LazyCommand(NamedTuple):
    """A command of a :class:`LazyGroup`: ``module.function`` (a Typer command function) and
    its one-line help (the function's docstring's first line, for the group's help)."""

    module: str
    function: str
    short_help: str


def load_command(name: str, entry: LazyCommand) -> Any:
    """The click command of ``entry`` (its module imported), named ``name``."""
    fn = getattr(importlib.import_module(entry.module), entry.function)
    one = typer.Typer(add_completion=False, rich_markup_mode=None)
    one.command(name)(fn)
    return typer.main.get_command(one)


class LazyGroup(TyperGroup):
    """A Typer group whose :attr:`lazy` commands load on first use.

    Subclasses set :attr:`lazy` (name -> :class:`LazyCommand`) and :attr:`order` (every
    command name of the group, lazy or not, in help order).
    """

    lazy: dict[str, LazyCommand] = {}
    order: tuple[str, ...] = ()

    def list_commands(self, ctx: Any) -> list[str]:
        names = [*self.commands, *(n for n in self.lazy if n not in self.commands)]
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(names, key=lambda n: rank.get(n, len(rank)))

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            self.commands[cmd_name] = load_command(cmd_name, self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The group's command list without loading the lazy commands (their table help,
        shortened as click shortens a command's help)."""
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.commands.get(name)
            if cmd is None:
                cmd = TyperCommand(name=name, help=self.lazy[name].short_help)
            if not cmd.hidden:
                rows.append((name, cmd))
        if rows:
            limit = formatter.width - 6 - max(len(n) for n, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(n, c.get_short_help_str(limit)) for n, c in rows])

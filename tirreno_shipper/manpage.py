"""The manual page (roff, man(7)), made from the command-line parser itself, so it
says what ``--help`` says: every command, option, exit code, environment variable
and example. ``tirreno-shipper man > /usr/local/share/man/man1/tirreno-shipper.1``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Protocol

from tirreno_shipper._version import __version__


class CommandDoc(Protocol):
    """What cli.DOCS holds per command (read-only, as its frozen records are)."""

    @property
    def exits(self) -> tuple[tuple[int, str], ...]: ...
    @property
    def env(self) -> tuple[str, ...]: ...
    @property
    def examples(self) -> tuple[str, ...]: ...


def _roff(text: str) -> str:
    """Text safe in roff: backslashes and hyphens escaped, no line starting a request."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in out.split("\n"))


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subcommands there, and only there
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(sp: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for action in sp._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if action.option_strings:
            flags = ", ".join(f"\\fB{_roff(o)}\\fR" for o in action.option_strings)
            if action.nargs != 0:
                meta = action.metavar or (
                    "{" + ",".join(action.choices) + "}" if action.choices else action.dest.upper()
                )
                flags += f" \\fI{_roff(str(meta))}\\fR"
        else:
            meta = action.metavar or (
                "{" + ",".join(action.choices) + "}" if action.choices else action.dest
            )
            flags = f"\\fI{_roff(str(meta))}\\fR"
        out += [".TP", flags, _roff(action.help or "")]
    return out


def render(parser: argparse.ArgumentParser, docs: Mapping[str, CommandDoc]) -> str:
    """The whole page."""
    lines = [
        f'.TH TIRRENO\\-SHIPPER 1 "" "tirreno\\-shipper {_roff(__version__)}" "User Commands"',
        ".nh",  # no hyphenation, ragged right: option names stay whole, searchable
        ".ad l",
        ".SH NAME",
        f"tirreno\\-shipper \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        ".B tirreno\\-shipper",
        "[\\fB\\-\\-version\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "tirreno-shipper tails nginx and Apache access logs, turns each meaningful request "
            "into a tirreno event, finds the user behind the session cookie, spools the events "
            "in SQLite and posts them to a tirreno sensor. README.md has the configuration "
            "reference."
        ),
        ".SH COMMANDS",
    ]
    for name, sp in _commands(parser).items():
        usage = sp.format_usage().removeprefix("usage: ").strip()
        lines += [f".SS {_roff(name)}", ".nf", _roff(" ".join(usage.split())), ".fi"]
        lines += [".PP", _roff(sp.description or "")]
        lines += _options(sp)
        doc = docs.get(name)
        if doc is None:
            continue
        lines += [".PP", "\\fBExit codes\\fR"]
        for code, meaning in doc.exits:
            lines += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
        if doc.env:
            lines += [".PP", "\\fBEnvironment\\fR"]
            for env in doc.env:
                var, _, meaning = env.partition("  ")
                lines += [".TP", f"\\fB{_roff(var)}\\fR", _roff(meaning.strip())]
        lines += [".PP", "\\fBExample\\fR", ".nf", ".RS"]
        lines += [_roff(x) for x in doc.examples]
        lines += [".RE", ".fi"]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fI/etc/tirreno\\-shipper/config.yaml\\fR",
        _roff("the configuration (-c, or TIRRENO_SHIPPER_CONFIG, names another)"),
        ".TP",
        "\\fI/var/lib/tirreno\\-shipper\\fR",
        _roff("state_dir: spool.sqlite (events, checkpoints, dead letters) and status.json"),
        ".SH SEE ALSO",
        "\\fBnginx\\fR(8), \\fBapache2\\fR(8), \\fBsystemd.service\\fR(5), \\fBjournalctl\\fR(1)",
        "",
    ]
    return "\n".join(lines)

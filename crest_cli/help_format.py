"""`--help` that shows each flag's default once: argparse's ArgumentDefaultsHelpFormatter appends
`(default: ...)` even when the help already says it or when the default is None."""

from __future__ import annotations

import argparse


def _says_nothing(default: object) -> bool:
    # identity, not equality: a default of 0 is worth showing, False and None are not
    return default is None or default is False or default is argparse.SUPPRESS or default == []


def shown_default(action: argparse.Action) -> str | None:
    """The text `(default: X)` appended to this flag's help, or None when the help says it already."""
    help_text = action.help or ""
    if not action.option_strings or "default" in help_text or _says_nothing(action.default):
        return None
    default = action.default
    if isinstance(default, (list, tuple)):
        default = ",".join(str(item) for item in default)
    return f"(default: {default})"


class DefaultsOnce(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        extra = shown_default(action)
        help_text = action.help or ""
        return help_text if extra is None else f"{help_text} {extra.replace('%', '%%')}".strip()


class CrestParser(argparse.ArgumentParser):
    """An argument parser whose help shows defaults once; its subcommands' parsers are of this class too."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = DefaultsOnce, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

"""The help formatter of the project's command lines: every option's --help line names its default."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" suffix, skipped where it would say nothing or say it twice.

    No suffix for options without a default value (None, an empty list, required options,
    positionals), for plain switches (off unless given), and for help texts that already state
    their default in words, e.g. "(default: the preset's)". Descriptions and epilogs keep their
    own line breaks.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.required or not action.option_strings:
            return text
        if action.default is None or action.default is argparse.SUPPRESS or action.default == []:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        return super()._get_help_string(action)

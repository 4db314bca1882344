"""Options from three places: a config file, the environment and the command line.

A command that opts in (`enable_option_sources`) reads, in this order, each later one
winning: the parser's defaults, the YAML file named by `--config FILE` (keys are the long
option names without dashes: `flow-events: all`), environment variables
(`SLUICE_FLOW_EVENTS=all`), then the command line. A value from the file or the
environment goes through the same type and choices check as the flag, and a bad one is
refused naming where it came from, so every source is validated the same way.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

CONFIG_OPTION = "--config"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
NOT_SOURCED = frozenset({"help", "config", "show_config"})


@dataclass
class OptionSources:
    """Where a parser's options may come from besides the command line."""

    env_prefix: str
    # dest -> "file PATH" or "env NAME", for values not taken from the command line
    origins: dict[str, str] = field(default_factory=dict)


class SourcedParser(argparse.ArgumentParser):
    """An ArgumentParser that, once `enable_option_sources` ran on it, fills its defaults
    from the config file and the environment before parsing the command line."""

    option_sources: OptionSources | None = None

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        if self.option_sources is not None:
            argv = list(args) if args is not None else []
            try:
                self._apply_sources(self.option_sources, argv, os.environ)
            except OptionSourceError as err:
                # Without the usage text: the mistake is in a file or a variable, not argv.
                self.exit(2, f"{self.prog}: error: {err}\n")
        return super().parse_known_args(args, namespace)

    def _apply_sources(self, sources: OptionSources, argv: list[str],
                       environ: Mapping[str, str]) -> None:
        actions = sourced_actions(self)
        values: dict[str, Any] = {}
        path = config_path(argv)
        if path is not None:
            for key, raw in read_config_file(path).items():
                action = actions.get(key)
                if action is None:
                    raise OptionSourceError(
                        f"config file {path}: unknown key {key!r}; known keys: "
                        f"{', '.join(sorted(actions))}")
                values[action.dest] = convert(action, raw, f"config file {path}, key {key!r}")
                sources.origins[action.dest] = f"file {path}"
        for key, action in actions.items():
            name = env_name(sources.env_prefix, key)
            if name in environ:
                values[action.dest] = convert(action, environ[name], f"environment {name}")
                sources.origins[action.dest] = f"env {name}"
        for action in self._actions:
            if action.dest in values:
                action.required = False
        self.set_defaults(**values)


class OptionSourceError(ValueError):
    """A config file or environment value that cannot be used; the message names it."""


def enable_option_sources(parser: argparse.ArgumentParser, env_prefix: str = "SLUICE_") -> None:
    """Give `parser` (a SourcedParser) `--config FILE` and environment variables."""
    if not isinstance(parser, SourcedParser):
        raise TypeError("option sources need a SourcedParser (see cli.main)")
    parser.add_argument(CONFIG_OPTION, metavar="FILE",
                        help=f"read options from this YAML file: keys are the long option "
                             f"names without dashes; environment variables "
                             f"{env_prefix}<OPTION> (e.g. {env_name(env_prefix, 'log-level')}) "
                             f"override it and flags override both")
    parser.option_sources = OptionSources(env_prefix)


def sourced_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option name without dashes -> its action, for every option a source may set."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if longs and action.dest not in NOT_SOURCED:
            actions[longs[0][2:]] = action
    return actions


def env_name(prefix: str, key: str) -> str:
    return prefix + key.upper().replace("-", "_")


def config_path(argv: Sequence[str]) -> str | None:
    """The value of --config on the command line, if given (last one wins)."""
    path: str | None = None
    for index, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == CONFIG_OPTION and index + 1 < len(argv):
            path = argv[index + 1]
        elif arg.startswith(CONFIG_OPTION + "="):
            path = arg.split("=", 1)[1]
    return path


def read_config_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            loaded = yaml.safe_load(stream)
    except OSError as err:
        raise OptionSourceError(f"config file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise OptionSourceError(f"config file {path}: not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise OptionSourceError(f"config file {path}: expected a mapping of option names to "
                                f"values, got {type(loaded).__name__}")
    for key in loaded:
        if not isinstance(key, str):
            raise OptionSourceError(f"config file {path}: key {key!r} is not a string")
    return loaded


def convert(action: argparse.Action, raw: Any, where: str) -> Any:
    """`raw` checked and converted as the flag's own parsing would; error names `where`."""
    if isinstance(action, argparse._StoreConstAction):  # store_true / store_false
        return _flag(action, raw, where)
    if isinstance(raw, (dict, list)) or raw is None:
        raise OptionSourceError(f"{where}: expected a single value, got {raw!r}")
    text = str(raw).lower() if isinstance(raw, bool) else str(raw)
    try:
        value = action.type(text) if callable(action.type) else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        type_name = getattr(action.type, "__name__", "valid")
        raise OptionSourceError(f"{where}: invalid {type_name} value {raw!r}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise OptionSourceError(f"{where}: {raw!r} is not one of {choices}")
    return value


def _flag(action: argparse.Action, raw: Any, where: str) -> Any:
    if isinstance(raw, bool):
        on = raw
    elif isinstance(raw, str) and raw.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        on = raw.strip().lower() in TRUE_WORDS
    else:
        raise OptionSourceError(f"{where}: expected true or false, got {raw!r}")
    return action.const if on else action.default


def effective_options(parser: argparse.ArgumentParser, args: argparse.Namespace
                      ) -> list[tuple[str, Any, str]]:
    """(option, value, where it came from) for every sourced option of `parser`."""
    sources = getattr(parser, "option_sources", None)
    origins = sources.origins if isinstance(sources, OptionSources) else {}
    rows = []
    for key, action in sorted(sourced_actions(parser).items()):
        value = getattr(args, action.dest, None)
        if value != parser.get_default(action.dest):
            origin = "command line"
        else:
            origin = origins.get(action.dest, "default")
        rows.append((key, value, origin))
    return rows


def with_origin(parser: argparse.ArgumentParser, message: str) -> str:
    """`message` about an option ("--flow-events-sample 0: ...") with, when the value came
    from the config file or the environment, where it was set."""
    sources = getattr(parser, "option_sources", None)
    if not isinstance(sources, OptionSources):
        return message
    for word in message.split():
        action = sourced_actions(parser).get(word.removeprefix("--").rstrip(":,"))
        if word.startswith("--") and action is not None:
            origin = sources.origins.get(action.dest)
            return f"{message} (set in {origin})" if origin else message
    return message

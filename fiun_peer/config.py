"""Layered configuration for `fiun-peer run`: flags > environment (``FIUN_<OPTION>``) > TOML file > defaults.

Everything is derived from the ``run`` subcommand's argparse definitions, so a flag added there gets
its environment variable and its config-file key for free: ``--sync-interval`` is ``FIUN_SYNC_INTERVAL``
and ``sync-interval = 5.0`` in the file (``sync_interval`` is accepted too). The file is ``--config
FILE`` (or ``FIUN_CONFIG``), else ``HOME/config.toml`` when it exists. Values from the environment and
the file are checked with the flag's own type and choices; a bad one is a :class:`ConfigError` naming
where it came from.
"""

from __future__ import annotations

import argparse
import os
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "FIUN_"
CONFIG_FILE = "config.toml"
_NOT_CONFIGURABLE = {"help", "config"}
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class ConfigError(ValueError):
    """A config file, environment variable or flag value is unusable; the message says which and why."""


@dataclass(frozen=True)
class Option:
    """One configurable `run` option, as argparse defines it."""

    action: argparse.Action

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def key(self) -> str:
        """The TOML key: the long flag without dashes, e.g. ``sync-interval``."""
        longs = [s for s in self.action.option_strings if s.startswith("--")]
        return longs[0][2:] if longs else self.dest.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()

    @property
    def is_flag(self) -> bool:
        return isinstance(self.action, argparse._StoreTrueAction | argparse._StoreFalseAction)

    @property
    def is_list(self) -> bool:
        return self.action.nargs in ("*", "+") or isinstance(self.action.nargs, int) or \
            isinstance(self.action, argparse._AppendAction)


def options(run_parser: argparse.ArgumentParser) -> list[Option]:
    """The configurable options of the ``run`` parser, in definition order."""
    return [Option(a) for a in run_parser._actions if a.option_strings and a.dest not in _NOT_CONFIGURABLE]


def _convert_one(opt: Option, value: Any, where: str) -> Any:
    conv = opt.action.type
    try:
        if conv is None:
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {type(value).__name__}")
            out = value
        elif isinstance(value, bool):
            raise TypeError("expected a value, got a boolean")
        elif conv in (float, int) and isinstance(value, int | float):
            if conv is int and isinstance(value, float) and not value.is_integer():
                raise TypeError(f"expected an integer, got {value}")
            out = conv(value)
        elif isinstance(value, str):
            out = conv(value)
        else:
            raise TypeError(f"expected a string, got {type(value).__name__}")
    except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{where}: invalid value {value!r} for {opt.key}: {exc}") from None
    if opt.action.choices is not None and out not in opt.action.choices:
        raise ConfigError(f"{where}: {opt.key} must be one of {', '.join(map(str, opt.action.choices))}, "
                          f"got {out!r}")
    return out


def convert(opt: Option, value: Any, where: str) -> Any:
    """``value`` (a TOML value, or the string of an environment variable) as the flag would parse it."""
    from_env = where.startswith("environment")
    if opt.is_flag:
        if from_env and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {opt.key} is a switch: use true or false, got {value!r}")
        return value
    if opt.is_list:
        if from_env and isinstance(value, str):
            value = value.replace(",", " ").split()
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {opt.key} takes a list, e.g. {opt.key} = [\"...\"], got {value!r}")
        return [_convert_one(opt, v, where) for v in value]
    if value == "":  # an empty value means the default, in the file as in the environment
        return opt.action.default
    return _convert_one(opt, value, where)


def from_env(opts: list[Option], environ: Mapping[str, str]) -> dict[str, Any]:
    """Values set in ``FIUN_<OPTION>`` variables (an empty variable counts as unset)."""
    out = {}
    for opt in opts:
        raw = environ.get(opt.env, "")
        if raw.strip():
            out[opt.dest] = convert(opt, raw, f"environment variable {opt.env}")
    return out


def from_file(opts: list[Option], path: Path) -> dict[str, Any]:
    """Values in a TOML config file; unknown keys and bad types are errors."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    by_key = {o.key: o for o in opts} | {o.dest: o for o in opts}
    unknown = sorted(k for k in data if k not in by_key)
    if unknown:
        raise ConfigError(f"config file {path}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(unknown)} (known: {', '.join(o.key for o in opts)})")
    return {by_key[k].dest: convert(by_key[k], v, f"config file {path}") for k, v in data.items()}


def explicit_flags(make_parser: Any, argv: list[str]) -> dict[str, Any]:
    """The ``run`` options given on the command line, by dest (parsed by a fresh parser whose defaults
    are suppressed, so only what was typed shows up)."""
    parser = make_parser()
    run = run_subparser(parser)
    for a in run._actions:
        if a.option_strings:
            a.default, a.required = argparse.SUPPRESS, False
    given = vars(parser.parse_args(argv))
    given.pop("command", None)
    return given


def run_subparser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise LookupError("the parser has no `run` subcommand")


@dataclass
class Resolved:
    args: argparse.Namespace
    config_file: Path | None
    sources: dict[str, str]          # dest -> "flag" | "env" | "file" | "default"

    def effective(self) -> dict[str, Any]:
        """JSON-friendly values of every option (what the daemon reports in run.json)."""
        out = {}
        for dest in self.sources:
            v = getattr(self.args, dest, None)
            out[dest] = [str(x) for x in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
        return out


def resolve_run(make_parser: Any, argv: list[str], environ: Mapping[str, str] | None = None) -> Resolved:
    """Parse ``fiun-peer run`` arguments with flags > env > file > defaults. Raises ConfigError;
    argparse itself still reports malformed flags (exit 2)."""
    environ = os.environ if environ is None else environ
    flags = explicit_flags(make_parser, argv)
    parser = make_parser()
    run = run_subparser(parser)
    opts = options(run)
    env = from_env(opts, environ)
    config = config_path(flags, environ, env)
    file_values = from_file(opts, config) if config else {}
    layered = {**file_values, **env}
    run.set_defaults(**layered)
    for a in run._actions:  # a required flag is satisfied by the environment or the file
        if a.dest in layered:
            a.required = False
    args = parser.parse_args(argv)
    for dest, value in flags.items():  # a flag replaces, never extends (append options would)
        setattr(args, dest, value)
    args.config = config
    sources = {o.dest: "flag" if o.dest in flags else "env" if o.dest in env else
               "file" if o.dest in file_values else "default" for o in opts}
    return Resolved(args, config, sources)


def config_path(flags: Mapping[str, Any], environ: Mapping[str, str], env: Mapping[str, Any]) -> Path | None:
    """``--config``, else ``FIUN_CONFIG``, else ``HOME/config.toml`` if it exists (HOME from the flag or
    the environment), else none."""
    if flags.get("config"):
        return Path(flags["config"])
    if environ.get(ENV_PREFIX + "CONFIG", "").strip():
        return Path(environ[ENV_PREFIX + "CONFIG"])
    home = flags.get("home", env.get("home"))
    if home is not None and (Path(home) / CONFIG_FILE).is_file():
        return Path(home) / CONFIG_FILE
    return None


def commented_template(run_parser: argparse.ArgumentParser) -> str:
    """The config file `fiun-peer init` writes: every option, commented out at its default."""
    lines = ["# fiun-peer configuration (TOML). Precedence: command-line flags > FIUN_<OPTION> environment",
             "# variables > this file > built-in defaults. Uncomment a line to set it.", ""]
    for opt in options(run_parser):
        if opt.dest == "home":
            continue
        helptext = (opt.action.help or "").replace("%%", "%")
        text = f"{helptext} [flag --{opt.key}, env {opt.env}]".strip()
        lines += [f"# {line}" for line in textwrap.wrap(text, 98)]
        default = opt.action.default
        lines.append(f"# {opt.key} = {_toml_value(opt, default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(opt: Option, value: Any) -> str:
    if opt.is_flag:
        return "true" if value else "false"
    if opt.is_list:
        return "[" + ", ".join(_toml_scalar(v) for v in (value or [])) + "]"
    return _toml_scalar(value if value is not None else "")


def _toml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    text = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'

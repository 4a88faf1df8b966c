"""``--config`` files checked before LightningCLI reads them, so that a broken one fails in one line naming it.

A config file must be UTF-8 text holding a YAML mapping of options. YAML aliases may repeat a part of the
file many times over; a file whose aliases expand to more than ``MAX_NODES`` values (a "billion laughs"
file of a few hundred bytes takes minutes and gigabytes to read) is refused before it is expanded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

MAX_NODES = 100_000  # values in a config once its aliases are expanded; real configs have a few hundred
_OPTIONS = ("--config", "-c")


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message names the file."""


def config_paths(args: Sequence[str]) -> list[str]:
    """The files given with ``--config FILE`` or ``--config=FILE`` in a command line."""
    paths = []
    for i, arg in enumerate(args):
        if arg in _OPTIONS and i + 1 < len(args):
            paths.append(args[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values under ``node`` with every alias expanded, counted without expanding them (aliases share nodes)."""
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a recursive alias counts once
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def check_config_file(path: str | Path) -> None:
    """Raise ``ConfigFileError`` naming ``path`` unless it is a readable YAML mapping of modest size."""
    path = Path(path)
    if not path.is_file():
        raise ConfigFileError(f"{path}: no such config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(f"{path}: not a YAML config file (not UTF-8 text: {e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ConfigFileError(f"{path}: cannot read this config file ({e.strerror})") from e
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            raise ConfigFileError(f"{path}: its YAML aliases expand to more than {MAX_NODES:,} values; "
                                  "write the config out without such repetition")
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigFileError(f"{path}: not valid YAML ({where}{problem})") from e
    if not isinstance(config, dict):
        got = "nothing" if config is None else f"a {type(config).__name__}"
        raise ConfigFileError(f"{path}: a config file holds a mapping of options such as 'trainer: "
                              f"{{max_epochs: 5}}', but this one holds {got}")


def check_config_files(args: Sequence[str]) -> None:
    """Check every ``--config`` file of a command line (see ``check_config_file``)."""
    for path in config_paths(args):
        check_config_file(path)

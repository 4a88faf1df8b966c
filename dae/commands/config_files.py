"""``--config`` files checked before LightningCLI reads them, so that a broken one fails in one line naming it.

A config file must be UTF-8 text holding a YAML mapping of options. YAML aliases may repeat a part of the
file many times over; a file whose aliases expand to more than ``MAX_NODES`` values (a "billion laughs"
file of a few hundred bytes takes minutes and gigabytes to read) is refused before it is expanded.
"""

from __future__ import annotations

import re
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


def _type_names(subtypes: str) -> list[str]:
    """``[<class 'int'>, typing.Literal['a', 'b'], <class 'NoneType'>]`` as ``["int", "'a'", "'b'", "null"]``."""
    items, depth, current = [], 0, ""
    for char in subtypes.strip()[1:-1]:
        depth += (char in "[(") - (char in "])")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    items.append(current.strip())
    names: list[str] = []
    for item in items:
        if item.startswith(("typing.Literal[", "Literal[")):
            names += item[item.index("[") + 1:-1].split(", ")
        else:
            names.append(re.sub(r"(?:\w+\.)+(\w+)", r"\1", re.sub(r"<class '([\w.]+)'>", r"\1", item)))
    return list(dict.fromkeys("null" if name == "NoneType" else name for name in names if name))


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def error_line(message: str) -> str:
    """jsonargparse's (multi-line) error about a config value as one line: the key, what it takes and what it got.

    jsonargparse nests the reason under the key (``Parser key "trainer.max_epochs":``), and for a class's own
    options under its ``class_path``; the deepest key is the option at fault. A message of another form keeps all
    its lines, joined.
    """
    lines = [(len(line) - len(line.lstrip(" -")), line.strip(" -")) for line in message.splitlines() if line.strip()]
    keys: list[tuple[int, str]] = []  # the chain of keys down to the deepest
    deepest = None
    for i, (indent, text) in enumerate(lines):
        if match := re.fullmatch(r'Parser key "(.+)":', text):
            while keys and keys[-1][0] >= indent:
                keys.pop()
            keys.append((indent, match.group(1)))
            if deepest is None or indent > lines[deepest][0]:
                deepest, chain = i, [key for _, key in keys]
    if deepest is None:
        return unknown_option(message) or "; ".join(text for _, text in lines)
    indent = lines[deepest][0]
    block = []
    for child_indent, text in lines[deepest + 1:]:
        if child_indent <= indent:
            break
        block.append((child_indent, text))
    key = ".init_args.".join(chain)
    top = min(child_indent for child_indent, _ in block) if block else indent
    expected = got = None
    for n, (child_indent, text) in enumerate(block):
        if text.startswith("Problem with given class_path ") and n + 1 < len(block):
            reason = block[n + 1][1]
            class_path = text[len("Problem with given class_path "):].rstrip(":").strip("'")
            if option := unknown_option(reason):
                return f"{key}.init_args.{option.split(':')[0]}: {class_path} has no such option"
            return f"{key}: class_path {class_path}: {reason}"
        if child_indent != top:
            continue
        if text.startswith("Subtypes: "):
            expected = _either(_type_names(text[len("Subtypes: "):]))
        elif match := re.fullmatch(r"Expected an? (.+?)\. Got value: (.*)", text):
            expected, got = _either(_type_names(f"[{match.group(1)}]")), match.group(2)
        elif text.startswith("Given value: "):
            got = text[len("Given value: "):]
    if expected is None:
        return f"{key}: " + "; ".join(text for _, text in block)
    got = "" if got is None else f", got {got if len(got) <= 60 else got[:57] + '...'}"
    return f"{key}: expected {expected}{got}"


def unknown_option(message: str) -> str | None:
    """``KEY: no such option`` for jsonargparse's error about an option it does not know, else ``None``."""
    match = re.search(r"(?:Group '([^']+)' does not accept option|Option) '([^']+)'", message)
    return f"{'.'.join(filter(None, match.groups()))}: no such option" if match else None

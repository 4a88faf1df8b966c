"""Every ``dae ...`` command in the code blocks of README.md and docs/*.md parses as written.

The commands run in a folder laid out as after ``make train``: configs/ and a trained run (on fixture data)
in lightning_logs/version_0. Trainer commands (fit, validate, test, predict) are parsed with
``--print_config`` appended, which resolves and checks every config file and option without building
anything. The other commands (plot, evaluate, denoise, export) are parsed by their own argument parsers and
stopped before they run. Python blocks that start with a file-name comment (``# mypkg/nets.py``) are written
to that path first, so documented code that a command imports is importable.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dae.commands import main
from dae.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TRAINER_COMMANDS = ("fit", "validate", "test", "predict")
FENCE = re.compile(r"^```(\w*)\s*$")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the block's first line of code
    language: str
    text: str


def code_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a markdown page."""
    blocks, language, start, lines = [], None, 0, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence and language is None:
            language, start, lines = fence.group(1), number + 1, []
        elif line.strip() == "```" and language is not None:
            blocks.append(Block(page, start, language, "\n".join(lines)))
            language = None
        elif language is not None:
            lines.append(line)
    return blocks


# What may stand right before the dae program in a shell line: a prompt, a launcher, python's -m.
LAUNCHERS = ("$", "-m", "srun", "time", "exec")


def dae_command(line: str) -> list[str] | None:
    """The arguments after ``dae`` in a shell line that runs it (``dae``, ``.venv/bin/dae``, ``-m dae``,
    after ``srun``, a ``$`` prompt or ``VAR=value``), or None; prose that names dae is not a command."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if (token == "dae" or token.endswith("/dae")) and i + 1 < len(tokens):
            runs_it = i == 0 or tokens[i - 1] in LAUNCHERS or "=" in tokens[i - 1]
            if runs_it and tokens[i + 1] in (*TRAINER_COMMANDS, *COMMANDS):
                return tokens[i + 1:]
    return None


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: dae {shlex.join(self.args)}"


def documented_commands() -> list[Command]:
    commands = []
    for page in PAGES:
        for block in code_blocks(page):
            if block.language not in ("", "bash", "sh", "console", "shell"):
                continue
            # Join continued lines, remembering where each command starts.
            pending, start = "", None
            for offset, line in enumerate(block.text.splitlines()):
                if start is None:
                    start = block.line + offset
                pending += line.rstrip()
                if pending.endswith("\\"):
                    pending = pending[:-1] + " "
                    continue
                args = dae_command(pending)
                if args is not None:
                    commands.append(Command(page, start, tuple(args)))
                pending, start = "", None
    return commands


def python_files() -> dict[str, str]:
    """Python blocks whose first line names their file, e.g. ``# mypkg/nets.py``: {path: code}."""
    files = {}
    for page in PAGES:
        for block in code_blocks(page):
            first = block.text.splitlines()[0] if block.text else ""
            if block.language == "python" and re.fullmatch(r"# [\w/]+\.py", first):
                files[first[2:]] = block.text
    return files


COMMANDS_FOUND = documented_commands()


@pytest.fixture(scope="module")
def workdir(trained_run, tmp_path_factory):
    """A working folder as after ``make train``: configs/ and a trained run in lightning_logs/version_0
    (fixture data), so that commands naming the run's config.yaml or checkpoints find them."""
    folder = tmp_path_factory.mktemp("workdir")
    (folder / "configs").symlink_to(ROOT / "configs")
    (folder / "lightning_logs").symlink_to(trained_run.parent)
    return folder


@pytest.fixture(scope="module")
def documented_code(tmp_path_factory):
    """The documented Python files, importable while the commands are parsed."""
    folder = tmp_path_factory.mktemp("documented_code")
    for name, code in python_files().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
        for parent in path.relative_to(folder).parents:
            if parent != Path("."):
                (folder / parent / "__init__.py").touch()
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


class Parsed(Exception):
    """Raised in place of running a command once its arguments have parsed."""


def stop_after(parse):
    """``parse`` that raises ``Parsed`` instead of returning, so the command never runs."""

    def parse_then_stop(self, *args, **kwargs):
        parse(self, *args, **kwargs)
        raise Parsed

    return parse_then_stop


def check_parses(args: list[str], monkeypatch, capsys) -> None:
    """Fail with the parser's message unless ``dae ARGS`` parses."""
    if args[0] in TRAINER_COMMANDS:
        missing = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config" and not Path(args[i + 1]).is_file()]
        assert not missing, f"config file(s) {', '.join(missing)} do not exist"
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--print_config"])
    else:
        for name in ("parse_args", "parse_intermixed_args"):
            monkeypatch.setattr(argparse.ArgumentParser, name, stop_after(getattr(argparse.ArgumentParser, name)))
        with pytest.raises((Parsed, SystemExit)) as exit_info:
            main(args)
        if exit_info.type is Parsed:
            return
    assert exit_info.value.code in (0, None), capsys.readouterr().err.strip().splitlines()[-1:]


def test_prose_that_names_dae_is_not_a_command():
    assert dae_command("dae/denoise.py   the dae denoise command: files in, files out") is None
    assert dae_command("srun .venv/bin/dae fit --config configs/mnist.yaml") == ["fit", "--config", "configs/mnist.yaml"]
    assert dae_command("torchrun --nnodes 2 -m dae fit --config c.yaml") == ["fit", "--config", "c.yaml"]


def test_the_pages_document_every_kind_of_command():
    kinds = {c.args[0] for c in COMMANDS_FOUND}
    assert {"fit", "test", "validate", "predict", "evaluate", "denoise", "export", "plot"} <= kinds, kinds
    assert any(c.page.name == "README.md" for c in COMMANDS_FOUND)


@pytest.mark.parametrize("command", COMMANDS_FOUND, ids=str)
def test_documented_command_parses(command, workdir, documented_code, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    check_parses(list(command.args), monkeypatch, capsys)


@pytest.mark.parametrize("args", [
    ["fit", "--config", "configs/mnist.yaml", "--model.no_such_option", "1"],
    ["fit", "--config", "configs/mnist.yaml", "--model.net", "NoSuchNet"],
    ["evaluate", "RUN", "--std", "high"],
    ["denoise", "--ckpt", "RUN", "photo.png"],  # -o is required
    ["export", "--ckpt", "RUN", "--format", "gif", "-o", "x"],
    ["test", "--config", "lightning_logs/version_9/config.yaml"],
])
def test_a_command_that_does_not_parse_is_caught(args, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    with pytest.raises(AssertionError):
        check_parses(args, monkeypatch, capsys)

"""Broken ``--config`` files: one line naming the file, exit status 2, nothing trained, nothing hangs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dae.cli import main
from dae.config_files import MAX_NODES, ConfigFileError, check_config_file
from tests.conftest import fit_args


def alias_bomb(levels: int = 7, width: int = 10) -> str:
    """A few hundred bytes of YAML whose aliases expand to width**levels values (a "billion laughs")."""
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ntrainer:\n  max_epochs: *a{levels}\n"


CASES = {
    "bad YAML": (b"model: [unclosed\n  - x: {", "not valid YAML (line 2, column 6"),
    "binary": (b"\x00\xff\xfe garbage", "not a YAML config file (not UTF-8 text"),
    "a list": (b"- 1\n- 2\n", "a config file holds a mapping of options"),
    "empty": (b"", "a config file holds a mapping of options such as 'trainer: {max_epochs: 5}', but this one "
              "holds nothing"),
    "python object tag": (b'model: !!python/object/apply:os.system ["echo pwned"]\n',
                          "not valid YAML (line 1, column 8: could not determine a constructor for the tag"),
    "alias bomb": (alias_bomb().encode(), f"its YAML aliases expand to more than {MAX_NODES:,} values"),
}


@pytest.mark.parametrize("content,message", CASES.values(), ids=CASES.keys())
def test_broken_config_file_fails_in_one_line_naming_it(content, message, mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "mine.yaml"
    config.write_bytes(content)
    start = time.perf_counter()
    assert main([*fit_args(mnist_dir), f"--config={config}"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 10
    assert f"dae fit: error: {config}: {message}" in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_config_file_is_named(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*fit_args(mnist_dir), "--config", "nope.yaml"]) == 2
    assert "dae fit: error: nope.yaml: no such config file" in capsys.readouterr().err


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_any_bytes_are_a_mapping_or_a_one_line_error_naming_the_file(tmp_path, content):
    config = tmp_path / "fuzzed.yaml"
    config.write_bytes(content)
    try:
        check_config_file(config)
    except ConfigFileError as e:
        assert str(e).startswith(f"{config}: ") and "\n" not in str(e)
    else:
        assert isinstance(yaml.safe_load(content), dict)


values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                      max_leaves=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(st.text(max_size=10), values, max_size=5))
def test_every_yaml_mapping_passes_the_file_check(tmp_path, config):
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    check_config_file(path)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_fuzzed_config_files_through_dae_fit_never_train_or_crash(content, mnist_dir, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("fuzzed")
    config = Path(folder) / "fuzzed.yaml"
    config.write_bytes(content)
    try:
        code = main([*fit_args(mnist_dir), f"--config={config}", f"--trainer.default_root_dir={folder}",
                     f"--trainer.logger.init_args.save_dir={folder}"])
    except SystemExit as e:  # jsonargparse's own errors for well-formed YAML with unknown or mistyped options
        code = e.code
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2 and f"{config}: " in err:
        assert not list(Path(folder).rglob("*.ckpt"))

"""Broken ``--config`` files: one line naming the file, exit status 2, nothing trained, nothing hangs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dae.commands import main
from dae.commands.config_files import MAX_NODES, ConfigFileError, check_config_file
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


WRONG_VALUES = {
    "word for an int": ("trainer: {max_epochs: ten}", "trainer.max_epochs: expected int or null, got ten"),
    "word for a float": ("model: {lr: fast}", "model.lr: expected float, got fast"),
    "list for a data option": ("data: {init_args: {batch_size: [1]}}",
                               "data.init_args.batch_size: expected int, got [1]"),
    "word for a network option": ("model: {net: {class_path: dae.nets.UNet, init_args: {depth: deep}}}",
                                  "model.net.init_args.depth: expected int, got deep"),
    "word for a bool": ("test_after_fit: maybe", "test_after_fit: expected bool, got maybe"),
    "value outside a choice": ("lr_monitor: {init_args: {logging_interval: often}}",
                               "lr_monitor.init_args.logging_interval: expected 'step', 'epoch' or null, got often"),
    "unknown option": ("model: {lrr: 0.1}", "model.lrr: no such option"),
    "option of another network": ("model: {net: {init_args: {width: 8}}}",
                                  "model.net.init_args.width: dae.nets.ConvAutoencoder has no such option"),
    "unknown class": ("model: {noise: {class_path: dae.noise.Nope}}",
                      "model.noise: class_path dae.noise.Nope: module 'dae.noise' has no attribute 'Nope'"),
    "number for a section": ("model: 5",
                             "model: expected a mapping of its options (model: {OPTION: VALUE, ...}), got 5"),
    "null for a section": ("trainer: null", "trainer: expected a mapping of its options"),
    "null for a required option": ("data: null", "data: required, but this file sets it to null"),
}


@pytest.mark.parametrize("content,message", WRONG_VALUES.values(), ids=WRONG_VALUES.keys())
def test_wrong_option_or_value_fails_in_one_line_naming_file_and_key(content, message, mnist_dir, tmp_path,
                                                                     monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "overlay.yaml"
    config.write_text(content + "\n")
    assert main([*fit_args(mnist_dir), f"--config={config}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dae fit: error: {config}: {message}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "lightning_logs").exists()  # refused before the run folder was made


def test_wrong_value_in_the_first_of_two_config_files_names_that_file(mnist_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("model: {lr: fast}\n")
    (tmp_path / "good.yaml").write_text("trainer: {max_epochs: 1}\n")
    assert main([*fit_args(mnist_dir), "--config", "bad.yaml", "--config", "good.yaml"]) == 2
    assert capsys.readouterr().err == "dae fit: error: bad.yaml: model.lr: expected float, got fast\n"


# Options of the baseline config, what jsonargparse says each takes, and values of other types than that.
TYPED_OPTIONS = {
    "trainer.max_epochs": "int or null",
    "trainer.limit_val_batches": "int, float or null",
    "model.lr": "float",
    "model.weight_decay": "float",
    "model.net.init_args.in_channels": "int",
    "data.init_args.batch_size": "int",
    "data.init_args.val_split": "int or float",
    "test_after_fit": "bool",
}
YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "y", "n", "null", "none", "inf", "infinity", "nan"}
wrong_values = (st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(lambda w: w not in YAML_WORDS)
                | st.lists(st.integers(), min_size=1, max_size=3)
                | st.dictionaries(st.sampled_from("xyz"), st.integers(), min_size=1, max_size=2))


def nested(key: str, value) -> dict:
    """``a.b.c``, v as ``{a: {b: {c: v}}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(TYPED_OPTIONS)), value=wrong_values)
def test_fuzzed_wrong_typed_value_fails_naming_file_key_and_type(key, value, mnist_dir, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("typed")
    config = Path(folder) / "overlay.yaml"
    config.write_text(yaml.safe_dump(nested(key, value)), encoding="utf-8")
    code = main([*fit_args(mnist_dir), f"--config={config}", f"--trainer.default_root_dir={folder}",
                 f"--trainer.logger.init_args.save_dir={folder}"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"dae fit: error: {config}: {key}: expected {TYPED_OPTIONS[key]}, got "), err
    assert not (Path(folder) / "lightning_logs").exists()


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


sections = st.sampled_from(["trainer", "model", "data", "seed_everything", "lr_monitor", "max_epochs", "lr"])
option_mappings = st.dictionaries(sections, values, min_size=1, max_size=3).map(lambda m: yaml.safe_dump(m).encode())


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode) | option_mappings)
def test_fuzzed_config_files_through_dae_fit_never_train_or_crash(content, mnist_dir, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("fuzzed")
    config = Path(folder) / "fuzzed.yaml"
    config.write_bytes(content)
    code = main([*fit_args(mnist_dir), f"--config={config}", f"--trainer.default_root_dir={folder}",
                 f"--trainer.logger.init_args.save_dir={folder}"])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
    if code == 2:  # whatever is wrong with the file: one line that names it, and nothing trained
        assert err.startswith(f"dae fit: error: {config}: ") and len(err.strip().splitlines()) == 1, err
        assert not list(Path(folder).rglob("*.ckpt"))

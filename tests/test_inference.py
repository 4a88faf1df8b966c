"""Checkpoint loading outside Lightning's resume: run folders, plain-data rebuild, and refusing bad files."""

import pickle
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dae.commands import main
from dae.inference import CheckpointError, load_checkpoint, load_model, resolve_checkpoint
from dae.module import DenoisingModule
from dae.nets import ConvAutoencoder


class _CreatesFileWhenUnpickled:
    """A pickle payload: unpickling it calls ``open(marker, "w")``, i.e. runs code chosen by the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_run_folder_resolves_to_its_best_checkpoint(trained_run):
    best = resolve_checkpoint(trained_run)
    assert best.parent == trained_run / "checkpoints" and best.name.startswith("best-")
    assert resolve_checkpoint(trained_run / "checkpoints") == best
    assert resolve_checkpoint(trained_run / "checkpoints" / "last.ckpt").name == "last.ckpt"


def test_run_folder_without_best_falls_back_to_last(trained_run, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "last.ckpt", run / "checkpoints" / "last.ckpt")
    assert resolve_checkpoint(run) == run / "checkpoints" / "last.ckpt"
    (run / "checkpoints" / "last.ckpt").unlink()
    with pytest.raises(CheckpointError, match="no checkpoint in this folder"):
        resolve_checkpoint(run)


def test_several_best_checkpoints_resolve_to_the_one_last_ckpt_records(trained_run, tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(trained_run / "checkpoints", folder)
    recorded = resolve_checkpoint(folder)
    newer = folder / "best-epoch99-step999.ckpt"
    shutil.copy(recorded, newer)  # newest by mtime, but not the one ModelCheckpoint recorded as best
    assert resolve_checkpoint(folder) == recorded


def test_load_model_rebuilds_the_trained_network_and_noise(trained_run):
    model = load_model(trained_run)
    assert isinstance(model, DenoisingModule) and isinstance(model.net, ConvAutoencoder)
    assert not model.training and model.noise.std == 0.5
    ckpt = torch.load(resolve_checkpoint(trained_run), map_location="cpu", weights_only=True)
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name


def test_load_model_follows_the_configured_noise_and_net(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["noise"]["init_args"]["std"] = 0.25
    torch.save(ckpt, tmp_path / "std025.ckpt")
    assert load_model(tmp_path / "std025.ckpt").noise.std == 0.25
    ckpt["hyper_parameters"]["net"]["init_args"]["in_channels"] = 3
    torch.save(ckpt, tmp_path / "rgb.ckpt")
    with pytest.raises(CheckpointError, match="rgb.ckpt: its weights do not fit"):
        load_model(tmp_path / "rgb.ckpt")


def test_missing_and_non_file_paths_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="nope.ckpt: no such checkpoint"):
        load_model(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


def test_truncated_checkpoint_is_refused_naming_the_file(trained_run, tmp_path):
    data = (trained_run / "checkpoints" / "last.ckpt").read_bytes()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.ckpt: cannot load this checkpoint: .*zip archive.*corrupt"):
        load_model(bad)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", b"\x89PNG\r\n\x1a\n" + bytes(100)])
def test_garbage_files_are_refused_naming_the_file(tmp_path, content):
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="garbage.ckpt: cannot load this checkpoint.*or not a PyTorch checkpoint"):
        load_model(bad)


def test_checkpoint_of_something_else_is_not_a_dae_checkpoint(tmp_path):
    torch.save({"model": ConvAutoencoder().state_dict()}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"other.ckpt: not a dae checkpoint \(no state_dict or hyper_param"):
        load_model(tmp_path / "other.ckpt")
    torch.save(ConvAutoencoder().state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match="weights.pt: not a dae checkpoint"):
        load_model(tmp_path / "weights.pt")


@pytest.mark.parametrize("save", ["torch_zip", "plain_pickle"])
def test_pickled_code_is_refused_and_never_runs(tmp_path, save):
    marker = tmp_path / "code-ran"
    payload = {"state_dict": {}, "hyper_parameters": {}, "evil": _CreatesFileWhenUnpickled(marker)}
    evil = tmp_path / "evil.ckpt"
    if save == "torch_zip":
        torch.save(payload, evil)
        with zipfile.ZipFile(evil) as z:  # the payload really is live: unrestricted unpickling runs it
            pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
        pickle.loads(evil.read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointError, match="evil.ckpt: cannot load this checkpoint: it holds pickled code .*open"):
        load_model(evil)
    assert not marker.exists()


def test_class_path_naming_a_function_is_refused_not_called(trained_run, tmp_path):
    marker = tmp_path / "code-ran"
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["net"] = {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    ckpt["hyper_parameters"]["_instantiator"] = "os.system"
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match="crafted.ckpt: its hyper_parameters name the class subprocess.run, "
                       "which is not one of dae's networks"):
        load_model(tmp_path / "crafted.ckpt")
    assert not marker.exists()


def write_plugin(folder: Path, name: str, marker: Path) -> str:
    """An installed-looking module ``name`` whose import creates ``marker``; returns its network's class path."""
    (folder / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "from dae.nets import ConvAutoencoder\n\n\nclass Net(ConvAutoencoder):\n    pass\n"
    )
    return f"{name}.Net"


@pytest.mark.parametrize("where", ["net", "net as a string", "inside a noise model"])
def test_unknown_class_is_refused_before_its_module_is_imported(trained_run, tmp_path, monkeypatch, capsys, where):
    marker = tmp_path / "imported"
    module = f"plugin_{where.replace(' ', '_')}"
    monkeypatch.syspath_prepend(str(tmp_path))
    class_path = write_plugin(tmp_path, module, marker)
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    if where == "net":
        hparams["net"]["class_path"] = class_path
    elif where == "net as a string":
        hparams["net"] = class_path
    else:
        hparams["noise"] = {"class_path": "dae.noise.ComposeNoise",
                            "init_args": {"noises": [hparams["noise"], {"class_path": class_path}]}}
    torch.save(ckpt, tmp_path / "plugin.ckpt")
    with pytest.raises(CheckpointError, match=rf"plugin.ckpt: its hyper_parameters name the class {class_path}, "
                       r"which is not one of dae's networks, noise models or objectives "
                       r"\(dae.nets.\*, dae.noise.\*, dae.objectives.\*\).*"
                       rf"--allow-class {class_path}"):
        load_model(tmp_path / "plugin.ckpt")
    for command in (["denoise", str(tmp_path), "-o", str(tmp_path / "out")], ["export", "--format", "torchscript",
                    "-o", str(tmp_path / "m.pt")], ["evaluate", "--baselines"]):
        with pytest.raises(SystemExit) as exit_info:
            main([command[0], "--ckpt" if command[0] != "evaluate" else "--limit=1", str(tmp_path / "plugin.ckpt"),
                  *command[1:]])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"--allow-class {class_path}" in err and "Traceback" not in err, err
    assert not marker.exists() and module not in sys.modules
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.pt").exists()


def test_allowed_class_is_built(trained_run, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "imported"
    monkeypatch.syspath_prepend(str(tmp_path))
    class_path = write_plugin(tmp_path, "plugin_allowed", marker)
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["net"]["class_path"] = class_path
    torch.save(ckpt, tmp_path / "plugin.ckpt")
    model = load_model(tmp_path / "plugin.ckpt", allow_classes=[class_path])
    assert type(model.net).__module__ == "plugin_allowed" and marker.exists()
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(images / "a.png")
    args = ["denoise", "--ckpt", str(tmp_path / "plugin.ckpt"), str(images), "-o", str(tmp_path / "out")]
    assert main([*args, "--allow-class", class_path]) == 0 and (tmp_path / "out" / "a.png").is_file()


def test_loaded_models_are_never_compiled(trained_run, tmp_path, monkeypatch):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["compile"] = True
    torch.save(ckpt, tmp_path / "compiled.ckpt")
    calls = []
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: calls.append(args))
    model = load_model(tmp_path / "compiled.ckpt")
    assert calls == [] and model.hparams.compile is False


# ------------------------------------------------------------------ fuzzed checkpoints
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
plain = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
                     max_leaves=12)


def assert_loads_or_fails_naming_the_file(path: Path) -> None:
    """``load_model(path)`` gives a DenoisingModule, or a one-line CheckpointError that starts with the path."""
    try:
        model = load_model(path)
    except CheckpointError as e:
        assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
    else:
        assert isinstance(model, DenoisingModule)


@pytest.mark.slow
@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255), st.booleans()), min_size=1, max_size=4),
       cut=st.none() | st.integers(0, 10**7))
def test_damaged_checkpoint_bytes_load_or_fail_naming_the_file(trained_run, tmp_path, edits, cut):
    """Bytes changed where the pickle and the zip directory live (start and end), and the end cut off."""
    data = bytearray((trained_run / "checkpoints" / "last.ckpt").read_bytes())
    for offset, value, from_end in edits:
        data[-1 - offset if from_end else offset] = value
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(bytes(data if cut is None else data[: cut % len(data)]))
    assert_loads_or_fails_naming_the_file(path)


@pytest.mark.slow
@settings(FUZZ, max_examples=100)
@given(hparams=plain, state=plain, net=plain, extra=st.dictionaries(st.text(max_size=8), plain, max_size=2))
def test_checkpoints_of_any_plain_data_load_or_fail_naming_the_file(trained_run, tmp_path, hparams, state, net, extra):
    """Whatever plain data a checkpoint holds where dae expects its settings and weights."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    variants = [
        {"state_dict": state, "hyper_parameters": hparams, **extra},
        {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "net": net}},
        {**ckpt, "hyper_parameters": hparams if isinstance(hparams, dict) else {"lr": hparams}},
        {**ckpt, "state_dict": state if isinstance(state, dict) else {"net.encoder.0.weight": state}},
    ]
    for number, content in enumerate(variants):
        path = tmp_path / f"variant{number}.ckpt"
        torch.save(content, path)
        assert_loads_or_fails_naming_the_file(path)

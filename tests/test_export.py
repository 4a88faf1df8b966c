"""``dae export``: ONNX and TorchScript files that match PyTorch for any batch size."""

import os
import sys

import numpy as np
import pytest
import torch

from dae.commands import main
from dae.commands.export import export_model
from dae.inference import load_model
from dae.nets import DnCNN


@pytest.mark.slow
def test_onnx_export_matches_pytorch_for_any_batch_size(trained_run, tmp_path, capsys):
    import onnxruntime

    out = tmp_path / "dae.onnx"
    assert main(["export", "--ckpt", str(trained_run), "--format", "onnx", "-o", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    net = load_model(trained_run).net
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch_size in (1, 7):
        batch = torch.rand(batch_size, 1, 28, 28)
        got = session.run(None, {"noisy": batch.numpy()})[0]
        np.testing.assert_allclose(got, net(batch).detach().numpy(), atol=1e-5)


def test_torchscript_export_matches_pytorch_without_dae_code(trained_run, tmp_path, capsys):
    out = tmp_path / "dae.pt"
    assert main(["export", "--ckpt", str(trained_run), "--format", "torchscript", "-o", str(out)]) == 0
    assert "max abs difference" in capsys.readouterr().out
    scripted = torch.jit.load(str(out))
    net = load_model(trained_run).net
    batch = torch.rand(9, 1, 28, 28)
    torch.testing.assert_close(scripted(batch), net(batch), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_fully_convolutional_net_exports_at_the_chosen_size(tmp_path, fmt):
    net = DnCNN(depth=4, width=8).eval()
    worst = export_model(net, fmt, tmp_path / f"dncnn.{fmt}", size=(40, 33))
    assert worst < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_noise_conditioned_net_exports_with_its_noise_level_input(conditioned_run, tmp_path, fmt, capsys):
    out = tmp_path / f"dae.{fmt}"
    assert main(["export", "--ckpt", str(conditioned_run), "--format", fmt, "--size", "32", "40", "-o", str(out)]) == 0
    assert "input (batch, 1, 32, 40), sigma (batch,)" in capsys.readouterr().out
    net = load_model(conditioned_run).net
    batch, sigma = torch.rand(3, 1, 32, 40), torch.tensor([0.0, 0.1, 0.2])
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"noisy": batch.numpy(), "sigma": sigma.numpy()})[0])
    else:
        got = torch.jit.load(str(out))(batch, sigma)
    torch.testing.assert_close(got, net(batch, sigma), atol=1e-5, rtol=0)
    assert not torch.allclose(got[1:2], net(batch[1:2], 0.2), atol=1e-5)  # each image's own level counts


def test_missing_onnx_packages_give_an_install_hint(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(trained_run), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2 and "pip install 'dae[export]'" in capsys.readouterr().err


def test_export_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "bad.ckpt").write_bytes(b"\x00" * 64)
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(tmp_path / "bad.ckpt"), "--format", "torchscript", "-o", str(tmp_path / "m.pt")])
    assert "bad.ckpt: cannot load this checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_a_failed_parity_check_keeps_the_previous_export(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "dae.pt"
    args = ["export", "--ckpt", str(trained_run), "--format", "torchscript", "-o", str(out)]
    assert main(args) == 0
    good = out.read_bytes()
    monkeypatch.setattr("dae.commands.export.PARITY_TOLERANCE", -1.0)  # no export passes the check
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "differs from PyTorch by up to" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["dae.pt"]  # no temporary file left beside it
    assert out.read_bytes() == good


def test_an_export_gets_the_permissions_of_any_new_file(trained_run, tmp_path):
    """Not only its owner may read it: the umask decides, as for a file that open() creates."""
    previous = os.umask(0o002)
    try:
        out = tmp_path / "dae.pt"
        assert main(["export", "--ckpt", str(trained_run), "--format", "torchscript", "-o", str(out)]) == 0
        (tmp_path / "plain").touch()
    finally:
        os.umask(previous)
    assert oct(out.stat().st_mode & 0o777) == oct((tmp_path / "plain").stat().st_mode & 0o777) == "0o664"


def test_export_leaves_the_callers_network_as_it_was(tmp_path):
    from dae.commands.export import export_model
    from dae.nets import DnCNN

    net = DnCNN(depth=3, width=4).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    export_model(net, "torchscript", tmp_path / "m.pt", size=(16, 16))
    assert net.training  # not switched to eval mode (nor moved off its device) behind the caller's back
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())

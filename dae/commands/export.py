"""``dae export``: the trained network as ONNX or TorchScript, checked against PyTorch before it is kept.

Both formats take float batches (N, C, H, W) in [0, 1] with any batch size N; H and W are fixed at export
(the net's ``input_size``, else ``--size``), since shape-dependent Python code (e.g. the U-Net's padding)
is frozen when the graph is captured. A noise-conditioned network takes a second input, ``sigma`` (N,): each
image's noise level, the std on the [0, 1] scale.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from dae.files import replaced_whole
from dae.inference.loading import CheckpointError, add_allow_class_option, load_network
from dae.inference.tiling import input_size
from dae.nets.noise_map import takes_noise_level

FORMATS = ("onnx", "torchscript")
PARITY_TOLERANCE = 1e-4
EXPORT_BATCH = 2  # the batch size the graph is captured with; parity is checked on other sizes
PARITY_BATCHES = (1, 5)
_ONNX_MISSING = ("ONNX export needs the onnx, onnxscript and onnxruntime packages: "
                 "pip install 'dae[export]' (or pip install onnx onnxscript onnxruntime)")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise RuntimeError(f"{_ONNX_MISSING} ({e})") from e


def input_names(net: nn.Module) -> list[str]:
    """The exported model's inputs: ``noisy``, and ``sigma`` for a noise-conditioned network."""
    return ["noisy", "sigma"] if takes_noise_level(net) else ["noisy"]


def example_inputs(net: nn.Module, batch_size: int, shape: tuple[int, int, int],
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs of ``net`` for a batch of ``batch_size`` images of ``shape``: images in [0, 1], and noise
    levels in [0, 0.2] for a noise-conditioned network."""
    images = torch.rand((batch_size, *shape), generator=generator)
    if not takes_noise_level(net):
        return (images,)
    return images, 0.2 * torch.rand(batch_size, generator=generator)


def export_onnx(net: nn.Module, example: tuple[torch.Tensor, ...], out: Path) -> None:
    """Write ``net`` as ONNX with a dynamic batch dimension named ``batch``."""
    _require_onnx()
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1 << 16)
    # The exporter prints and warns about its internal steps; a failure still raises with the details.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(net, example, out, input_names=input_names(net), output_names=["denoised"],
                          dynamic_shapes=tuple({0: batch} for _ in example), dynamo=True, external_data=False,
                          verbose=False)


def export_torchscript(net: nn.Module, example: tuple[torch.Tensor, ...], out: Path) -> None:
    """Write ``net`` as a traced TorchScript module (``torch.jit.load`` reads it back, no dae code needed)."""
    generator = torch.Generator().manual_seed(2)
    shape = tuple(example[0].shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice; tracing still works
        traced = torch.jit.trace(net, example, check_inputs=[example_inputs(net, b, shape, generator)
                                                             for b in PARITY_BATCHES])
        traced.save(str(out))


def run_exported(path: Path, fmt: str, inputs: tuple[torch.Tensor, ...], names: list[str]) -> torch.Tensor:
    """Run an exported file on ``inputs`` (named ``names``) with its own runtime (onnxruntime, or torch.jit)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(names, inputs)})[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu")(*inputs)


@torch.no_grad()
def parity(net: nn.Module, path: Path, fmt: str, shape: tuple[int, int, int], seed: int = 0) -> float:
    """Largest absolute difference between PyTorch and the exported file on random batches of several sizes."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    for batch_size in PARITY_BATCHES:
        inputs = example_inputs(net, batch_size, shape, generator)
        expected = net(*inputs)
        got = run_exported(path, fmt, inputs, input_names(net))
        if got.shape != expected.shape:
            raise RuntimeError(f"the exported model gave shape {tuple(got.shape)} for a batch of {batch_size}, "
                               f"PyTorch {tuple(expected.shape)}")
        worst = max(worst, (got - expected).abs().max().item())
    return worst


def export_shape(net: nn.Module, size: tuple[int, int] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one image of the export: the net's ``input_size``, else ``size``, else 28x28."""
    height, width = input_size(net) or size or (28, 28)
    return getattr(net, "in_channels", 1), height, width


def export_model(net: nn.Module, fmt: str, out: str | os.PathLike, size: tuple[int, int] | None = None) -> float:
    """Export a copy of ``net`` (on the CPU, eval mode; ``net`` itself stays where and as it is) to ``out`` and
    return the parity check's max abs difference.

    The export goes to a temporary file beside ``out`` and replaces ``out`` only once the check has passed.
    Raises ``RuntimeError`` when the export or the check fails (a difference above ``PARITY_TOLERANCE``), and
    leaves ``out`` as it was.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    net = copy.deepcopy(net).cpu().eval()
    shape = export_shape(net, size)
    example = example_inputs(net, EXPORT_BATCH, shape, torch.Generator().manual_seed(1))
    with replaced_whole(out) as exported:
        (export_onnx if fmt == "onnx" else export_torchscript)(net, example, exported)
        try:
            worst = parity(net, exported, fmt, shape)
            if worst > PARITY_TOLERANCE:
                raise RuntimeError(f"the exported model differs from PyTorch by up to {worst:.3g} "
                                   f"(tolerance {PARITY_TOLERANCE})")
        except RuntimeError as e:
            kept = "the previous file is kept" if Path(out).exists() else "nothing was written"
            raise RuntimeError(f"{out}: {e}; {kept}") from e
    return worst


def export_command(argv: Sequence[str]) -> int:
    """``dae export --ckpt RUN_OR_CKPT --format onnx|torchscript -o FILE``: export, then check parity."""
    parser = argparse.ArgumentParser(prog="dae export", description=export_command.__doc__)
    parser.add_argument("--ckpt", required=True, help="a run folder (uses its best checkpoint) or a .ckpt file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("-o", "--output", required=True, help="file to write, e.g. model.onnx or model.pt")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                        help="image size of a fully convolutional net's export (default 28 28); nets with a "
                             "fixed input size always use theirs")
    add_allow_class_option(parser)
    args = parser.parse_args(argv)
    try:
        net = load_network(args.ckpt, allow_classes=args.allow_class)
        fixed = input_size(net)
        if fixed and args.size and tuple(args.size) != fixed:
            parser.error(f"{type(net).__name__} only takes {fixed[0]}x{fixed[1]} images; drop --size")
        worst = export_model(net, args.format, args.output, tuple(args.size) if args.size else None)
    except (CheckpointError, RuntimeError) as e:
        parser.exit(2, f"dae export: error: {e}\n")
    shape = export_shape(net, tuple(args.size) if args.size else None)
    sigma = ", sigma (batch,)" if takes_noise_level(net) else ""
    print(f"wrote {args.output} ({args.format}, input (batch, {', '.join(map(str, shape))}){sigma} for any batch "
          f"size); parity with PyTorch: max abs difference {worst:.3g} over batches of {PARITY_BATCHES}")
    return 0

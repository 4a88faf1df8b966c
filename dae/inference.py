"""Using a trained model: checkpoint loading, and denoising images of any size and channel count.

Checkpoints are loaded here for everything outside Lightning's own resume. A checkpoint may come from someone else, so it is read with ``torch.load(weights_only=True)``: tensors and
plain data only, never pickled code. The module is rebuilt from the checkpoint's ``hyper_parameters``
(``net``/``noise`` as plain ``{class_path, init_args}`` data, as ``dae fit`` writes them) through
jsonargparse, which only accepts classes that fit ``DenoisingModule``'s type hints (``nn.Module``
subclasses), so a crafted ``class_path`` such as ``os.system`` is refused instead of called.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae.module import DenoisingModule

REQUIRED_KEYS = ("state_dict", "hyper_parameters")


class CheckpointError(ValueError):
    """A checkpoint file (or run folder) that cannot be used; the message names the file and the fix."""


def _best_from_last(last: Path, candidates: list[Path]) -> Path | None:
    """The best checkpoint that ModelCheckpoint recorded in ``last.ckpt``, if it is one of ``candidates``."""
    try:
        callbacks = load_checkpoint(last).get("callbacks", {})
    except CheckpointError:
        return None
    by_name = {p.name: p for p in candidates}
    for state in callbacks.values():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if best and Path(best).name in by_name:
            return by_name[Path(best).name]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or a run folder's best checkpoint.

    A run folder (``lightning_logs/version_N``, or its ``checkpoints/`` folder) resolves to
    ``checkpoints/best-*.ckpt``; when a run kept several, the one its ``last.ckpt`` records as best (else
    the newest). Without any ``best-*.ckpt`` it falls back to ``last.ckpt``.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run folder")
    if path.is_file():
        return path
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    best = sorted(folder.glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last = folder / "last.ckpt"
    if len(best) > 1 and last.is_file():
        return _best_from_last(last, best) or best[-1]
    if best:
        return best[-1]
    if last.is_file():
        return last
    raise CheckpointError(
        f"{path}: no checkpoint in this folder (looked for checkpoints/best-*.ckpt and checkpoints/last.ckpt); "
        "give a run folder such as lightning_logs/version_0 or a .ckpt file"
    )


def _load_failure(error: Exception) -> str:
    """What a failed ``torch.load(weights_only=True)`` means for the user, in one sentence."""
    code = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if code:
        return (f"it holds pickled code or objects ({code.group(1)}), which are never loaded from a file that "
                "may come from someone else (weights_only=True); use a .ckpt file written by dae fit")
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if "Weights only load failed" in first_line:
        reason = "unreadable pickle data"
    else:  # keep torch's first sentence, e.g. "PytorchStreamReader failed reading zip archive: ..."
        reason = first_line.split(". ")[0].rstrip(".") or f"the file ends too early ({type(error).__name__})"
    return f"{reason}. The file is corrupt, truncated or not a PyTorch checkpoint; use a .ckpt file written by dae fit"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a dae checkpoint file as plain data (``weights_only=True``), refusing anything else clearly."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; give a .ckpt file written by dae fit or a run folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling fails in many ways; all mean "this file cannot be used"
        raise CheckpointError(f"{path}: cannot load this checkpoint: {_load_failure(e)}") from e
    missing = [k for k in REQUIRED_KEYS if not (isinstance(ckpt, dict) and k in ckpt)]
    if missing:
        raise CheckpointError(f"{path}: not a dae checkpoint (no {' or '.join(missing)}); "
                              "use a .ckpt file written by dae fit")
    return ckpt


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DenoisingModule:
    """The trained ``DenoisingModule`` (network and noise model) from a ``.ckpt`` file or run folder.

    The module is in eval mode on ``map_location``. Raises ``CheckpointError`` naming the file when it is
    missing, corrupt, not a dae checkpoint, holds pickled code, or its weights do not fit its network.
    """
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location)
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (hyper_parameters is not a mapping)")
    from lightning.pytorch.cli import instantiate_module

    # Private keys such as Lightning's "_instantiator" name code to call: never trust them from a file.
    config = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    try:
        module = instantiate_module(DenoisingModule, config)
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise CheckpointError(f"{path}: its hyper_parameters do not describe a DenoisingModule: {e}") from e
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: its weights do not fit the network its hyper_parameters describe: "
                              f"{str(e).splitlines()[0]}") from e
    return module.to(map_location).eval()


def input_size(net: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a network takes, from its ``input_size`` attribute; None: fully convolutional.

    The rule is explicit on purpose: a net that only takes one size (the baseline ``ConvAutoencoder``: 28x28)
    declares ``input_size`` and gets overlapping tiles; every other net gets the whole image.
    """
    size = getattr(net, "input_size", None)
    return None if size is None else (int(size[0]), int(size[1]))


def tile_window(height: int, width: int) -> Tensor:
    """Blending weights of one tile: a smooth bump, largest in the middle, small but positive at the edge.

    Tile borders are where a network sees the least context; weighting them down and dividing by the summed
    weights makes overlapping tiles fade into each other instead of leaving seams.
    """
    ramps = [torch.sin(torch.pi * (torch.arange(n) + 0.5) / n) for n in (height, width)]
    return torch.outer(*ramps)


def _pad_to_grid(size: int, tile: int, stride: int) -> int:
    """Padding after the image so that tiles of ``tile`` pixels every ``stride`` pixels cover it exactly."""
    covered = max(size, tile)
    return covered + (-(covered - tile)) % stride - size


def denoise_tiled(net: nn.Module, images: Tensor, tile: tuple[int, int], batch_size: int = 512) -> Tensor:
    """Run ``net`` over overlapping tiles of ``images`` (N, C, H, W) and blend the results (any H, W).

    Tiles overlap by half; the image is padded (reflected) at the bottom and right to fill the tile grid
    and the result cropped back, so images smaller than one tile work too.
    """
    (th, tw), (_, channels, height, width) = tile, images.shape
    stride = (max(1, th // 2), max(1, tw // 2))
    pad_h, pad_w = _pad_to_grid(height, th, stride[0]), _pad_to_grid(width, tw, stride[1])
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # reflect needs pad < side
    padded = F.pad(images, (0, pad_w, 0, pad_h), mode=mode) if pad_h or pad_w else images
    grid = padded.shape[-2:]
    columns = F.unfold(padded, tile, stride=stride)  # (N, C*th*tw, L): one column per tile
    n_tiles = columns.shape[-1]
    tiles = columns.transpose(1, 2).reshape(-1, channels, th, tw)
    window = tile_window(th, tw).to(images)
    out = torch.cat([net(tiles[i : i + batch_size]) * window for i in range(0, len(tiles), batch_size)])
    out = out.reshape(len(images), n_tiles, -1).transpose(1, 2)
    weights = window.reshape(1, -1, 1).expand(1, th * tw, n_tiles)
    blended = F.fold(out, grid, tile, stride=stride) / F.fold(weights, grid, tile, stride=stride)
    return blended[..., :height, :width]


@torch.no_grad()
def denoise_image(net: nn.Module, image: Tensor, batch_size: int = 512, tile: int | None = None) -> Tensor:
    """Denoise one (C, H, W) image in [0, 1] of any size; returns a (C, H, W) float tensor on its device.

    Colour images through a 1-channel network go one channel at a time; a gray image through a colour
    network is repeated over its channels and the outputs averaged. Values are not clipped. ``tile`` runs a
    fully convolutional network over half-overlapping ``tile x tile`` tiles instead of the whole image:
    memory bounded by the tile size, for images too big for the device, at about 4 times the compute.
    """
    net_channels = getattr(net, "in_channels", image.shape[0])
    channels = image.shape[0]
    if channels == net_channels:
        batch = image[None]
    elif net_channels == 1:
        batch = image[:, None]  # each channel as its own gray image
    elif channels == 1:
        batch = image.expand(net_channels, -1, -1)[None]
    else:
        raise ValueError(f"the network takes {net_channels} channels; an image with {channels} cannot be mapped")
    size = input_size(net)
    if tile is not None:
        if size is not None:
            raise ValueError(f"the network takes {size[0]}x{size[1]} inputs and is tiled at that size; "
                             "a tile size is for fully convolutional networks")
        if tile < 1:
            raise ValueError(f"tile must be >= 1 pixel, got {tile}")
        size = (tile, tile)
    out = denoise_tiled(net, batch, size, batch_size) if size else net(batch)
    if out.shape != batch.shape:
        raise ValueError(
            f"the network turned a {tuple(batch.shape)} batch into {tuple(out.shape)}; a net that only takes "
            "one size must declare it as an input_size attribute so that images are tiled"
        )
    if channels == net_channels:
        return out[0]
    return out[:, 0] if net_channels == 1 else out[0].mean(0, keepdim=True)

"""Using a trained model: checkpoint loading, and denoising images of any size and channel count.

Checkpoints are loaded here for everything outside Lightning's own resume. A checkpoint may come from someone
else, so it is read with ``torch.load(weights_only=True)``: tensors and plain data only, never pickled code.
The module is rebuilt from the checkpoint's ``hyper_parameters`` (``net``/``noise``/``objective`` as plain
``{class_path, init_args}`` data, as ``dae fit`` writes them) through jsonargparse, and only from known
classes: dae's own networks, noise models and objectives (``dae.nets.*``, ``dae.noise.*``,
``dae.objectives.*``) and the classes the caller allows by name. Any other class name is refused before its
module is imported, so no import-time code of an installed package runs because a file said so.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dae.pretrained import builtin_checkpoint, is_builtin

if TYPE_CHECKING:  # imported where a checkpoint is loaded: denoising a tensor needs no Lightning
    from dae.module import DenoisingModule

REQUIRED_KEYS = ("state_dict", "hyper_parameters")
# Modules whose nn.Module classes any checkpoint may name; other classes only when the caller allows them.
KNOWN_MODULES = ("dae.nets", "dae.noise", "dae.objectives")
# What jsonargparse would take for a class and import: a dotted Python name such as ``mypkg.nets.MyNet``.
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class CheckpointError(ValueError):
    """A checkpoint file (or run folder) that cannot be used; the message names the file and the fix."""


def _best_from_last(last: Path, candidates: list[Path]) -> Path | None:
    """The best checkpoint that ModelCheckpoint recorded in ``last.ckpt``, if it is one of ``candidates``."""
    try:
        callbacks = load_checkpoint(last).get("callbacks")
    except CheckpointError:
        return None
    by_name = {p.name: p for p in candidates}
    for state in callbacks.values() if isinstance(callbacks, dict) else ():
        best = state.get("best_model_path") if isinstance(state, dict) else None
        if isinstance(best, str) and Path(best).name in by_name:
            return by_name[Path(best).name]
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, a run folder's best checkpoint, or a model shipped with dae (``builtin:NAME``,
    see ``dae.pretrained``).

    A run folder (``lightning_logs/version_N``, or its ``checkpoints/`` folder) resolves to
    ``checkpoints/best-*.ckpt``; when a run kept several, the one its ``last.ckpt`` records as best (else
    the newest). Without any ``best-*.ckpt`` it falls back to ``last.ckpt``.
    """
    if is_builtin(str(path)):
        try:
            return builtin_checkpoint(str(path))
        except ValueError as e:
            raise CheckpointError(str(e)) from e
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


def _class_names(value: Any) -> Iterator[str]:
    """Every class name in a plain-data config: ``class_path`` values and dotted strings, which jsonargparse
    would resolve (importing their module) wherever a class is expected."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _class_names(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _class_names(item)
    elif isinstance(value, str) and _DOTTED_NAME.fullmatch(value):
        yield value


def is_known_class(name: str, allow: Iterable[str] = ()) -> bool:
    """Whether a checkpoint may name ``name``: an nn.Module class of ``KNOWN_MODULES``, or one in ``allow``.

    Nothing outside dae is imported to find out; ``allow`` holds full names such as ``mypkg.nets.MyNet``.
    """
    if name in set(allow):
        return True
    module, _, attribute = name.rpartition(".")
    if module not in KNOWN_MODULES:
        return False
    obj = getattr(importlib.import_module(module), attribute, None)
    return isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == module


def check_known_classes(config: dict[str, Any], path: Path, allow: Iterable[str] = ()) -> None:
    """Refuse a checkpoint config that names a class other than dae's own and the ``allow``-ed ones."""
    allow = tuple(allow)
    for name in _class_names(config):
        if not is_known_class(name, allow):
            raise CheckpointError(
                f"{path}: its hyper_parameters name the class {name}, which is not one of dae's networks, noise "
                f"models or objectives ({', '.join(m + '.*' for m in KNOWN_MODULES)}), so it is not built; if you trust this "
                f"checkpoint and that code, allow it by name: --allow-class {name}"
            )


def add_allow_class_option(parser: argparse.ArgumentParser) -> None:
    """``--allow-class CLASS`` (repeatable) for the commands that load checkpoints; read as ``args.allow_class``."""
    parser.add_argument("--allow-class", action="append", default=[], metavar="CLASS",
                        help="also build this class (full name, e.g. mypkg.nets.MyNet) when a checkpoint names it; "
                        f"by default only {' and '.join(m + '.*' for m in KNOWN_MODULES)} are built (repeatable)")


def _read_checked(path: str | os.PathLike, map_location: str | torch.device,
                  allow_classes: Iterable[str]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The checkpoint file ``path`` resolves to, its contents, and its hyper-parameters without private keys, once
    every class they name is a known one."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location)
    hparams = ckpt["hyper_parameters"]
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (hyper_parameters is not a mapping)")
    if not isinstance(ckpt["state_dict"], dict):
        raise CheckpointError(f"{path}: not a dae checkpoint (state_dict is not a mapping of tensors)")
    # Private keys such as Lightning's "_instantiator" name code to call: never trust them from a file.
    config = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    check_known_classes(config, path, allow_classes)
    return path, ckpt, config


def _load_weights(path: Path, module: nn.Module, state_dict: dict[str, Any]) -> None:
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as e:  # wrong shapes, or values that are not tensors
        raise CheckpointError(f"{path}: its weights do not fit the network its hyper_parameters describe: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _not_built(path: Path, what: str, error: Exception) -> CheckpointError:
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return CheckpointError(f"{path}: its hyper_parameters do not describe {what}: {reason}")


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               allow_classes: Iterable[str] = ()) -> DenoisingModule:
    """The trained ``DenoisingModule`` (network and noise model) from a ``.ckpt`` file or run folder.

    The module is in eval mode on ``map_location``, never compiled (whatever the checkpoint says). Its classes
    must be dae's own (``dae.nets.*``, ``dae.noise.*``, ``dae.objectives.*``) or named in ``allow_classes`` (full names such as
    ``mypkg.nets.MyNet``). Raises ``CheckpointError`` naming the file when it is missing, corrupt, not a dae
    checkpoint, holds pickled code, names another class, or its weights do not fit its network.
    """
    path, ckpt, config = _read_checked(path, map_location, allow_classes)
    from lightning.pytorch.cli import instantiate_module

    from dae.module import DenoisingModule

    config["compile"] = False  # using a model needs no compiler, and its first call would take long
    try:
        module = instantiate_module(DenoisingModule, config)
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise _not_built(path, "a DenoisingModule", e) from e
    _load_weights(path, module, ckpt["state_dict"])
    return module.to(map_location).eval()


def load_network(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                 allow_classes: Iterable[str] = ()) -> nn.Module:
    """The trained network alone (``load_model(path).net``), in eval mode, built without importing Lightning:
    what denoising and export need, in a process that holds less memory. Same checks and errors as
    ``load_model``."""
    path, ckpt, config = _read_checked(path, map_location, allow_classes)
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=nn.Module)  # class_path + init_args, as LightningCLI builds it
    try:
        net = parser.instantiate_classes(parser.parse_object({"net": config.get("net")})).net
    except Exception as e:  # noqa: BLE001 - jsonargparse and constructors raise various types
        raise _not_built(path, "a network", e) from e
    prefix = "net."
    weights = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if str(k).startswith(prefix)}
    _load_weights(path, net, weights)
    if config.get("channels_last", True):  # the layout DenoisingModule trains and runs it in: the same numbers
        net.to(memory_format=torch.channels_last)
    return net.to(map_location).eval()


def input_size(net: nn.Module) -> tuple[int, int] | None:
    """The (height, width) a network takes, from its ``input_size`` attribute; None: fully convolutional.

    The rule is explicit on purpose: a net that only takes one size (the baseline ``ConvAutoencoder``: 28x28)
    declares ``input_size`` and gets overlapping tiles; every other net gets the whole image.
    """
    size = getattr(net, "input_size", None)
    return None if size is None else (int(size[0]), int(size[1]))


# Tile origins lie on multiples of this (where the stride allows), so that a network that pools (the U-Net halves
# the resolution up to 5 times) sees the same pooling grid in every tile as on the whole image.
TILE_ALIGN = 32
# Without a batch size, a forward pass takes as many tiles as hold about this many pixels (one tile of 256x256, 83
# of 28x28): the activations of a tile batch are most of what denoising a big image holds beyond the image itself.
PIXELS_PER_PASS = 1 << 16


def receptive_radius(net: nn.Module, like: Tensor) -> int:
    """How far (in pixels) an output pixel of ``net`` looks, as far as a batch shaped like ``like`` (1, C, H, W)
    shows: the farthest input pixel on which the centre output pixel's gradient is not zero."""
    probe = torch.rand(like.shape, dtype=like.dtype, device=like.device, requires_grad=True)
    centre = (like.shape[-2] // 2, like.shape[-1] // 2)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(net(probe)[0, :, centre[0], centre[1]].sum(), probe)
    reached = grad.abs().sum((0, 1)).nonzero()
    return int((reached - torch.tensor(centre, device=reached.device)).abs().max()) if len(reached) else 0


def tile_weights(starts: list[int], tile: int, ramp: int) -> list[Tensor]:
    """Blending weights of each tile's pixels along one side, for tiles of ``tile`` pixels at ``starts``.

    Where two tiles overlap, the first hands over to the second at the middle of the overlap: at once when
    ``ramp`` is 0, so that each pixel comes from the tile that sees the most context around it (at least half
    the overlap on each side), else linearly over ``ramp`` pixels, so that tiles fade into each other.
    """
    def later_share(x: Tensor, middle: float) -> Tensor:
        return ((x - middle) / ramp + 0.5).clamp(0, 1) if ramp > 0 else (x >= middle).float()

    weights = []
    for i, start in enumerate(starts):
        x = start + torch.arange(tile) + 0.5  # pixel centres
        weight = torch.ones(tile)
        if i > 0:
            weight *= later_share(x, (starts[i - 1] + tile + start) / 2)
        if i + 1 < len(starts):
            weight *= 1 - later_share(x, (start + tile + starts[i + 1]) / 2)
        weights.append(weight)
    return weights


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``size``: every ``stride`` pixels, the last one
    ending at most ``TILE_ALIGN - 1`` pixels past the image (padded) so that it keeps the alignment."""
    if size <= tile:
        return [0]
    align = math.gcd(stride, TILE_ALIGN)
    starts = list(range(0, size - tile, stride))
    return [*starts, -(-(size - tile) // align) * align]


def _tile(images: Tensor, top: int, left: int, th: int, tw: int) -> Tensor:
    """The tile at (top, left), padded (reflected) at the bottom and right where it reaches past the image."""
    tile = images[..., top : top + th, left : left + tw]
    pad_h, pad_w = th - tile.shape[-2], tw - tile.shape[-1]
    if not pad_h and not pad_w:
        return tile
    mode = "reflect" if pad_h < tile.shape[-2] and pad_w < tile.shape[-1] else "replicate"  # reflect: pad < side
    return F.pad(tile, (0, pad_w, 0, pad_h), mode=mode)


def denoise_tiled(net: nn.Module, images: Tensor, tile: tuple[int, int], margin: int,
                  batch_size: int | None = None, fixed_size: bool = True) -> Tensor:
    """Run ``net`` over overlapping tiles of ``images`` (N, C, H, W) and put the results together (any H, W).

    Tiles step by ``tile - 2 * margin``, so neighbours overlap by ``2 * margin`` pixels. ``fixed_size``: the
    network takes only ``tile`` (an image smaller than a tile is padded), and overlapping tiles fade into each
    other over the whole overlap. Otherwise (fully convolutional networks) a tile shrinks to an image side
    smaller than it, and each pixel comes from the tile in which it lies at least ``margin`` pixels from the
    edge: the same result as the whole image when ``margin`` covers the network's receptive field.

    Tiles go through the network ``batch_size`` at a time (default: about ``PIXELS_PER_PASS`` pixels) and go
    straight into the result (blended tiles: into running sums of outputs and weights), so memory holds the
    image, its result (and the weights) and one batch of tiles, never all tiles at once.
    """
    n_images, channels, height, width = images.shape
    th, tw = tile if fixed_size else (min(tile[0], height), min(tile[1], width))
    margin_h, margin_w = (min(margin, (side - 1) // 2) for side in (th, tw))
    rows = tile_starts(height, th, th - 2 * margin_h)
    cols = tile_starts(width, tw, tw - 2 * margin_w)
    row_weights = tile_weights(rows, th, 2 * margin_h if fixed_size else 0)
    col_weights = tile_weights(cols, tw, 2 * margin_w if fixed_size else 0)
    if batch_size is None:
        batch_size = max(1, PIXELS_PER_PASS // (th * tw))
    out = torch.zeros_like(images)
    # Blended tiles add up weighted; otherwise the weights are 0 or 1 and each pixel is copied from its one tile.
    weights = torch.zeros(height, width, dtype=images.dtype, device=images.device) if fixed_size else None
    places = [(n, i, j) for n in range(n_images) for i in range(len(rows)) for j in range(len(cols))]
    for first in range(0, len(places), batch_size):
        chunk = places[first : first + batch_size]
        batch = torch.stack([_tile(images[n], rows[i], cols[j], th, tw) for n, i, j in chunk])
        result = net(batch)
        if result.shape != batch.shape:
            raise ValueError(f"the network turned a {tuple(batch.shape)} batch of tiles into {tuple(result.shape)}")
        for (n, i, j), piece in zip(chunk, result):
            top, left = rows[i], cols[j]
            h, w = min(th, height - top), min(tw, width - left)
            if weights is None:
                r, c = _owned(row_weights[i][:h]), _owned(col_weights[j][:w])
                out[n, :, top + r.start : top + r.stop, left + c.start : left + c.stop] = piece[:, r, c]
                continue
            window = torch.outer(row_weights[i][:h], col_weights[j][:w]).to(images)
            out[n, :, top : top + h, left : left + w] += piece[:, :h, :w] * window
            if n == 0:  # every image has the same tiles
                weights[top : top + h, left : left + w] += window
    return out if weights is None else out.div_(weights)


def _owned(weight: Tensor) -> slice:
    """The pixels a tile hands on, where its 0-or-1 weight along one side is 1 (one run of them, maybe empty)."""
    ones = weight.nonzero()
    return slice(int(ones[0]), int(ones[-1]) + 1) if len(ones) else slice(0, 0)


@torch.no_grad()
def denoise_image(net: nn.Module, image: Tensor, batch_size: int | None = None, tile: int | None = None,
                  margin: int | None = None) -> Tensor:
    """Denoise one (C, H, W) image in [0, 1] of any size; returns a (C, H, W) float tensor on its device.

    Colour images through a 1-channel network go one channel at a time; a gray image through a colour
    network is repeated over its channels and the outputs averaged. Values are not clipped.

    A network with an ``input_size`` runs over half-overlapping tiles of that size, blended into each other.
    ``tile`` runs a fully convolutional network over ``tile x tile`` tiles instead of the whole image, so that
    memory is bounded by the tile: tiles overlap by ``2 * margin`` pixels and each pixel comes from the tile in
    which it lies at least ``margin`` pixels from the edge. The default margin is the network's receptive
    radius (then tiles give exactly the whole image's result), at most ``tile // 32``, so that the compute is
    about ``(tile / (tile - 2 * margin))**2``, at most 1.14 times the whole image's (plus the last tiles' padding).
    ``batch_size`` tiles go through the network at a time (default: about ``PIXELS_PER_PASS`` pixels).
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
    if tile is not None and size is not None:
        raise ValueError(f"the network takes {size[0]}x{size[1]} inputs and is tiled at that size; "
                         "a tile size is for fully convolutional networks")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if margin is not None and margin < 0:
        raise ValueError(f"margin must be >= 0 pixels, got {margin}")
    if size is not None:
        out = denoise_tiled(net, batch, size, min(size) // 4 if margin is None else margin, batch_size)
    elif tile is not None:
        if margin is None:
            # A reach of more than the cap needs no measuring: a probe twice the cap (kept on the pooling grid,
            # so that the centre pixel sees what a tile's would) takes a small part of a tile's memory and time
            # for its forward and backward pass.
            cap = tile // 32
            side = min(tile, -(-(2 * cap + 2) // (2 * TILE_ALIGN)) * 2 * TILE_ALIGN)
            probe = (1, batch.shape[1], min(side, batch.shape[2]), min(side, batch.shape[3]))
            margin = min(cap, receptive_radius(net, batch.new_empty(probe)))
        out = denoise_tiled(net, batch, (tile, tile), margin, batch_size, fixed_size=False)
    else:
        out = net(batch)
    if out.shape != batch.shape:
        raise ValueError(
            f"the network turned a {tuple(batch.shape)} batch into {tuple(out.shape)}; a net that only takes "
            "one size must declare it as an input_size attribute so that images are tiled"
        )
    if channels == net_channels:
        return out[0]
    return out[:, 0] if net_channels == 1 else out[0].mean(0, keepdim=True)

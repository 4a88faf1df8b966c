"""``dae evaluate``: trained checkpoints and classical denoisers scored on the same seeded noisy test images.

For each noise std the clean test images get one noisy copy (a seeded generator, so every run and every
method sees the very same noisy images); each method denoises it and is scored by per-image PSNR and SSIM
(torchmetrics, data range 1, outputs clipped to [0, 1]) and timed in images/s. The noisy input's row scores
the noisy images as the methods get them (unclipped unless ``--clip``). Classical baselines are tuned per std
on validation images with their own seeded noise, never on the test images.

``--images DIR`` follows the published protocol of gray-image denoising benchmarks (Set12, BSD68) instead: the
full-size clean images of a folder, unclipped Gaussian noise of each std, every output clipped to [0, 1] and
rounded to 8 bits before PSNR is taken per image and averaged over the set (the noisy input scored as the
methods get it, unclipped and unrounded), and the classical baselines given the true std without tuning.
Networks denoise each image as ``dae denoise`` does (``denoise_image``): one that takes a fixed input size over
overlapping tiles of it, a fully convolutional one whole.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor

from dae.baselines import BASELINES, Baseline, available_baselines
from dae.data.folders import ImageFolderDataModule, load_image_folder
from dae.data.memory import InMemoryDataModule
from dae.data.mnist import DATASETS, MNISTDataModule
from dae.inference.ensemble import self_ensemble
from dae.inference.loading import (
    add_allow_class_option,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
)
from dae.inference.noise_level import estimate_sigma
from dae.inference.pretrained import is_builtin
from dae.inference.tiling import denoise_image
from dae.module import DenoisingModule, image_metrics
from dae.moved import current_name
from dae.noise import GaussianNoise
from dae.pixels import to_unit_float
from dae.seeding import torch_generator

DEFAULT_STDS = (0.1, 0.25, 0.5)
DEFAULT_SIGMAS_255 = (15, 25, 50)  # with --images: the levels of the published gray-image tables


@dataclass(frozen=True)
class Row:
    """One method at one noise std."""

    method: str
    std: float
    psnr: float
    ssim: float
    images_per_s: float | None  # None for the noisy input, which costs nothing
    params: str = ""  # the tuned parameters of a classical method, or the checkpoint file of a network


def noisy_copy(clean: Tensor, std: float, seed: int, clip: bool) -> Tensor:
    """``clean`` with Gaussian noise from a generator seeded with ``seed``: the same images every call."""
    return GaussianNoise(std, clip=clip)(clean, generator=torch.Generator().manual_seed(seed))


def scores(images: Tensor, clean: Tensor, output: bool = True, chunk: int = 1000) -> tuple[float, float]:
    """Per-image mean PSNR (dB) and SSIM of ``images`` against ``clean``: a method's output clipped to [0, 1]
    first; with ``output`` False (the noisy input) the images as they are, as the methods get them."""
    metrics = image_metrics("")
    for d, c in zip(images.split(chunk), clean.split(chunk)):
        metrics.update(d.float().clamp(0, 1) if output else d.float(), c)
    result = metrics.compute()
    return float(result["psnr"]), float(result["ssim"])


# How a noise-conditioned network is told the noise level: the std the noise was drawn with (as the classical
# baselines get it), or the level estimated from each noisy image (as dae denoise does without --sigma).
SIGMA_SOURCES = ("true", "estimated")


class NetworkMethod:
    """A trained ``DenoisingModule`` run in batches without gradients; with ``ensemble``, the mean over the
    8 flips and rotations of each batch (``self_ensemble``). A noise-conditioned network is told the ``sigma``
    source's level: ``true`` or ``estimated`` (``SIGMA_SOURCES``); None for a blind one."""

    def __init__(self, name: str, module: DenoisingModule, source: str, batch_size: int = 256,
                 ensemble: bool = False, sigma: str | None = None) -> None:
        self.name, self.module, self.source, self.batch_size = name, module.eval(), source, batch_size
        self.ensemble, self.sigma = ensemble, sigma
        if sigma is not None:
            self.name += f", {sigma} sigma"
        if ensemble:
            self.name += ", self-ensemble x8"

    def prepare(self, std: float) -> str:
        return self.source

    def level(self, noisy: Tensor, std: float) -> Tensor | None:
        """The noise level (one per image of ``noisy``) a conditioned network is told; None for a blind one."""
        if self.sigma is None:
            return None
        levels = [std] * len(noisy) if self.sigma == "true" else [estimate_sigma(image) for image in noisy]
        return torch.tensor(levels, dtype=noisy.dtype, device=noisy.device)

    @torch.no_grad()
    def __call__(self, noisy: Tensor, std: float) -> Tensor:
        outputs = []
        for batch in noisy.split(self.batch_size):
            net = partial(self.module, sigma=self.level(batch, std))
            outputs.append(self_ensemble(net, batch) if self.ensemble else net(batch))
        return torch.cat(outputs)


class ImageNetworkMethod(NetworkMethod):
    """A trained network on full-size images of any size, run image by image as ``dae denoise`` runs it
    (``denoise_image``: a network that takes one input size goes over overlapping tiles of that size, at most
    ``batch_size`` tiles per forward pass)."""

    @torch.no_grad()
    def __call__(self, noisy: Tensor, std: float) -> Tensor:
        levels = self.level(noisy, std)
        return torch.stack([denoise_image(self.module.net, image, self.batch_size, ensemble=self.ensemble,
                                          sigma=None if levels is None else float(levels[i]))
                            for i, image in enumerate(noisy)])


class BaselineMethod:
    """A classical denoiser given the true std, its parameters tuned per std on validation images (or its
    ``untuned`` settings when ``clean_val`` is None)."""

    def __init__(self, baseline: Baseline, clean_val: Tensor | None, seed: int, clip: bool, channels: int = 1) -> None:
        self.name, self.baseline = baseline.name_for(channels), baseline
        self.clean_val, self.seed, self.clip = clean_val, seed, clip
        self.params: dict[float, dict[str, Any]] = {}

    def prepare(self, std: float) -> str:
        """Pick the grid point with the best validation PSNR at ``std``; returns it as text."""
        grid = self.baseline.grid
        best = self.baseline.untuned if self.clean_val is None else grid[0]
        if self.clean_val is not None and len(grid) > 1:
            noisy = noisy_copy(self.clean_val, std, self.seed, self.clip)
            psnrs = [scores(self.baseline.denoise(noisy, std, p), self.clean_val)[0] for p in grid]
            best = grid[max(range(len(grid)), key=psnrs.__getitem__)]
        self.params[std] = best
        return " ".join(f"{k}={v}" for k, v in best.items())

    def __call__(self, noisy: Tensor, std: float) -> Tensor:
        return self.baseline.denoise(noisy, std, self.params[std])


def evaluate(methods: Sequence[Any], clean: Tensor, stds: Iterable[float], seed: int, clip: bool) -> list[Row]:
    """Score the noisy input and every method at every std on one shared noisy copy of ``clean`` per std."""
    rows = []
    for std in stds:
        # A clone for each method: no method can alter what the next one sees.
        rows += _rows_at(std, methods, noisy_copy(clean, std, seed, clip), clean, scores,
                         lambda method, noisy: method(noisy.clone(), std))
    return rows


def _rows_at(std: float, methods: Sequence[Any], noisy: Any, clean: Any,
             score: Callable[[Any, Any, bool], tuple[float, float]], run: Callable[[Any, Any], Any]) -> list[Row]:
    """The noisy input's row and each method's at ``std``: ``run(method, noisy)`` timed (after the method's
    ``prepare``), and ``score(images, clean, output)`` giving PSNR and SSIM, ``output`` False for the noisy
    input (scored as the methods get it) and True for a method's output."""
    rows = [Row("noisy input", std, *score(noisy, clean, False), images_per_s=None)]
    for method in methods:
        params = method.prepare(std)
        start = time.perf_counter()
        denoised = run(method, noisy)
        seconds = time.perf_counter() - start
        rows.append(Row(method.name, std, *score(denoised, clean, True), len(clean) / seconds, params))
    return rows


def to_8_bits(images: Tensor) -> Tensor:
    """``images`` clipped to [0, 1] and rounded to the nearest of 256 levels, as a saved 8-bit image would be."""
    return images.clamp(0, 1).mul(255).round().div(255)


def evaluate_images(methods: Sequence[Any], images: Sequence[Tensor], stds: Iterable[float], seed: int) -> list[Row]:
    """Score the noisy input and every method at every std on full-size (C, H, W) images, the published way.

    Image ``i`` gets the noise ``std * z_i`` at every std, ``z_i`` a standard normal draw keyed by (seed, i),
    unclipped; every method denoises the same noisy image, and its output is rounded to 8 bits (``to_8_bits``)
    before it is scored (the noisy input's row is not: it scores what the methods get). PSNR and SSIM are taken
    per image and averaged over the images.
    """
    unit_noise = [torch.randn(image.shape, generator=torch_generator(seed, i)) for i, image in enumerate(images)]
    rows = []
    for std in stds:
        noisy = [image + std * z for image, z in zip(images, unit_noise)]
        rows += _rows_at(std, methods, noisy, images, _image_scores,
                         lambda method, noisy: [method(x[None].clone(), std)[0] for x in noisy])
    return rows


def _image_scores(images: Sequence[Tensor], clean: Sequence[Tensor], output: bool) -> tuple[float, float]:
    """Mean per-image PSNR (dB) and SSIM of images of any sizes: a method's output rounded to 8 bits first, the
    noisy input (``output`` False) as it is."""
    metrics = image_metrics("")
    for d, c in zip(images, clean):
        metrics.update((to_8_bits(d.float()) if output else d.float())[None], c[None])
    result = metrics.compute()
    return float(result["psnr"]), float(result["ssim"])


def markdown_table(rows: Sequence[Row], scale: float = 1.0) -> str:
    """One line per method; PSNR / SSIM per std, and images/s averaged over the stds. ``scale`` 255 labels the
    stds on the 0..255 scale (``sigma 25``) instead of [0, 1] (``std 0.1``)."""
    stds = list(dict.fromkeys(r.std for r in rows))
    methods = list(dict.fromkeys(r.method for r in rows))
    cell = {(r.method, r.std): r for r in rows}
    label = "sigma" if scale == 255 else "std"
    header = ["method", *(f"{label} {s * scale:.4g}: PSNR / SSIM" for s in stds), "images/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        found = [cell[method, s] for s in stds if (method, s) in cell]
        speeds = [r.images_per_s for r in found if r.images_per_s is not None]
        mean_speed = sum(speeds) / len(speeds) if speeds else None
        # Whole numbers for the fast ones; two significant digits for slow methods on big images (0.21).
        speed = "-" if mean_speed is None else f"{mean_speed:,.0f}" if mean_speed >= 10 else f"{mean_speed:.2g}"
        values = [f"{cell[method, s].psnr:.2f} / {cell[method, s].ssim:.3f}" if (method, s) in cell else "-"
                  for s in stds]
        lines.append("| " + " | ".join([method, *values, speed]) + " |")
    return "\n".join(lines)


def write_results(rows: Sequence[Row], settings: dict[str, Any], prefix: Path) -> tuple[Path, Path]:
    """``prefix.csv`` (one line per method and std) and ``prefix.json`` (settings and the same rows)."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = prefix.with_name(prefix.name + ".csv"), prefix.with_name(prefix.name + ".json")
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    json_path.write_text(json.dumps({"settings": settings, "results": [asdict(r) for r in rows]}, indent=2) + "\n")
    return csv_path, json_path


def _network_methods(paths: Sequence[str], batch_size: int, allow_classes: Sequence[str] = (),
                     method_class: type[NetworkMethod] = NetworkMethod,
                     ensemble: bool = False) -> tuple[list[NetworkMethod], dict[str, Any]]:
    """A ``method_class`` per checkpoint (named after its network and noise; a noise-conditioned network's twice,
    told the true and the estimated noise level), with ``ensemble`` each followed by its self-ensemble, and the
    first one's data settings (with ``_class_path``, the data module class it was trained with)."""
    methods, data_hparams = [], {}
    for path in paths:
        file = resolve_checkpoint(path)
        module = load_model(file, allow_classes=allow_classes)
        if not data_hparams:
            data_hparams = dict(load_checkpoint(file).get("datamodule_hyper_parameters") or {})
        name = f"{type(module.net).__name__}, {module.noise!r}"
        if module.loss != "mse":  # two runs that differ only in their loss stay apart in the table
            name += f", {module.loss} loss"
        if not module.objective.supervised:  # and so do runs that differ only in their objective
            name += f", {module.objective!r}"
        methods.append(method_class(name, module, str(file), batch_size))
    names = [m.name for m in methods]
    for number, (path, method) in enumerate(zip(paths, methods), 1):
        if names.count(method.name) > 1:  # two runs of one setup: the CSV's params column names each file
            named = is_builtin(path) and paths.count(path) == 1  # a shipped model by its name, else by position
            method.name += f" [{path}]" if named else f" [checkpoint {number}]"
    ensembles = (False, True) if ensemble else (False,)
    return [method_class(plain.name, plain.module, plain.source, batch_size, ensembled, sigma)
            for plain in methods
            for sigma in (SIGMA_SOURCES if plain.module.conditioned else (None,))
            for ensembled in ensembles], data_hparams


# The data modules a checkpoint may name, by class path; a lookup, not an import: checkpoints may be anyone's.
DATA_MODULES: dict[str, type[InMemoryDataModule]] = {
    "dae.data.MNISTDataModule": MNISTDataModule,
    "dae.data.ImageFolderDataModule": ImageFolderDataModule,
}


def data_module(hparams: dict[str, Any], dataset: str | None = None, data_dir: str | None = None) -> InMemoryDataModule:
    """The data module a checkpoint was trained with (its ``datamodule_hyper_parameters``), its files read from
    ``data_dir`` if given; ``dataset`` picks another MNIST-format set (MNIST-format checkpoints only)."""
    class_path = current_name(hparams.get("_class_path", "dae.data.MNISTDataModule"))
    cls = DATA_MODULES.get(class_path)
    if cls is None:
        raise ValueError(f"the checkpoint's data module {class_path} is not one dae evaluate knows: "
                         f"{', '.join(DATA_MODULES)}")
    kwargs = {k: v for k, v in hparams.items() if not str(k).startswith("_")}
    if data_dir is not None:
        kwargs["data_dir"] = data_dir
    if cls is MNISTDataModule:
        kwargs.update(download=False, **({"dataset": dataset} if dataset is not None else {}))
    elif dataset is not None:
        raise ValueError(f"--dataset {dataset}: the checkpoint was trained on an image folder "
                         f"({kwargs.get('data_dir')}); give --data-dir to evaluate on another folder")
    return cls(**kwargs)


def describe(data: InMemoryDataModule) -> tuple[str, str]:
    """The data set's name and folder, for the table's heading and the settings."""
    if isinstance(data, MNISTDataModule):
        return data.dataset, str(data.root)
    return "image folder", str(data.data_dir)


def _images(data: InMemoryDataModule, split: str, limit: int | None) -> Tensor:
    data.setup("fit" if split == "val" else "test")
    images = (data.val_set if split == "val" else data.test_set).images
    return to_unit_float(images[:limit] if limit else images)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dae evaluate", description=evaluate_command.__doc__)
    parser.add_argument("checkpoints", nargs="*", help=".ckpt files or run folders (their best checkpoint)")
    parser.add_argument("--images", metavar="DIR",
                        help="score on the full-size clean images of this folder (PNG/JPEG/TIFF/BMP, recursive) by "
                        "the published protocol of Set12 and BSD68: unclipped noise, outputs rounded to 8 bits, PSNR "
                        "per image averaged over the set, classical baselines given the true std untuned")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--std", type=float, nargs="+",
                        help=f"Gaussian noise stds on the [0, 1] scale (default: {' '.join(map(str, DEFAULT_STDS))})")
    levels.add_argument("--sigma255", type=float, nargs="+", metavar="SIGMA",
                        help="Gaussian noise stds on the 0..255 scale, as published tables give them (default with "
                        f"--images: {' '.join(map(str, DEFAULT_SIGMAS_255))})")
    parser.add_argument("--channels", type=int, choices=(1, 3),
                        help="with --images: score the images in gray (1) or colour (3; noise drawn per channel, PSNR "
                        "over all three, BM3D as CBM3D); default: the channels the checkpoints take, else gray")
    parser.add_argument("--limit", type=_positive(int), help="evaluate on the first N test images only")
    parser.add_argument("--tune-limit", type=_positive(int), default=100,
                        help="validation images for tuning the classical baselines (default: %(default)s)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), metavar="NAME",
                        help=f"classical baselines among {', '.join(BASELINES)} (default: all; give none to skip)")
    parser.add_argument("--dataset", choices=list(DATASETS), help="default: the first checkpoint's data set")
    parser.add_argument("--data-dir", help="folder of the IDX files or images (default: the first checkpoint's)")
    parser.add_argument("--clip", action="store_true",
                        help="clip the noisy images to [0, 1], as stored images are (default: unclipped Gaussian "
                        "noise, as in the baseline's training and the denoising literature)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test noise (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive(int), default=256,
                        help="images per forward pass of a network; with --images, tiles per pass of a network that "
                        "takes a fixed input size (default: %(default)s)")
    parser.add_argument("--ensemble", action="store_true",
                        help="also score each network as a self-ensemble (the mean over the 8 flips and rotations of "
                        "each image, 8 times the compute), in a row of its own")
    add_allow_class_option(parser)
    parser.add_argument("-o", "--output", default="evaluation",
                        help="writes OUTPUT.csv and OUTPUT.json (default: %(default)s)")
    return parser


def evaluate_command(argv: Sequence[str]) -> int:
    """``dae evaluate [CKPT ...]``: PSNR/SSIM and speed of checkpoints and classical baselines on the test split,
    or (``--images DIR``) on a folder of full-size images by the published protocol."""
    parser = _parser()
    args = parser.parse_intermixed_args(argv)  # checkpoints may also follow the options
    if args.sigma255 is not None:
        stds = [s / 255 for s in args.sigma255]
    elif args.std is not None:
        stds = args.std
    else:
        stds = [s / 255 for s in DEFAULT_SIGMAS_255] if args.images else list(DEFAULT_STDS)
    if args.std is not None and any(not 0 <= s <= 1 for s in args.std):
        parser.error(f"--std values must lie in [0, 1] (the image scale), got {args.std}")
    if args.sigma255 is not None and any(not 0 <= s <= 255 for s in args.sigma255):
        parser.error(f"--sigma255 values must lie in [0, 255] (the 8-bit scale), got {args.sigma255}")
    if args.images is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("dataset", "data_dir", "limit", "clip")
                 if getattr(args, name) not in (None, False)]
        if given:
            parser.error(f"--images scores every image of a folder with unclipped noise; {', '.join(given)} "
                         "applies to a data set's test split")
        return _evaluate_images_command(parser, args, stds)
    if args.channels is not None:
        parser.error("--channels applies to --images; a data set's test split has the channels it was trained on")
    if not args.checkpoints and args.dataset is None:
        parser.error("give at least one checkpoint, or --dataset (or --images DIR) to evaluate the baselines alone")
    try:
        networks, data_hparams = _network_methods(args.checkpoints, args.batch_size, args.allow_class,
                                                  ensemble=args.ensemble)
        baselines, notices = available_baselines(args.baselines)
        data = data_module(data_hparams, args.dataset, args.data_dir)
        clean = _images(data, "test", args.limit)
        clean_val = _images(data, "val", args.tune_limit) if baselines else clean[:0]
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"dae evaluate: error: {e}\n")
    _print_notices(notices)
    methods = [*networks, *(BaselineMethod(b, clean_val, args.seed + 1, args.clip, clean.shape[1]) for b in baselines)]
    rows = evaluate(methods, clean, stds, args.seed, args.clip)
    dataset, data_dir = describe(data)
    settings = {
        "dataset": dataset, "data_dir": data_dir, "split": "test", "images": len(clean),
        "stds": stds, "clip": args.clip, "seed": args.seed, "tune_images": len(clean_val),
    }
    heading = f"{dataset} test split, {len(clean)} images, Gaussian noise {'clipped to [0, 1]' if args.clip else 'unclipped'}"
    return _report(rows, settings, heading, Path(args.output))


def _print_notices(notices: Sequence[str]) -> None:
    for notice in notices:
        print(f"notice: {notice}")


def _report(rows: Sequence[Row], settings: dict[str, Any], heading: str, output: Path, scale: float = 1.0) -> int:
    """Print the heading and the table, write the CSV and JSON (settings with the hardware added); exit code 0."""
    settings = {**settings, "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, "
                                        f"torch threads {torch.get_num_threads()}"}
    print(f"{heading}\n")
    print(markdown_table(rows, scale))
    for path in write_results(rows, settings, output):
        print(f"wrote {path}")
    return 0


def image_channels(networks: Sequence[NetworkMethod]) -> int:
    """The channels the images are scored in: those the networks take (1, gray, without any)."""
    channels = {getattr(m.module.net, "in_channels", 1) for m in networks} or {1}
    if len(channels) > 1:
        raise ValueError("the checkpoints take different numbers of channels: give --channels 1 or 3 to score them "
                         "on gray or colour images (a gray network denoises colour images one channel at a time)")
    return channels.pop()


def _evaluate_images_command(parser: argparse.ArgumentParser, args: argparse.Namespace, stds: list[float]) -> int:
    """``dae evaluate [CKPT ...] --images DIR``: the published protocol on a folder of full-size clean images."""
    if not args.checkpoints and not args.baselines:
        parser.error("give at least one checkpoint or baseline to score on --images")
    try:
        networks, _ = _network_methods(args.checkpoints, args.batch_size, args.allow_class, ImageNetworkMethod,
                                       args.ensemble)
        channels = args.channels or image_channels(networks)
        baselines, notices = available_baselines(args.baselines)
        images = [to_unit_float(image) for image in load_image_folder(Path(args.images), channels, 1).values()]
    except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError
        parser.exit(2, f"dae evaluate: error: {e}\n")
    _print_notices(notices)
    methods = [*networks, *(BaselineMethod(b, None, args.seed, clip=False, channels=channels) for b in baselines)]
    rows = evaluate_images(methods, images, stds, args.seed)
    settings = {
        "images_dir": str(args.images), "images": len(images), "channels": channels, "stds": stds,
        "sigma255": [s * 255 for s in stds],
        "clip": False, "outputs": "clipped to [0, 1] and rounded to 8 bits", "seed": args.seed,
        "baselines": "untuned, given the true std",
    }
    kind = "colour" if channels == 3 else "gray"
    heading = (f"{args.images}: {len(images)} full-size {kind} images, unclipped Gaussian noise, outputs rounded to "
               "8 bits")
    return _report(rows, settings, heading, Path(args.output), scale=255)

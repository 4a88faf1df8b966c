"""The LightningModule: noisy input in, denoised image out; the objective says what is minimised; Adam."""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from dae.nets import ConvAutoencoder
from dae.nets.noise_map import takes_noise_level
from dae.noise import GaussianNoise
from dae.objectives import Objective, Supervised
from dae.pixels import to_unit_float
from dae.seeding import torch_generator

STAGES = ("val", "test")
# Each stage draws its noise from a stream of its own, so that no training step replays a validation batch's
# noise and prediction does not replay validation's.
NOISE_STREAMS = {"train": 0, "val": 1, "test": 2, "predict": 3}
# The splits each Trainer stage reads.
STAGE_SPLITS = {"fit": {"train", "val"}, "validate": {"val"}, "test": {"test"}, "predict": {"test"}}
# The "psnr" loss floors each image's MSE here (a 60 dB cap), so that a (near) noise-free training image, which
# blind training draws, cannot dominate a batch with a huge 1/MSE gradient.
PSNR_LOSS_MSE_FLOOR = 1e-6


def image_metrics(prefix: str) -> MetricCollection:
    """PSNR and SSIM (data range 1) of denoised vs clean batches, keys prefixed with ``prefix``."""
    # Per-image PSNR (dim over C, H, W) averaged over images, as the literature reports it.
    return MetricCollection(
        {
            "psnr": PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        },
        prefix=prefix,
    )


class DenoisingModule(L.LightningModule):
    """Trains ``net`` to undo ``noise`` with Adam: ``net(noise(clean)) ~ clean`` under MSE, or under a
    self-supervised ``objective`` from noisy observations alone.

    Args:
        net: the denoising network (default: the baseline ``ConvAutoencoder``). A noise-conditioned one (``noise_map``
            true) is called as ``net(noisy, sigma)`` with the std the noise model drew for each image.
        noise: the noise model (default: the baseline's ``GaussianNoise(std=0.5)``). Data that serves noisy
            observations (``MNISTDataModule(fixed_noise=True)`` noised once with it; a folder of noisy photos not
            at all) gets no noise added in the splits it serves noisy.
        objective: what training minimises (``dae.objectives``): ``Supervised`` (the default) against the clean
            images (with ``fixed_noise``, on the same fixed noisy inputs as the self-supervised objectives);
            ``Noise2Noise``, ``Noise2Self``, ``Neighbor2Neighbor`` or ``R2R`` from noisy observations only.
            Validation and test with clean images log the MSE to them as ``val/loss``; without (noisy photos)
            the objective's own loss.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        loss: ``mse`` (the baseline) minimises the batch's mean squared error. ``psnr`` minimises minus the mean
            per-image PSNR (dB), the number ``dae evaluate`` and the literature report: each image's MSE gradient
            is divided by its own MSE, so clean-ish images and low-noise images (in blind training, where the
            std varies per image) count as much as hard ones instead of being drowned by them. ``train/loss``,
            ``val/loss`` and ``test/loss`` are the MSE either way, so runs compare.
        lr_schedule: ``constant`` keeps ``lr`` (the baseline); ``cosine`` lowers it step by step along half a cosine,
            from ``lr`` at the first step to 0 at the run's last (``trainer.max_epochs`` or ``max_steps``). The
            lower rate at the end fits the weights closer; measured in README.md's results.
        eval_noise_seed: seed of the validation, test and prediction noise (each stage draws from a stream of
            its own), so that their numbers compare across runs.
        channels_last: keep the network's weights and the image batches in channels-last memory layout,
            which the CPU (oneDNN) and GPU (cuDNN) convolution kernels run faster (measured in docs/benchmarks.md).
        fused_adam: update all parameters with Adam's fused kernel (one call per step instead of a loop over
            parameters); the same update up to rounding.
        compile: compile the network with ``torch.compile`` (the first steps are slow while it compiles; the
            checkpoint keys stay the same, so compiled and plain runs share checkpoints).
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        noise: nn.Module | None = None,
        objective: Objective | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        loss: Literal["mse", "psnr"] = "mse",
        lr_schedule: Literal["constant", "cosine"] = "constant",
        eval_noise_seed: int = 1234,
        channels_last: bool = True,
        fused_adam: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if loss not in ("mse", "psnr"):
            raise ValueError(f"loss must be 'mse' or 'psnr', got {loss!r}")
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")
        objective = objective if objective is not None else Supervised()
        if loss == "psnr" and not objective.supervised:
            raise ValueError(f"loss 'psnr' scores against clean images, which {type(objective).__name__} has not: "
                             "use loss 'mse'")
        with warnings.catch_warnings():
            # Under LightningCLI the hparams hold net/noise as plain {class_path, init_args} data, which is what
            # makes checkpoints self-describing; module objects (plain Python use) are dropped just below.
            warnings.filterwarnings("ignore", message=".*is an instance of `nn.Module`")
            self.save_hyperparameters()
        for key in [k for k, v in self.hparams.items() if isinstance(v, nn.Module)]:
            del self.hparams[key]
        self.net = net if net is not None else ConvAutoencoder()
        self.noise = noise if noise is not None else GaussianNoise()
        self.objective = objective
        self.noisy_splits: frozenset[str] = frozenset()  # splits the data serves noisy, without clean images
        self.clean_targets = False  # whether noisy training batches end with the clean originals (Supervised only)
        self.lr = lr
        self.weight_decay = weight_decay
        self.loss = loss
        self.lr_schedule = lr_schedule
        self.eval_noise_seed = eval_noise_seed
        self.channels_last = channels_last
        self.fused_adam = fused_adam
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()  # compiles the call in place: parameter names (and checkpoints) do not change
        self.train_noise_seed: int | None = None  # set on the first training step, restored from checkpoints
        # No NaN check: it would cost a host sync every step, and a NaN loss should show in the epoch mean.
        # Persistent: a run resumed mid-epoch still reports the mean over the whole epoch.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.train_loss.persistent(True)
        self.eval_metrics = nn.ModuleDict({s: image_metrics(f"{s}/") for s in STAGES})
        self.noisy_psnr = nn.ModuleDict(
            {s: PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)) for s in STAGES}
        )

    def setup(self, stage: str) -> None:
        """Refuse data that the network or the objective cannot take, before any step runs; data that noises its
        training images once (``observe``) does it now, with this module's noise model."""
        datamodule = self.trainer.datamodule
        data_channels = getattr(datamodule, "channels", None)
        net_channels = getattr(self.net, "in_channels", None)
        if data_channels is not None and net_channels is not None and data_channels != net_channels:
            raise ValueError(
                f"the data has {data_channels} channels but the network takes {net_channels}: set "
                f"model.net.init_args.in_channels to {data_channels} (the dae command does this by itself)"
            )
        self.noisy_splits = frozenset(getattr(datamodule, "noisy_splits", ()))
        self._check_conditioning()
        noise = None if {"train", "val", "test"} <= self.noisy_splits else self.noise  # noisy photos: unknown
        self.objective.check(self.net, getattr(datamodule, "patch_size", None), noise)
        name = type(self.objective).__name__
        if stage == "fit" and hasattr(datamodule, "observe"):
            datamodule.observe(self.noise, self.objective.observations, keep_clean=self.objective.supervised)
        self.clean_targets = bool(getattr(datamodule, "clean_targets", False))
        unlabelled = (self.noisy_splits - ({"train"} if self.clean_targets else set())) & STAGE_SPLITS[stage]
        if self.objective.supervised and unlabelled:
            raise ValueError(
                f"the Supervised objective needs clean images, but the data serves only noisy observations for "
                f"{', '.join(sorted(unlabelled))}: choose a self-supervised model.objective from "
                "dae.objectives (Noise2Noise, Noise2Self, Neighbor2Neighbor, R2R)"
            )
        served = getattr(datamodule, "observations", 1)
        if "train" in self.noisy_splits and served != self.objective.observations:
            fix = ("give data.pair_dirs, two sub-folders that hold two noisy shots of each picture under one name"
                   if self.objective.observations == 2
                   else "use dae.objectives.Noise2Noise, or leave out data.pair_dirs")
            raise ValueError(f"{name} trains on {self.objective.observations} noisy observation(s) of each image, "
                             f"but the data serves {served}: {fix}")

    @property
    def conditioned(self) -> bool:
        """Whether the network is noise-conditioned: told each image's noise level (``noise_map``)."""
        return takes_noise_level(self.net)

    def _check_conditioning(self) -> None:
        """A noise-conditioned network must be told the level of the noise it gets: the noise model must say it
        (``GaussianNoise.draw``), the data must be clean, and the objective supervised."""
        if not self.conditioned:
            return
        net = type(self.net).__name__
        if not hasattr(self.noise, "draw"):
            raise ValueError(f"the noise-conditioned {net} is told the std of the noise it gets, which "
                             f"{type(self.noise).__name__} does not report: use dae.noise.GaussianNoise, or set "
                             "model.net.init_args.noise_map to false")
        if self.noisy_splits or not self.objective.supervised:
            raise ValueError(f"the noise-conditioned {net} is told the std of the noise it gets, known only for noise "
                             "this module adds to clean images: train it with the Supervised objective on clean "
                             "data, or set model.net.init_args.noise_map to false")

    def _noised(self, clean: Tensor, generator: torch.Generator) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """A noisy copy of ``clean`` and the network as the objective calls it: a noise-conditioned network is
        told each image's noise level."""
        if not self.conditioned:
            return self.noise(clean, generator=generator), self.net
        noisy, sigma = self.noise.draw(clean, generator=generator)
        return noisy, functools.partial(self.net, sigma=sigma)

    def on_fit_start(self) -> None:
        trainer = self.trainer
        if trainer.max_steps > 0 and trainer.estimated_stepping_batches < trainer.max_steps:
            rank_zero_warn(
                f"trainer.max_steps {trainer.max_steps} will not be reached: trainer.max_epochs "
                f"{trainer.max_epochs} ends the run after {int(trainer.estimated_stepping_batches)} optimizer steps "
                "(and a cosine schedule follows that); set trainer.max_epochs -1 to let max_steps end it"
            )

    def forward(self, noisy: Tensor, sigma: Tensor | float | None = None) -> Tensor:
        """The denoised batch; ``sigma``, the noise's std on the [0, 1] scale, for a noise-conditioned network."""
        return self.net(noisy, sigma) if self.conditioned else self.net(noisy)

    def _noise_generator(self, stage: str, seed: int, index: int, dataloader_idx: int = 0) -> torch.Generator:
        # Hashed from (seed, stage, rank, loader, index): noise that depends on nothing else, and that no other
        # stage, rank, seed or index shares (see dae.seeding).
        key = (seed, NOISE_STREAMS[stage], self.global_rank, dataloader_idx, index)
        return torch_generator(*key, device=self.device)

    def _train_generator(self) -> torch.Generator:
        # Keyed by the training batch counter (micro-batches, across epochs): fresh noise for every batch, also
        # for each batch of a gradient-accumulation window, and a run resumed from a checkpoint (which holds the
        # counter) draws exactly the noise the uninterrupted run would have drawn. The training seed follows
        # seed_everything and is checkpointed.
        if self.train_noise_seed is None:
            self.train_noise_seed = torch.initial_seed()
        return self._noise_generator("train", self.train_noise_seed, self.trainer.fit_loop.epoch_loop.total_batch_idx)

    def _clean(self, batch: Tensor) -> Tensor:
        """A batch of images as floats (uint8 scaled to [0, 1]), in the network's memory layout."""
        clean = to_unit_float(batch)
        return clean.contiguous(memory_format=torch.channels_last) if self.channels_last else clean

    @staticmethod
    def _psnr_loss(denoised: Tensor, clean: Tensor) -> Tensor:
        """Minus the mean per-image PSNR in dB (data range 1), each image's MSE floored at 60 dB."""
        per_image_mse = (denoised.float() - clean).pow(2).flatten(1).mean(1)
        return 10 * torch.log10(per_image_mse.clamp(min=PSNR_LOSS_MSE_FLOOR)).mean()

    def _views(self, batch: Tensor) -> list[Tensor]:
        """The views in a batch the data serves noisy: (B, C, H, W), or (B, K, C, H, W) for K of them."""
        return [self._clean(view) for view in (batch.unbind(1) if batch.ndim == 5 else (batch,))]

    def _shared_step(self, batch: Tensor, batch_idx: int, stage: str) -> dict[str, Tensor]:
        if stage == "train":
            generator = self._train_generator()
        else:  # seeded per batch, so every epoch and every run with the same batches sees the same noisy images
            generator = self._noise_generator(stage, self.eval_noise_seed, batch_idx)
        net: Callable[[Tensor], Tensor] = self.net
        if stage in self.noisy_splits:  # the data's own noisy observations
            clean, views = None, self._views(batch)
            if stage == "train" and self.clean_targets:  # the clean originals, kept only for the Supervised objective
                *views, clean = views
        else:
            clean = self._clean(batch)
            draws = self.objective.observations if stage == "train" else 1
            views = []
            for _ in range(draws):  # more than one only for objectives that refuse conditioned networks
                noisy, net = self._noised(clean, generator)
                views.append(noisy)
        noisy = views[0]
        if stage == "train":
            targets = [clean] if self.objective.supervised else []  # only the supervised objective sees them
            loss, denoised = self.objective(net, views + targets, generator)
        elif clean is None:  # no clean image to score against: the objective's own loss is the curve to watch
            loss = self.objective(net, views, generator)[0]
            denoised = self.objective.denoise(net, noisy, generator)
        else:
            denoised = self.objective.denoise(net, noisy, generator)
            loss = F.mse_loss(denoised, clean)
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)
            self.train_loss.update(loss.detach())  # logged once per epoch, in on_train_epoch_end
            if self.loss == "psnr":
                loss = self._psnr_loss(denoised, clean)  # what is minimised; the MSE stays what is logged
        else:
            self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(noisy))
            if clean is None:
                return {"loss": loss, "noisy": noisy, "denoised": denoised}
            denoised, noisy_c = denoised.detach().float().clamp(0, 1), noisy.detach().float()
            self.eval_metrics[stage](denoised, clean)
            self.noisy_psnr[stage](noisy_c, clean)
            self.log_dict(self.eval_metrics[stage], on_epoch=True, prog_bar=stage == "val")
            self.log(f"{stage}/psnr_noisy", self.noisy_psnr[stage], on_epoch=True)
        return {"loss": loss, "clean": clean, "noisy": noisy, "denoised": denoised}

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        return self._shared_step(batch, batch_idx, "train")["loss"]

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss)  # Lightning computes, syncs and resets it

    def validation_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, batch_idx, "val")

    def test_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, batch_idx, "test")

    def predict_step(self, batch: Tensor, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Denoised images in [0, 1] for a batch of clean images, noised with seeded noise of its own stream (or
        for a batch of the data's own noisy images, as they are)."""
        if "test" in self.noisy_splits:
            noisy, net = self._views(batch)[0], self.net
        else:
            generator = self._noise_generator("predict", self.eval_noise_seed, batch_idx, dataloader_idx)
            noisy, net = self._noised(self._clean(batch), generator)
        return net(noisy).clamp(0, 1)  # residual networks (UNet, DnCNN) are not bounded by themselves

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["train_noise_seed"] = self.train_noise_seed

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_same_architecture(checkpoint)
        self.train_noise_seed = checkpoint.get("train_noise_seed")

    def _check_same_architecture(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, with a message that says what differs, a checkpoint whose weights do not fit this network."""
        own = {k: tuple(v.shape) for k, v in self.state_dict().items() if k.startswith("net.")}
        theirs = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        if own == theirs:
            return
        key = (sorted(set(own) ^ set(theirs)) or [k for k in own if own[k] != theirs[k]])[0]
        trained_with = checkpoint.get("hyper_parameters", {}).get("net", "a different network")
        try:
            path = self.trainer.ckpt_path or "the checkpoint"
        except RuntimeError:  # loaded without a Trainer (load_from_checkpoint)
            path = "the checkpoint"
        raise ValueError(
            f"{path} was trained with {trained_with}, which does not fit this run's network "
            f"(first difference: {key}, shape {theirs.get(key, 'missing')} in the checkpoint, "
            f"{own.get(key, 'missing')} here). Resume with the model settings it was trained with "
            "(see config.yaml in its run folder), or start a new run without --ckpt_path."
        )

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(
            self.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=self.fused_adam or None
        )
        if self.lr_schedule == "constant":
            # A schedule that keeps the rate, only so that LearningRateMonitor logs it as train/lr: without one the
            # tag is "lr-Adam", a TensorBoard section of its own that would head the first page.
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            total_steps = self.trainer.estimated_stepping_batches
            if not math.isfinite(total_steps):
                raise ValueError(
                    "lr_schedule 'cosine' needs to know how long the run is: set trainer.max_epochs or "
                    "trainer.max_steps"
                )
            # Stepped every optimizer step (not every epoch), so that a run resumed mid-epoch goes on exactly.
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(total_steps), 1))
        # "name": the tag under which LearningRateMonitor logs each step's rate.
        schedule = {"scheduler": scheduler, "interval": "step", "name": "train/lr"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}

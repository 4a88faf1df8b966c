import lightning as L
import pytest
import torch
from torchmetrics.image import PeakSignalNoiseRatio

from dae.data import MNISTDataModule
from dae.module import DenoisingModule
from dae.nets import ConvAutoencoder, DnCNN, UNet
from dae.noise import GaussianNoise, PoissonNoise
from dae.objectives import Noise2Self


class RecordingNoise(GaussianNoise):
    """Gaussian noise that keeps what it added and whether it was training, to check where it came from."""

    def __init__(self, std=0.5):
        super().__init__(std)
        self.calls = []

    def forward(self, clean, generator=None):
        noisy = super().forward(clean, generator)
        self.calls.append((self.training, (noisy - clean).detach().clone()))
        return noisy


def dm_for(mnist_dir, **kw):
    return MNISTDataModule(data_dir=str(mnist_dir), val_split=64, download=False, **kw)


def test_defaults_are_the_baseline():
    module = DenoisingModule()
    assert isinstance(module.net, ConvAutoencoder)
    assert isinstance(module.noise, GaussianNoise) and module.noise.std == 0.5 and not module.noise.clip
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 1e-5


@pytest.mark.parametrize("kwargs,match", [({"lr": 0}, "lr must be > 0"), ({"lr": -1e-3}, "lr must be > 0"),
                                          ({"weight_decay": -1}, "weight_decay")])
def test_bad_optimizer_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenoisingModule(**kwargs)


def test_training_gets_fresh_noise_each_step_and_eval_noise_repeats(mnist_dir, tiny_trainer):
    noise = RecordingNoise()
    module = DenoisingModule(noise=noise)
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, num_sanity_val_steps=0)
    trainer.fit(module, dm_for(mnist_dir, batch_size=32))
    train = [n for training, n in noise.calls if training]
    val = [n for training, n in noise.calls if not training]
    assert len(train) == 6 and len(val) == 4
    assert all(not torch.equal(a, b) for i, a in enumerate(train) for b in train[i + 1:])
    # Epoch 1 and epoch 2 validation see exactly the same noise, batch for batch.
    assert torch.equal(val[0], val[2]) and torch.equal(val[1], val[3])
    assert not torch.equal(val[0], val[1])


class DrawRecorder(GaussianNoise):
    """Gaussian noise that keeps every standard normal draw it makes, in call order."""

    def __init__(self):
        super().__init__(0.5)
        self.draws = []

    def forward(self, clean, generator=None):
        z = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        self.draws.append(z)
        return clean + self.std * z


def _noise_of_every_stage(mnist_dir, tiny_trainer, seed, **trainer_kwargs):
    """The draws of 4 training batches, then 2 batches each of validation, test and prediction (batch 16)."""
    L.seed_everything(seed)
    noise = DrawRecorder()
    module, dm = DenoisingModule(noise=noise, eval_noise_seed=2), dm_for(mnist_dir, batch_size=16)
    kwargs = dict(limit_train_batches=4, limit_val_batches=2, limit_predict_batches=2, num_sanity_val_steps=0)
    trainer = tiny_trainer(**{**kwargs, **trainer_kwargs})
    trainer.fit(module, dm)
    trainer.test(module, dm, verbose=False)
    trainer.predict(module, dm)
    assert len(noise.draws) == 10
    return noise.draws


def _shared_pairs(draws_a, draws_b):
    return [(i, j) for i, a in enumerate(draws_a) for j, b in enumerate(draws_b) if (a is not b) and torch.equal(a, b)]


def test_no_two_batches_of_any_stage_share_noise(mnist_dir, tiny_trainer):
    # Training seed 0 and eval_noise_seed 2: a seed + index rule would give training batch 2 the noise of
    # validation batch 0, and test and prediction the noise of validation.
    draws = _noise_of_every_stage(mnist_dir, tiny_trainer, seed=0)
    assert _shared_pairs(draws, draws) == []


def test_neighbouring_seeds_draw_unrelated_training_noise(mnist_dir, tiny_trainer):
    a = _noise_of_every_stage(mnist_dir, tiny_trainer, seed=0)[:4]
    b = _noise_of_every_stage(mnist_dir, tiny_trainer, seed=1)[:4]
    assert _shared_pairs(a, b) == []  # seed 1 does not replay seed 0 one batch later
    # 16 x 784 values per batch: unrelated draws correlate by about 1/sqrt(12544) = 0.009.
    correlations = [torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1].abs().item() for x in a for y in b]
    assert max(correlations) < 0.05


def test_every_batch_of_an_accumulation_window_gets_fresh_noise(mnist_dir, tiny_trainer):
    draws = _noise_of_every_stage(mnist_dir, tiny_trainer, seed=0, accumulate_grad_batches=2)
    assert _shared_pairs(draws[:4], draws[:4]) == []


def test_validation_logs_loss_psnr_ssim_and_noisy_baseline(mnist_dir, tiny_trainer):
    trainer = tiny_trainer(limit_val_batches=3)
    module = DenoisingModule()
    metrics = trainer.validate(module, dm_for(mnist_dir, batch_size=16))[0]
    assert set(metrics) == {"val/loss", "val/psnr", "val/ssim", "val/psnr_noisy"}
    # Noise std 0.5 on [0, 1] images: the noisy input's PSNR is about -20*log10(0.5) = 6 dB.
    assert metrics["val/psnr_noisy"] == pytest.approx(6.0, abs=0.5)
    again = tiny_trainer(limit_val_batches=3).validate(module, dm_for(mnist_dir, batch_size=16))[0]
    assert again == metrics  # seeded evaluation noise: identical numbers


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_net", [ConvAutoencoder, lambda: UNet(width=8, depth=2), lambda: DnCNN(depth=4, width=8)],
    ids=["baseline", "unet", "dncnn"],
)
def test_short_training_lowers_validation_loss(mnist_dir, tiny_trainer, make_net):
    torch.manual_seed(0)
    dm = dm_for(mnist_dir, batch_size=16)
    module = DenoisingModule(net=make_net(), lr=3e-3)
    before = tiny_trainer().validate(module, dm)[0]["val/loss"]
    tiny_trainer(max_epochs=4, limit_train_batches=16).fit(module, dm)
    after = tiny_trainer().validate(module, dm)[0]["val/loss"]
    assert after < 0.7 * before


@pytest.mark.parametrize("make_net", [ConvAutoencoder, lambda: DnCNN(depth=2, width=8)], ids=["baseline", "residual"])
def test_predict_returns_denoised_images_in_the_unit_range(mnist_dir, tiny_trainer, make_net):
    torch.manual_seed(0)
    module = DenoisingModule(net=make_net())
    out = torch.cat(tiny_trainer(limit_predict_batches=2).predict(module, dm_for(mnist_dir, batch_size=8)))
    assert out.shape == (16, 1, 28, 28)
    assert out.min() >= 0 and out.max() <= 1
    if isinstance(module.net, DnCNN):
        # The residual net returns the noisy input (std 0.5, unclipped) minus a small noise estimate: values
        # beyond 0 and 1 that prediction must clamp. (The baseline's sigmoid output never leaves [0, 1].)
        assert (out == 0).any() and (out == 1).any()


class LossRecorder(L.Callback):
    """Keeps the loss of every training step."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def _seeded_losses(mnist_dir, tiny_trainer, **module_kwargs):
    L.seed_everything(0)
    recorder = LossRecorder()
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=0, callbacks=[recorder])
    module = DenoisingModule(**module_kwargs)
    trainer.fit(module, dm_for(mnist_dir, batch_size=16))
    return recorder.losses, trainer.callback_metrics


def test_speed_settings_keep_the_loss_curve_and_the_epoch_mean(mnist_dir, tiny_trainer):
    fast, metrics = _seeded_losses(mnist_dir, tiny_trainer)  # defaults: channels_last, fused Adam
    plain, _ = _seeded_losses(mnist_dir, tiny_trainer, channels_last=False, fused_adam=False)
    assert len(fast) == len(plain) == 10
    # Same seed, same data order and noise: the same curve up to float rounding, and it does go down.
    assert fast == pytest.approx(plain, rel=1e-4)
    assert fast[-1] < fast[0]
    # train/loss_epoch is the mean over the last epoch's steps.
    assert metrics["train/loss_epoch"].item() == pytest.approx(sum(fast[5:]) / 5, rel=1e-5)


def test_speed_settings_reach_the_network_and_the_optimizer():
    module = DenoisingModule()
    conv = module.net.encoder[2].weight  # 16 input channels: the two layouts differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is True
    plain = DenoisingModule(channels_last=False, fused_adam=False)
    assert plain.net.encoder[2].weight.is_contiguous()
    assert not plain.configure_optimizers()["optimizer"].defaults["fused"]


class LrRecorder(L.Callback):
    """Keeps the learning rate each training step ran with."""

    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cosine_schedule_falls_from_lr_to_zero_over_the_run(mnist_dir, tiny_trainer):
    recorder = LrRecorder()
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(DenoisingModule(lr=2e-3, lr_schedule="cosine"), dm_for(mnist_dir, batch_size=16))
    lrs = recorder.lrs
    assert len(lrs) == 10 and lrs[0] == pytest.approx(2e-3)
    assert lrs[5] == pytest.approx(1e-3)  # half way: half the rate, across the epoch boundary
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 1e-4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0, abs=1e-12)  # after the last step


def test_constant_schedule_keeps_lr(mnist_dir, tiny_trainer):
    recorder = LrRecorder()
    trainer = tiny_trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(DenoisingModule(lr=2e-3), dm_for(mnist_dir, batch_size=16))
    assert recorder.lrs == [2e-3] * 5


def test_cosine_schedule_needs_a_finite_run(mnist_dir, tiny_trainer):
    trainer = tiny_trainer(max_epochs=-1, max_steps=-1, limit_val_batches=0)
    with pytest.raises(ValueError, match="set trainer.max_epochs or trainer.max_steps"):
        trainer.fit(DenoisingModule(lr_schedule="cosine"), dm_for(mnist_dir, batch_size=16))


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule must be 'constant' or 'cosine', got 'step'"):
        DenoisingModule(lr_schedule="step")


def test_psnr_loss_is_minus_the_mean_per_image_psnr():
    torch.manual_seed(0)
    clean = torch.rand(6, 1, 28, 28)
    denoised = clean + torch.linspace(0.01, 0.3, 6).view(6, 1, 1, 1) * torch.randn_like(clean)  # very unequal errors
    psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
    assert DenoisingModule._psnr_loss(denoised, clean).item() == pytest.approx(-psnr(denoised, clean).item(), rel=1e-5)
    # A perfect image counts as 60 dB, not as minus infinity.
    assert DenoisingModule._psnr_loss(clean, clean).item() == pytest.approx(-60.0)


@pytest.mark.slow
def test_psnr_loss_trains_while_the_logged_loss_stays_the_mse(mnist_dir, tiny_trainer):
    torch.manual_seed(0)
    dm = dm_for(mnist_dir, batch_size=16)
    module = DenoisingModule(net=UNet(width=8, depth=2), noise=GaussianNoise(std=(0.0, 0.5)), lr=3e-3, loss="psnr")
    before = tiny_trainer().validate(module, dm)[0]["val/loss"]
    recorder = LossRecorder()
    trainer = tiny_trainer(max_epochs=4, limit_train_batches=16, callbacks=[recorder])
    trainer.fit(module, dm)
    assert all(loss < 0 for loss in recorder.losses)  # what backward saw: minus PSNR in dB
    assert 0 < trainer.logged_metrics["train/loss"] < 0.2  # what TensorBoard and loss.png show: the MSE
    assert tiny_trainer().validate(module, dm)[0]["val/loss"] < 0.7 * before


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="loss must be 'mse' or 'psnr', got 'l1'"):
        DenoisingModule(loss="l1")


def test_compile_keeps_checkpoint_keys():
    compiled = DenoisingModule(compile=True)
    assert compiled.net._compiled_call_impl is not None
    assert compiled.state_dict().keys() == DenoisingModule().state_dict().keys()


class CompileProbe(ConvAutoencoder):
    """The baseline network, noting whether each forward pass ran under torch.compile."""

    def __init__(self):
        super().__init__()
        self.compiled_calls = []

    def forward(self, x):
        self.compiled_calls.append(torch.compiler.is_compiling())
        return super().forward(x)


@pytest.mark.slow
def test_compiled_network_trains_and_denoises_like_the_plain_one(mnist_dir, tiny_trainer):
    torch.manual_seed(0)
    plain = DenoisingModule(net=CompileProbe())
    compiled = DenoisingModule(net=CompileProbe(), compile=True)
    compiled.load_state_dict(plain.state_dict())
    batch = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(compiled(batch), plain(batch), rtol=1e-4, atol=1e-5)
    assert compiled.net.compiled_calls == [True] and plain.net.compiled_calls == [False]
    # And it trains: a fit through the compiled call runs and changes the weights.
    before = {k: v.clone() for k, v in compiled.state_dict().items()}
    tiny_trainer(limit_train_batches=2, limit_val_batches=1).fit(compiled, dm_for(mnist_dir, batch_size=8))
    assert any(not torch.equal(before[k], v) for k, v in compiled.state_dict().items())


class LevelRecorder(torch.nn.Module):
    """A noise-conditioned network that keeps every batch and noise level it is given."""

    noise_map = True
    in_channels = 1

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = []

    def forward(self, x, sigma=None):
        self.calls.append((x.detach().clone(), sigma))
        return x * self.scale


class LevelDrawRecorder(GaussianNoise):
    """Gaussian noise of a range of stds that keeps each noisy batch and the stds it drew."""

    def __init__(self):
        super().__init__(std=(0.0, 0.3))
        self.draws = []

    def draw(self, clean, generator=None):
        noisy, sigma = super().draw(clean, generator)
        self.draws.append((noisy.detach().clone(), sigma.clone()))
        return noisy, sigma


def test_a_noise_conditioned_network_is_told_the_std_each_image_got(mnist_dir, tiny_trainer):
    net, noise = LevelRecorder(), LevelDrawRecorder()
    module = DenoisingModule(net=net, noise=noise)
    trainer = tiny_trainer(limit_train_batches=3, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, dm_for(mnist_dir, batch_size=8))
    assert len(net.calls) == len(noise.draws) == 4  # 3 training steps, 1 validation batch
    for (x, sigma), (noisy, drawn) in zip(net.calls, noise.draws):
        assert torch.equal(x, noisy) and torch.equal(sigma, drawn)
        assert sigma.shape == (8, 1, 1, 1) and len(sigma.unique()) == 8
    out = module(torch.rand(2, 1, 28, 28), sigma=0.1)
    assert net.calls[-1][1] == 0.1 and out.shape == (2, 1, 28, 28)


def test_prediction_tells_a_noise_conditioned_network_the_level(mnist_dir, tiny_trainer):
    net, noise = LevelRecorder(), LevelDrawRecorder()
    tiny_trainer(limit_predict_batches=1).predict(DenoisingModule(net=net, noise=noise), dm_for(mnist_dir))
    assert len(net.calls) == 1 and torch.equal(net.calls[0][1], noise.draws[0][1])


@pytest.mark.parametrize("kwargs, match", [
    ({"noise": PoissonNoise()}, "PoissonNoise does not report"),
    ({"objective": Noise2Self()}, "Supervised objective on clean data"),
])
def test_a_noise_conditioned_network_needs_noise_of_known_level(kwargs, match, mnist_dir, tiny_trainer):
    module = DenoisingModule(net=UNet(width=8, depth=1, residual=False, noise_map=True), **kwargs)
    with pytest.raises(ValueError, match=match):
        tiny_trainer().fit(module, dm_for(mnist_dir))

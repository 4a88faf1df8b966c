"""The training objectives of dae.objectives, alone and inside DenoisingModule."""

import copy

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dae.data import MNISTDataModule
from dae.module import DenoisingModule
from dae.nets import ConvAutoencoder, DnCNN, UNet
from dae.objectives import (
    NEIGHBOUR_PAIRS,
    R2R,
    Neighbor2Neighbor,
    Noise2Noise,
    Noise2Self,
    Supervised,
    neighbour_subsample,
)
from dae.seeding import torch_generator
from tests.idx import synthetic_images

SIGMA = 0.5


def clean_batch(n: int = 8, size: int = 28) -> torch.Tensor:
    return torch.from_numpy(synthetic_images(n, size, seed=5)).float().div(255).unsqueeze(1)


def noisy(clean: torch.Tensor, seed: int) -> torch.Tensor:
    return clean + SIGMA * torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))


def views_for(objective, clean):
    """What the module hands each objective: noisy observation(s), and the clean batch to Supervised only."""
    if objective.supervised:
        return [noisy(clean, 1), clean]
    return [noisy(clean, 1 + k) for k in range(objective.observations)]


OBJECTIVES = [Supervised(), Noise2Noise(), Noise2Self(), Neighbor2Neighbor(), R2R(sigma=SIGMA, eval_passes=2)]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: type(o).__name__)
@pytest.mark.parametrize("make_net", [lambda **kw: UNet(width=8, depth=2, **kw),
                                      lambda **kw: DnCNN(depth=4, width=8, **kw)], ids=["unet", "dncnn"])
def test_each_objective_lowers_its_loss_and_keeps_the_shapes(objective, make_net):
    torch.manual_seed(0)
    net, clean = make_net(residual=not isinstance(objective, Noise2Self)), clean_batch(n=4, size=20)  # not 28x28
    objective.check(net, 20)
    views = views_for(objective, clean)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def loss_at(seed):
        return objective(net, views, torch_generator(seed))[0]

    with torch.no_grad():
        before = loss_at(0).item()
    for step in range(30):
        loss = loss_at(step + 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = loss_at(0).item()
        assert net(views[0]).shape == clean.shape
        assert objective.denoise(net, views[0], torch_generator(0)).shape == clean.shape
    # Self-supervised losses hold the target's noise, which no network removes: a drop in absolute terms.
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize("objective", [Supervised(), Noise2Noise(), Noise2Self(), R2R(sigma=SIGMA)],
                         ids=lambda o: type(o).__name__)
def test_objectives_that_keep_the_image_size_train_the_28x28_baseline(objective):
    net = ConvAutoencoder()
    objective.check(net, 28)
    loss, output = objective(net, views_for(objective, clean_batch()), torch_generator(0))
    loss.backward()
    assert output.shape == (8, 1, 28, 28) and torch.isfinite(loss)


def test_neighbor2neighbor_refuses_a_network_of_fixed_input_size_and_odd_sides():
    with pytest.raises(ValueError, match="half-size sub-images, but ConvAutoencoder takes only 28x28"):
        Neighbor2Neighbor().check(ConvAutoencoder())
    with pytest.raises(ValueError, match="must be even, got patch_size 33: set data.patch_size to 34"):
        Neighbor2Neighbor().check(UNet(), 33)
    with pytest.raises(ValueError, match="must be even, got 28x27"):
        Neighbor2Neighbor()(UNet(), [torch.rand(2, 1, 28, 27)], torch_generator(0))


def test_noise2self_refuses_a_residual_network():
    with pytest.raises(ValueError, match="residual UNet adds its input back.*init_args.residual to false"):
        Noise2Self().check(UNet(residual=True))
    Noise2Self().check(UNet(residual=False))


def test_noise2self_loss_ignores_the_pixels_it_does_not_mask():
    objective = Noise2Self(grid=4)
    net = nn.Conv2d(1, 1, 1)  # pixel by pixel: an unmasked pixel reaches no masked pixel's output
    y = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = objective.mask(y, torch_generator(7))
    row, col = (int(i) for i in mask[0, 0].nonzero()[0])
    # (row+2, col+2) is neither masked nor a neighbour of a masked pixel (masked rows and columns are 4 apart).
    far = ((row + 2) % 4, (col + 2) % 4)
    assert not mask[0, 0, far[0], far[1]]
    base = objective(net, [y], torch_generator(7))[0]
    moved_unmasked, moved_masked = y.clone(), y.clone()
    moved_unmasked[0, 0, far[0], far[1]] += 5.0
    moved_masked[0, 0, row, col] += 5.0
    assert objective(net, [moved_unmasked], torch_generator(7))[0] == base
    assert objective(net, [moved_masked], torch_generator(7))[0] != base


def test_noise2self_hides_each_masked_pixel_from_the_network():
    objective = Noise2Self(grid=3)
    y = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    seen = []
    objective(lambda x: seen.append(x) or x, [y], torch_generator(3))
    mask = objective.mask(y, torch_generator(3)).expand_as(y)
    moved = y + 10 * mask  # every masked pixel changed: what the network sees must not change
    objective(lambda x: seen.append(x) or x, [moved], torch_generator(3))
    assert torch.equal(seen[0], seen[1])
    assert mask[:, 0].float().mean().item() == pytest.approx(1 / 9)


def test_r2r_recorrupted_pair_has_independent_noises_of_the_right_variance():
    alpha = 0.5
    objective = R2R(sigma=SIGMA, alpha=alpha)
    clean = torch.rand(1, 1, 8, 8).expand(20_000, 1, 8, 8)
    y = noisy(clean, 0)
    first, second = objective.recorrupt(y, torch_generator(1))
    # Noise of y1 and y2 about the clean image: independent, variances sigma^2 (1 + alpha^2), sigma^2 (1 + 1/alpha^2).
    cov = torch.cov(torch.stack([(first - clean).flatten(), (second - clean).flatten()]).double())
    expected = SIGMA**2 * torch.tensor([[1 + alpha**2, 0.0], [0.0, 1 + 1 / alpha**2]], dtype=torch.double)
    torch.testing.assert_close(cov, expected, atol=0.01, rtol=0.01)
    # The recorruption itself: y1 - y = alpha sigma z, y2 - y = -sigma/alpha z.
    cov = torch.cov(torch.stack([(first - y).flatten(), (second - y).flatten()]).double())
    expected = SIGMA**2 * torch.tensor([[alpha**2, -1.0], [-1.0, 1 / alpha**2]], dtype=torch.double)
    torch.testing.assert_close(cov, expected, atol=0.01, rtol=0.01)


def test_r2r_refuses_a_sigma_other_than_the_noise_std_before_training(mnist_dir, tiny_trainer):
    module = DenoisingModule(net=UNet(width=8, depth=2), objective=R2R(sigma=0.3))
    with pytest.raises(ValueError, match="R2R: sigma 0.3 is not the std 0.5 of model.noise.*init_args.sigma to 0.5"):
        tiny_trainer().fit(module, fixed_dm(mnist_dir))
    R2R(sigma=0.3).check(UNet(), 28, None)  # noisy photos: the std is the user's to know


def test_r2r_validation_averages_its_recorrupted_passes():
    y = torch.rand(2, 1, 8, 8)
    passes = []
    R2R(sigma=SIGMA, eval_passes=3).denoise(lambda x: passes.append(x) or x, y, torch_generator(0))
    assert len(passes) == 3 and not torch.equal(passes[0], passes[1])
    assert torch.equal(R2R(sigma=SIGMA, eval_passes=0).denoise(lambda x: x, y, torch_generator(0)), y)


def test_neighbor2neighbor_sub_images_take_two_adjacent_pixels_of_every_cell():
    batch, channels, height, width = 4, 3, 10, 12
    y = torch.arange(batch * channels * height * width, dtype=torch.float64).reshape(batch, channels, height, width)
    first, second, _ = neighbour_subsample(y, torch_generator(0))
    assert first.shape == second.shape == (batch, channels, height // 2, width // 2)

    def position(values):  # each value is its own flat index: back to (image, channel, row, column)
        index = values.long()
        return index // (channels * height * width), index // (height * width) % channels, \
            index // width % height, index % width

    b1, c1, r1, k1 = position(first)
    b2, c2, r2, k2 = position(second)
    cell_rows = torch.arange(height // 2).view(1, 1, -1, 1)
    cell_cols = torch.arange(width // 2).view(1, 1, 1, -1)
    for r, k in ((r1, k1), (r2, k2)):  # both pixels lie in the cell the sub-image pixel stands for
        assert torch.equal(r // 2 == cell_rows, torch.ones_like(r, dtype=torch.bool))
        assert torch.equal(k // 2 == cell_cols, torch.ones_like(k, dtype=torch.bool))
    assert torch.equal(b1, b2) and torch.equal(c1, c2)
    assert ((r1 - r2).abs() + (k1 - k2).abs() == 1).all()  # different pixels, side by side or one above the other
    # The channels of a pixel go together, and the pairs vary from cell to cell.
    assert torch.equal(r1[:, 0], r1[:, 2]) and torch.equal(k1[:, 0], k1[:, 2])
    pairs = {(int(a), int(b)) for a, b in zip((2 * (r1 % 2) + k1 % 2).flatten(), (2 * (r2 % 2) + k2 % 2).flatten())}
    assert pairs == set(NEIGHBOUR_PAIRS)


def test_neighbor2neighbor_regulariser_compares_with_the_full_image_output():
    y = torch.rand(2, 1, 8, 8)
    identity = nn.Identity()
    # For the identity network f(g1(y)) - g2(y) equals g1(f(y)) - g2(f(y)): only the first term is left.
    loss, _ = Neighbor2Neighbor(gamma=5.0)(identity, [y], torch_generator(0))
    first, second, _ = neighbour_subsample(y, torch_generator(0))
    assert loss == F.mse_loss(first, second)


# DenoisingModule with the supervised objective: the same losses and noise as the code before objectives.


class Recorder(L.Callback):
    def __init__(self):
        self.batches, self.losses, self.val_losses = [], [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch.clone())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach().clone())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self.val_losses.append((batch.clone(), outputs["loss"].clone()))


def reference_supervised_run(initial, batches, val_batches, train_seed, loss_kind):
    """The training step as it was before objectives: ``mse(net(clean + 0.5 * randn), clean)`` with the noise of
    the key (seed, stage stream, rank, loader, batch counter), Adam fused, the network in channels-last."""
    net = ConvAutoencoder()
    net.load_state_dict(initial)
    net.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-5, fused=True)

    def step(batch, key):
        clean = torch.div(batch, 255.0).contiguous(memory_format=torch.channels_last)
        z = torch.randn(clean.shape, generator=torch_generator(*key), dtype=clean.dtype)
        denoised = net(clean + 0.5 * z)
        return denoised, clean

    losses = []
    for i, batch in enumerate(batches):
        denoised, clean = step(batch, (train_seed, 0, 0, 0, i))
        loss = F.mse_loss(denoised, clean)
        if loss_kind == "psnr":
            loss = 10 * torch.log10((denoised - clean).pow(2).flatten(1).mean(1).clamp(min=1e-6)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    with torch.no_grad():
        val = [F.mse_loss(*step(batch, (1234, 1, 0, 0, i))) for i, batch in enumerate(val_batches)]
    return net, losses, val


@pytest.mark.parametrize("loss_kind", ["mse", "psnr"])
def test_supervised_objective_reproduces_the_training_losses_bit_for_bit(mnist_dir, tiny_trainer, loss_kind):
    L.seed_everything(3)
    module = DenoisingModule(loss=loss_kind)
    assert isinstance(module.objective, Supervised)
    initial = copy.deepcopy(module.net.state_dict())
    recorder = Recorder()
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_split=64, download=False, batch_size=32)
    trainer = tiny_trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, callbacks=[recorder])
    trainer.fit(module, dm)
    val_batches = [b for b, _ in recorder.val_losses[-2:]]
    net, losses, val = reference_supervised_run(initial, recorder.batches, val_batches, module.train_noise_seed,
                                                loss_kind)
    assert len(losses) == 6
    for ours, theirs in zip(recorder.losses, losses):
        assert torch.equal(ours, theirs), (ours, theirs)
    for (_, ours), theirs in zip(recorder.val_losses[-2:], val):
        assert torch.equal(ours, theirs)
    for ours, theirs in zip(module.net.parameters(), net.parameters()):
        assert torch.equal(ours, theirs)


# Self-supervised objectives in DenoisingModule, on fixed noisy observations.


def fixed_dm(mnist_dir, **kw):
    return MNISTDataModule(data_dir=str(mnist_dir), val_split=64, download=False, batch_size=64, fixed_noise=True,
                           **kw)


def clean_training_images(mnist_dir):
    """The clean training split that ``fixed_dm`` noises, in its order, as floats in [0, 1]."""
    dm = MNISTDataModule(data_dir=str(mnist_dir), val_split=64, download=False)
    dm.setup("fit")
    return dm.train_set.images.float() / 255


def spying(objective_class, **kwargs):
    """An instance of ``objective_class`` that keeps a copy of the views of every training step in ``seen``."""

    class Spy(objective_class):
        def forward(self, net, views, generator):
            self.seen.append([view.detach().clone() for view in views])
            return super().forward(net, views, generator)

    spy = Spy(**kwargs)
    spy.seen = []
    return spy


def rows_of(batches, images):
    """The index in ``images`` of every image of ``batches`` (each must be there exactly)."""
    flat = images.flatten(1)
    found = [(b.flatten(1)[:, None] == flat[None]).all(-1).nonzero() for b in batches]
    index = torch.cat(found)
    assert len(index) == sum(len(b) for b in batches)
    return index[:, 1]


@pytest.mark.slow
def test_fixed_noisy_observations_are_the_same_every_epoch_and_after_a_resume(mnist_dir, tiny_trainer, tmp_path):
    def fit(epochs, ckpt_path=None):
        L.seed_everything(0)
        recorder = Recorder()
        module = DenoisingModule(net=UNet(width=8, depth=2), objective=Noise2Noise())
        dm = fixed_dm(mnist_dir)
        trainer = tiny_trainer(max_epochs=epochs, limit_val_batches=1, callbacks=[recorder])
        trainer.fit(module, dm, ckpt_path=ckpt_path)
        return trainer, dm, recorder.batches

    trainer, dm, batches = fit(2)  # 256 training images: 4 batches of 64 an epoch
    observations = dm.train_set.images
    assert observations.shape == (256, 2, 1, 28, 28) and observations.dtype == torch.float32
    epochs = [rows_of(batches[:4], observations), rows_of(batches[4:], observations)]
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist()) == list(range(256))
    assert not torch.equal(epochs[0], epochs[1])  # shuffled anew, noised once

    clean_dm = MNISTDataModule(data_dir=str(mnist_dir), val_split=64, download=False)
    clean_dm.setup("fit")
    clean = clean_dm.train_set.images.float() / 255
    for k in range(2):  # every training image twice, with independent noise of std 0.5; never clean
        noise = observations[:, k] - clean
        assert noise.std().item() == pytest.approx(SIGMA, rel=0.02)
        assert (noise.flatten(1).abs().amax(1) > 0.5).all()
    correlation = torch.corrcoef(torch.stack([(observations[:, 0] - clean).flatten(),
                                              (observations[:, 1] - clean).flatten()]))[0, 1]
    assert abs(correlation) < 0.02

    ckpt = tmp_path / "epoch1.ckpt"
    first, _, _ = fit(1)
    first.save_checkpoint(ckpt)
    _, resumed_dm, resumed = fit(2, ckpt_path=ckpt)
    assert torch.equal(resumed_dm.train_set.images, observations)
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(resumed, batches[4:]))


@pytest.mark.parametrize("objective", OBJECTIVES[1:], ids=lambda o: type(o).__name__)
def test_self_supervised_training_scores_against_the_clean_validation_images(objective, mnist_dir, tiny_trainer):
    L.seed_everything(0)
    net = UNet(width=8, depth=2, residual=not isinstance(objective, Noise2Self))
    module = DenoisingModule(net=net, objective=objective)
    trainer = tiny_trainer(limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)
    dm = fixed_dm(mnist_dir)
    trainer.fit(module, dm)
    logged = trainer.callback_metrics
    assert {"train/loss", "val/loss", "val/psnr", "val/ssim", "val/psnr_noisy"} <= set(logged)
    assert module.noisy_splits == {"train"}
    # The data keeps the noisy observations alone: no clean training image is there for the objective to see.
    assert not dm.clean_targets and not module.clean_targets
    served = dm.train_set.images.reshape(256, objective.observations, -1)
    assert (served - clean_training_images(mnist_dir).reshape(256, 1, -1)).abs().amax(-1).gt(0.5).all()


@pytest.mark.slow
def test_supervised_on_fixed_noise_trains_on_the_self_supervised_inputs_against_the_clean_images(mnist_dir,
                                                                                                  tiny_trainer):
    def fit(objective, residual, epochs):
        L.seed_everything(0)
        recorder = Recorder()
        module = DenoisingModule(net=UNet(width=8, depth=2, residual=residual), objective=objective)
        dm = fixed_dm(mnist_dir)
        tiny_trainer(max_epochs=epochs, limit_val_batches=1, callbacks=[recorder]).fit(module, dm)
        return dm, recorder.losses

    clean = clean_training_images(mnist_dir)
    selfsup = spying(Noise2Self)
    selfsup_dm, _ = fit(selfsup, residual=False, epochs=1)
    observation = selfsup_dm.train_set.images  # observation 0 of every training image, the only one it keeps
    assert observation.shape == (256, 1, 28, 28) and not selfsup_dm.clean_targets
    assert ((observation - clean).flatten(1).abs().amax(1) > 0.5).all()  # noisy, never clean
    assert len(selfsup.seen) == 4 and all(len(views) == 1 for views in selfsup.seen)
    assert sorted(rows_of([views[0] for views in selfsup.seen], observation).tolist()) == list(range(256))

    supervised = spying(Supervised)
    supervised_dm, losses = fit(supervised, residual=True, epochs=2)
    served = supervised_dm.train_set.images
    assert served.shape == (256, 2, 1, 28, 28) and supervised_dm.clean_targets
    assert torch.equal(served[:, 0], observation) and torch.equal(served[:, 1], clean)
    assert len(supervised.seen) == 8
    for epoch in (supervised.seen[:4], supervised.seen[4:]):  # the same fixed inputs every epoch, in a new order
        rows = rows_of([noisy for noisy, _ in epoch], observation)
        assert sorted(rows.tolist()) == list(range(256))
        assert torch.equal(torch.cat([target for _, target in epoch]), clean[rows])  # each input's own original
    assert all(torch.isfinite(loss) for loss in losses) and losses[-1] < losses[0]


def test_psnr_loss_needs_clean_images():
    with pytest.raises(ValueError, match="loss 'psnr' scores against clean images, which Noise2Self has not"):
        DenoisingModule(loss="psnr", objective=Noise2Self())


def test_neighbor2neighbor_refuses_the_baseline_network_before_training(mnist_dir, tiny_trainer):
    module = DenoisingModule(objective=Neighbor2Neighbor())
    with pytest.raises(ValueError, match="ConvAutoencoder takes only 28x28 images: use a fully convolutional"):
        tiny_trainer().fit(module, fixed_dm(mnist_dir))
    assert module.train_noise_seed is None  # no step ran


@pytest.mark.slow
def test_a_self_supervised_checkpoint_denoises_and_evaluate_names_its_objective(mnist_dir, tmp_path, capsys,
                                                                                monkeypatch):
    from dae.commands import main
    from dae.inference import load_model
    from tests.conftest import fit_args

    monkeypatch.chdir(tmp_path)
    assert main(fit_args(mnist_dir, "--model.objective=dae.objectives.Noise2Self", "--data.fixed_noise=true",
                         "--trainer.max_epochs=1")) == 0
    run = tmp_path / "lightning_logs" / "version_0"
    module = load_model(run)
    assert isinstance(module.objective, Noise2Self)
    assert module(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    assert main(["evaluate", str(run), "--std", "0.5", "--limit", "4", "--tune-limit", "4", "--baselines",
                 "-o", str(tmp_path / "eval")]) == 0
    assert "| ConvAutoencoder, GaussianNoise(std=0.5, clip=False), Noise2Self(grid=4) |" in capsys.readouterr().out

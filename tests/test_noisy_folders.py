"""Folders of noisy photos: no synthetic noise, a self-supervised objective, Noise2Noise pairs in two sub-folders."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image

from dae.training.callbacks import ImageGridCallback
from dae.data.folders import ImageFolderDataModule
from dae.module import DenoisingModule
from dae.nets import UNet
from dae.objectives import Neighbor2Neighbor, Noise2Noise, Noise2Self
from tests.idx import synthetic_images


def write_pairs(root: Path, n: int = 12, unpaired: str | None = None) -> Path:
    """Pictures a/NAME.png and b/NAME.png, where b is a's negative (so crops can be matched), plus a lone a/FILE."""
    images = synthetic_images(n, 40, seed=9)
    for i, image in enumerate(images):
        for folder, pixels in (("a", image), ("b", 255 - image)):
            path = root / folder / ("deep" if i % 2 else "") / f"p{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    if unpaired:
        Image.fromarray(images[0]).save(root / "a" / unpaired)
    return root


def pair_dm(root: Path, **kw) -> ImageFolderDataModule:
    kw = {"channels": 1, "patch_size": 16, "batch_size": 4, "val_split": 0.2, "test_split": 0.2, **kw}
    return ImageFolderDataModule(str(root), pair_dirs=["a", "b"], **kw)


def test_pairs_are_two_files_of_one_name_cropped_alike(tmp_path):
    dm = pair_dm(write_pairs(tmp_path))
    dm.setup("fit")
    assert dm.noisy_splits == {"train", "val", "test"} and dm.observations == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 2, 1, 16, 16) and batch.dtype == torch.uint8
    assert torch.equal(batch[:, 1], 255 - batch[:, 0])  # the same crop of both shots
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val[:, 1], 255 - val[:, 0])


def test_a_picture_without_its_pair_is_named(tmp_path):
    dm = pair_dm(write_pairs(tmp_path, unpaired="lonely.png"))
    with pytest.raises(ValueError, match=r"1 pictures in .* have no partner .*\(lonely.png\)"):
        dm.setup("fit")


def test_pair_dirs_must_be_two_sub_folders(tmp_path):
    with pytest.raises(ValueError, match="pair_dirs must name two different sub-folders"):
        ImageFolderDataModule(str(tmp_path), pair_dirs=["a"])


def test_noise2noise_trains_on_pairs_and_validation_logs_its_loss(tmp_path, tiny_trainer):
    module = DenoisingModule(net=UNet(in_channels=1, width=8, depth=2), objective=Noise2Noise())
    added = []
    module.noise.register_forward_hook(lambda *args: added.append(1))
    logger = TensorBoardLogger(tmp_path / "logs")
    trainer = tiny_trainer(limit_train_batches=2, limit_val_batches=1, logger=logger,
                           callbacks=[ImageGridCallback(num_images=2)])
    trainer.fit(module, pair_dm(write_pairs(tmp_path / "data")))
    logged = set(trainer.callback_metrics)
    trainer.test(module, pair_dm(tmp_path / "data"), verbose=False)
    logged |= set(trainer.callback_metrics)
    assert {"train/loss", "val/loss", "test/loss"} <= logged
    assert not {"val/psnr", "test/psnr"} & logged  # no clean image to score against
    assert added == []  # the photos are noisy already: no synthetic noise


@pytest.mark.parametrize("objective", [Noise2Self(), Neighbor2Neighbor()], ids=lambda o: type(o).__name__)
def test_noisy_folder_trains_single_shot_objectives(objective, image_dir, tiny_trainer):
    net = UNet(in_channels=3, width=8, depth=2, residual=not isinstance(objective, Noise2Self))
    module = DenoisingModule(net=net, objective=objective)
    dm = ImageFolderDataModule(str(image_dir), channels=3, patch_size=32, batch_size=4, noisy=True)
    trainer = tiny_trainer(limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, dm)
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)
    prediction = trainer.predict(module, dm)[0]
    assert prediction.shape[1:] == (3, 32, 32)


def test_noise2noise_without_pairs_says_how_to_give_them(image_dir, tiny_trainer):
    module = DenoisingModule(net=UNet(in_channels=3, width=8, depth=2), objective=Noise2Noise())
    dm = ImageFolderDataModule(str(image_dir), channels=3, patch_size=32, noisy=True)
    with pytest.raises(ValueError, match="Noise2Noise trains on 2 noisy observation.* serves 1: give data.pair_dirs"):
        tiny_trainer().fit(module, dm)


def test_noisy_folder_needs_a_self_supervised_objective(image_dir, tiny_trainer):
    module = DenoisingModule(net=UNet(in_channels=3, width=8, depth=2))
    dm = ImageFolderDataModule(str(image_dir), channels=3, patch_size=32, noisy=True)
    with pytest.raises(ValueError, match="Supervised objective needs clean images"):
        tiny_trainer().fit(module, dm)


def test_neighbor2neighbor_refuses_an_odd_patch_before_training(image_dir, tiny_trainer):
    module = DenoisingModule(net=UNet(in_channels=3, width=8, depth=2), objective=Neighbor2Neighbor())
    dm = ImageFolderDataModule(str(image_dir), channels=3, patch_size=31, noisy=True)
    with pytest.raises(ValueError, match="set data.patch_size to 32"):
        tiny_trainer().fit(module, dm)

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from dae.data.folders import ImageFolderDataModule, RandomPatchDataset, decode_image
from dae.module import DenoisingModule
from dae.nets import ConvAutoencoder
from tests.conftest import fake_rank
from tests.idx import IMAGE_SIZE, synthetic_images, synthetic_rgb, write_image_folder

ROOT = Path(__file__).resolve().parents[1]


def make_dm(folder, **kwargs):
    kwargs.setdefault("channels", 3)
    kwargs.setdefault("patch_size", 28)
    return ImageFolderDataModule(data_dir=str(folder), **kwargs)


def all_pixels(images) -> set[bytes]:
    return {bytes(img.numpy()) for img in images}


def centres(images, size: int = 28) -> list[torch.Tensor]:
    """The centre crops that validation and test would take of full images."""
    return [TF.center_crop(img, [size]) for img in images]


def pixels_by_split(dm, size: int = 28) -> dict[str, set[bytes]]:
    """Each split's images, as the bytes of their centre crops of side ``size``."""
    return {"train": all_pixels(centres(dm.train_set.images, size)),
            "val": all_pixels(centres(dm.val_set.images, size)), "test": all_pixels(centres(dm.test_set.images, size))}


def test_decode_converts_between_gray_and_rgb_and_scales_16_bit(tmp_path):
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    as_rgb = decode_image(tmp_path / "rgb.png", 3)
    assert as_rgb.dtype == torch.uint8 and as_rgb.shape == (3, 5, 7)
    assert as_rgb[:, 0, 0].tolist() == [200, 100, 50]
    gray = decode_image(tmp_path / "rgb.png", 1)
    assert gray.shape == (1, 5, 7) and gray[0, 0, 0] == round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(tmp_path / "gray.bmp")
    assert decode_image(tmp_path / "gray.bmp", 3)[:, 0, 0].tolist() == [90, 90, 90]
    wide = np.array([[0, 257 * 100, 65535]], np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # a 16-bit gray PNG
    assert decode_image(tmp_path / "wide.png", 1)[0, 0].tolist() == [0, 100, 255]


def test_every_format_is_found_recursively(tmp_path):
    image = synthetic_images(1, 32, seed=5)[0]
    for i, name in enumerate(["a.png", "b/c.jpg", "b/d/e.JPEG", "f.tif", "g.tiff", "h.bmp"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(image, i, axis=1)).save(tmp_path / name)
    dm = make_dm(tmp_path, channels=1, val_split=0.2, test_split=0.2, split_seed=3)  # a seed that splits 4/1/1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here is skipped
        dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 1, 1)
    assert sorted(sum(dm.split_files.values(), [])) == ["a.png", "b/c.jpg", "b/d/e.JPEG", "f.tif", "g.tiff", "h.bmp"]


def test_split_is_seeded_disjoint_and_covers_every_image(image_dir):
    a, b, c = make_dm(image_dir), make_dm(image_dir), make_dm(image_dir, split_seed=7)
    for dm in (a, b, c):
        dm.setup()
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (25, 2, 3)  # close to 0.1 of 30 each
    assert torch.equal(a.val_set.images, b.val_set.images) and torch.equal(a.test_set.images, b.test_set.images)
    assert not torch.equal(a.test_set.images, c.test_set.images)
    train, val, test = (all_pixels(s) for s in (centres(a.train_set.images), a.val_set.images, a.test_set.images))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 30


def test_training_gets_random_crops_and_evaluation_fixed_centre_crops(image_dir):
    (height, width), top, left = IMAGE_SIZE, (IMAGE_SIZE[0] - 28) // 2, (IMAGE_SIZE[1] - 28) // 2
    centres = [a[top : top + 28, left : left + 28].transpose(2, 0, 1) for a in synthetic_rgb(30, IMAGE_SIZE)]
    originals = {np.ascontiguousarray(c).tobytes() for c in centres}
    dm = make_dm(image_dir, batch_size=8, patches_per_image=4)
    dm.setup()
    assert len(dm.train_set) == 25 * 4
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (8, 3, 28, 28)
    # Many crop positions per image, so the crops of one image differ from epoch to epoch.
    assert (height - 27) * (width - 27) > 100
    first = torch.stack([dm.train_set[(0, epoch, 0)] for epoch in range(10)])
    assert len({bytes(p.numpy()) for p in first}) > 5
    # Validation and test crops are the exact centres of their images.
    val = torch.cat(list(dm.val_dataloader()))
    assert val.shape == (2, 3, 28, 28) and torch.equal(val, dm.val_set.images)
    assert all_pixels(val) <= originals and all_pixels(dm.test_set.images) <= originals


def test_adding_pictures_or_changing_the_patch_size_moves_no_image_between_splits(image_dir, tmp_path):
    folder = tmp_path / "pictures"
    shutil.copytree(image_dir, folder)
    before = make_dm(folder)
    before.setup()
    old = pixels_by_split(before)
    (folder / "more").mkdir()
    for i, rgb in enumerate(synthetic_rgb(10, (80, 80))):  # 10 new pictures, beside and below the old ones
        Image.fromarray(rgb).save(folder / ("more" if i % 2 else "") / f"new{i}.png")
    after = make_dm(folder)
    after.setup()
    grown = pixels_by_split(after)
    for split in ("train", "val", "test"):
        assert old[split] <= grown[split], split  # every old picture kept its split
    bigger = make_dm(folder, patch_size=40)  # the fixture's 70x76 pictures are all large enough for it
    bigger.setup()
    assert bigger.split_files == after.split_files
    assert {s: all_pixels(centres(getattr(bigger, f"{s}_set").images)) for s in ("val", "test")} == \
        {s: grown[s] for s in ("val", "test")}


def test_evaluation_of_a_checkpoint_scores_only_images_it_never_trained_on(image_dir, tmp_path):
    from dae.commands.evaluate import data_module

    folder = tmp_path / "pictures"
    shutil.copytree(image_dir, folder)
    trained = make_dm(folder)
    trained.setup()
    trained_on = pixels_by_split(trained)["train"]
    for i, rgb in enumerate(synthetic_rgb(40, (72, 72))[30:]):  # pictures added after training
        Image.fromarray(rgb).save(folder / f"later{i}.png")
    # What `dae evaluate CKPT` builds from the checkpoint's datamodule_hyper_parameters.
    evaluated = data_module({**trained.hparams, "_class_path": "dae.data.ImageFolderDataModule"})
    evaluated.setup("test")
    scored = all_pixels(evaluated.test_set.images)
    assert scored and not scored & trained_on
    assert pixels_by_split(trained)["test"] <= scored  # the checkpoint's own test images are all still scored


def _identical_pictures(folder: Path, n: int = 20) -> Path:
    """``n`` copies of one picture under different names: a crop's pixels then show only its position."""
    write_image_folder(folder, n=1)
    for i in range(1, n):
        shutil.copy(folder / "img000.png", folder / f"copy{i:03d}.png")
    return folder


def _orientations(image: torch.Tensor) -> list[bytes]:
    """The 8 orientations of a square image: 4 rotations by 90 degrees, each mirrored or not."""
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    return [bytes(t.numpy()) for t in rotations + [r.flip(-1) for r in rotations]]


def test_augmentation_keeps_the_patch_size_and_draws_all_8_orientations():
    image = torch.arange(36, dtype=torch.uint8).reshape(1, 6, 6)  # every pixel distinct: orientations differ
    assert len(set(_orientations(image))) == 8
    plain = RandomPatchDataset([image], patch_size=6)
    assert {bytes(plain[(0, epoch, 0)].numpy()) for epoch in range(50)} == {bytes(image.numpy())}
    augmented = RandomPatchDataset([image], patch_size=6, augment=True)
    patches = [augmented[(0, epoch, 0)] for epoch in range(200)]
    assert all(p.shape == (1, 6, 6) and p.dtype == torch.uint8 for p in patches)
    assert {bytes(p.numpy()) for p in patches} == set(_orientations(image))
    # Seeded by the key like the crop position: the same key gives the same patch.
    assert torch.equal(augmented[(0, 7, 0)], patches[7])


def test_augment_option_orients_the_training_crops_of_an_image_folder(tmp_path):
    square = (np.arange(32 * 32).reshape(32, 32) * 7 % 251).astype(np.uint8)
    for i in range(12):
        Image.fromarray(square).save(tmp_path / f"{i:02d}.png")
    for augment, expected in ((False, 1), (True, 8)):
        dm = make_dm(tmp_path, channels=1, patch_size=32, patches_per_image=20, batch_size=50, augment=augment,
                     val_split=0.2, test_split=0.2)
        dm.setup("fit")
        torch.manual_seed(0)
        crops = torch.cat(list(dm.train_dataloader()))
        assert crops.shape[1:] == (1, 32, 32)
        seen = {bytes(c.numpy()) for c in crops}
        assert seen <= set(_orientations(torch.from_numpy(square)[None])) and len(seen) == expected
        assert torch.equal(dm.val_set.images[0, 0], torch.from_numpy(square))  # validation is never turned


def test_ddp_ranks_draw_different_crops(tmp_path):
    folder = _identical_pictures(tmp_path / "same")
    batches = []
    for rank in (0, 1):
        dm = fake_rank(make_dm(folder, val_split=0.2, test_split=0.2, batch_size=4), rank)
        dm.setup("fit")
        torch.manual_seed(0)  # what seed_everything does on every rank
        batches.append(next(iter(dm.train_dataloader())))
    assert not torch.equal(batches[0], batches[1])


def test_random_crops_resume_exactly_mid_epoch(tmp_path):
    folder = _identical_pictures(tmp_path / "same")

    def loader():
        dm = make_dm(folder, val_split=0.2, test_split=0.2, batch_size=2, patches_per_image=2)
        dm.setup("fit")
        return dm.train_dataloader()

    torch.manual_seed(0)
    run = loader()
    run.sampler.set_epoch(1)
    batches = iter(run)
    served = [next(batches) for _ in range(3)]
    state = run.state_dict()
    rest = list(batches)
    assert len(rest) >= 3

    torch.manual_seed(0)
    torch.rand(100)  # a resumed process is elsewhere in its random streams
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    again = list(resumed)
    assert len(again) == len(rest) and all(torch.equal(a, b) for a, b in zip(again, rest))
    assert len(all_pixels(torch.cat(served + rest))) > 5  # and the crops do vary


def test_gray_channel_setting_converts_rgb_files(image_dir):
    dm = make_dm(image_dir, channels=1)
    dm.setup("test")
    assert dm.test_set.images.shape == (3, 1, 28, 28) and dm.channels == 1  # the 3 test files of split_seed 42


def test_unreadable_files_are_skipped_with_one_counting_warning(tmp_path):
    write_image_folder(tmp_path, n=6)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    jpeg = tmp_path / "nested" / "cut.jpg"
    Image.fromarray(synthetic_images(1, 64)[0]).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:200])  # truncated
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(tmp_path / "tiny.png")  # smaller than the patch
    dm = make_dm(tmp_path, val_split=0.2, test_split=0.2, split_seed=10)  # a seed that splits the 6 images 4/1/1
    with pytest.warns(UserWarning) as record:
        dm.setup()
    messages = [str(w.message) for w in record if "image folder" in str(w.message)]
    assert len(messages) == 1
    message = messages[0]
    assert "skipped 4 of 10 files" in message and "3 not readable" in message and "1 smaller than the 28x28" in message
    for name in ("notes.txt", "broken.png", "nested/cut.jpg", "tiny.png"):
        assert name in message
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 6


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no usable images in .*empty \(searched recursively.*\.png.*0 files"):
        make_dm(tmp_path / "empty").setup()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no usable images.*1 files found, 1 not readable.*a\.txt"):
        make_dm(tmp_path / "junk").setup()
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        make_dm(tmp_path / "nowhere").setup()
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="is a file"):
        make_dm(tmp_path / "file.png")


@pytest.mark.parametrize(
    "kwargs,match",
    [({"channels": 2}, "channels must be 1 .* or 3"), ({"patch_size": 0}, "patch_size"),
     ({"patches_per_image": 0}, "patches_per_image"), ({"val_split": 0}, "val_split must be a fraction"),
     ({"test_split": 1.0}, "test_split must be a fraction"), ({"batch_size": 0}, "batch_size"),
     ({"val_split": 3}, "val_split must be a fraction.*moves none between splits"),
     ({"val_split": 0.5, "test_split": 0.5}, "val_split \\+ test_split must be below 1")],
)
def test_bad_arguments_are_refused(image_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dm(image_dir, **kwargs)


def test_a_split_that_gets_no_image_is_refused(image_dir):
    with pytest.raises(ValueError, match=r"no image of the 30 usable .* falls into the val split.*raise val_split"):
        make_dm(image_dir, val_split=0.001).setup()


def test_network_with_other_channel_count_is_refused_before_training(image_dir, tiny_trainer):
    module = DenoisingModule(net=ConvAutoencoder(in_channels=1))
    with pytest.raises(ValueError, match="data has 3 channels but the network takes 1.*in_channels"):
        tiny_trainer().fit(module, make_dm(image_dir, channels=3))


@pytest.mark.slow
def test_fit_on_rgb_pngs_follows_the_data_channels(image_dir, tmp_path, monkeypatch):
    from dae.training.callbacks import read_scalars
    from dae.commands import main

    monkeypatch.chdir(tmp_path)
    main([
        "fit", f"--config={ROOT / 'configs' / 'mnist.yaml'}",
        "--data=dae.data.ImageFolderDataModule", f"--data.data_dir={image_dir}", "--data.channels=3", "--data.val_split=0.1",
        "--data.batch_size=8", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
    ])
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The baseline config says in_channels 1; the 3-channel data overrode it, and the checkpoint says so.
    assert ckpt["hyper_parameters"]["net"]["init_args"]["in_channels"] == 3
    assert ckpt["state_dict"]["net.encoder.0.weight"].shape[1] == 3
    assert ckpt["datamodule_hyper_parameters"]["channels"] == 3
    scalars = read_scalars(run)
    assert len(scalars["val/psnr"]) == 2 and scalars["val/psnr"][-1][1] > 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["class_path"] == "dae.data.ImageFolderDataModule"

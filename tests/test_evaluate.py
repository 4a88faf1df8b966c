import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dae.commands import main
from dae.commands.evaluate import data_module, evaluate, markdown_table, noisy_copy, scores
from tests.conftest import fit_args

HAVE_BASELINES = all(importlib.util.find_spec(p) is not None for p in ("bm3d", "skimage", "pywt"))
NETS = {
    "UNet": ["--model.net=dae.nets.UNet", "--model.net.init_args.width=4", "--model.net.init_args.depth=1"],
    "DnCNN": ["--model.net=dae.nets.DnCNN", "--model.net.init_args.depth=3", "--model.net.init_args.width=4",
              "--model.loss=psnr"],
}


@pytest.fixture(scope="module")
def two_checkpoints(mnist_dir, tmp_path_factory) -> list[Path]:
    """Run folders of two tiny networks trained 2 epochs of 3 steps on the fixture data."""
    runs = []
    for name, net_args in NETS.items():
        root = tmp_path_factory.mktemp(name)
        main(fit_args(mnist_dir, *net_args, "--trainer.enable_model_summary=false",
                      f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}"))
        runs.append(root / "lightning_logs" / "version_0")
    return runs


def _run(args: list[str], capsys) -> tuple[str, list[dict], dict]:
    assert main(["evaluate", *args]) == 0
    out = capsys.readouterr().out
    prefix = Path(args[args.index("-o") + 1])
    with prefix.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    return out, rows, json.loads(prefix.with_suffix(".json").read_text())


@pytest.mark.slow
def test_evaluate_tables_noisy_input_both_checkpoints_and_baselines(two_checkpoints, tmp_path, capsys):
    out, rows, data = _run([*map(str, two_checkpoints), "--std", "0.1", "0.5", "--limit", "4", "--tune-limit", "4",
                            "-o", str(tmp_path / "eval")], capsys)
    methods = ["noisy input", "UNet, GaussianNoise(std=0.5, clip=False)",
               "DnCNN, GaussianNoise(std=0.5, clip=False), psnr loss"]  # the training loss named where not the MSE
    if HAVE_BASELINES:
        methods += ["BM3D", "NL-means", "TV", "wavelet"]
    assert [r["method"] for r in rows] == methods * 2
    assert [float(r["std"]) for r in rows] == [0.1] * len(methods) + [0.5] * len(methods)
    for line in (f"| {m} |" for m in methods):
        assert line in out
    assert "std 0.1: PSNR / SSIM" in out and "std 0.5: PSNR / SSIM" in out
    for row in rows:
        assert 0 < float(row["psnr"]) < 60 and -1 <= float(row["ssim"]) <= 1
        assert (row["images_per_s"] == "") == (row["method"] == "noisy input")
        if row["method"] != "noisy input":
            assert float(row["images_per_s"]) > 0
    by = {(r["method"], r["std"]): float(r["psnr"]) for r in rows}
    assert by["noisy input", "0.1"] > by["noisy input", "0.5"] + 10  # 20 log10(5) = 14 dB apart
    if HAVE_BASELINES:
        assert by["TV", "0.5"] > by["noisy input", "0.5"]
    assert data["settings"]["images"] == 4 and data["settings"]["dataset"] == "mnist"
    assert data["settings"]["clip"] is False and "Gaussian noise unclipped" in out  # the baseline's noise by default
    assert data["settings"]["tune_images"] == (4 if HAVE_BASELINES else 0)
    assert [r["method"] for r in data["results"]] == [r["method"] for r in rows]
    assert rows[1]["params"].endswith(".ckpt")  # the network rows say which checkpoint file was used


@pytest.mark.slow
def test_two_checkpoints_of_one_setup_get_distinct_names(two_checkpoints, tmp_path, capsys):
    run = str(two_checkpoints[0])
    out, rows, data = _run([run, run, "--std", "0.5", "--limit", "2", "--baselines", "--clip", "-o", str(tmp_path / "e")],
                           capsys)
    assert data["settings"]["clip"] is True and "Gaussian noise clipped to [0, 1]" in out
    names = [r["method"] for r in rows]
    assert names[1:] == [f"UNet, GaussianNoise(std=0.5, clip=False) [checkpoint {i}]" for i in (1, 2)]
    assert all(f"| {n} |" in out for n in names)


@pytest.mark.slow
def test_evaluate_without_the_baselines_extra_gives_a_notice(two_checkpoints, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("bm3d", "skimage") else real(name, *a))
    out, rows, _ = _run(["--limit", "8", str(two_checkpoints[0]), "--std", "0.25", "-o", str(tmp_path / "e")], capsys)
    assert [r["method"] for r in rows] == ["noisy input", "UNet, GaussianNoise(std=0.5, clip=False)"]
    assert out.count("notice:") == 4 and "pip install 'dae[baselines]'" in out


@pytest.fixture(scope="module")
def image_folder_run(image_dir, tmp_path_factory) -> Path:
    """The run folder of a tiny U-Net trained on the RGB PNG fixture folder."""
    root = tmp_path_factory.mktemp("folder_run")
    main(["fit", f"--config={Path(__file__).resolve().parents[1] / 'configs' / 'image_folder.yaml'}",
          f"--data.data_dir={image_dir}", "--data.patch_size=16", "--data.batch_size=4", *NETS["UNet"],
          "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.log_every_n_steps=1",
          "--trainer.accelerator=cpu",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          f"--trainer.logger.init_args.save_dir={root}", f"--trainer.default_root_dir={root}"])
    return root / "lightning_logs" / "version_0"


@pytest.mark.slow
def test_evaluate_scores_an_image_folder_checkpoint_on_its_own_test_images(image_folder_run, image_dir, tmp_path,
                                                                          capsys):
    out, rows, data = _run([str(image_folder_run), "--std", "0.2", "--baselines", "-o", str(tmp_path / "e")], capsys)
    assert out.startswith("image folder test split, 3 images")  # 30 files, test_split 0.1
    assert [r["method"] for r in rows] == ["noisy input", "UNet, GaussianNoise(std=0.1, clip=True)"]
    assert data["settings"]["dataset"] == "image folder" and data["settings"]["data_dir"] == str(image_dir)
    assert all(float(r["psnr"]) > 0 for r in rows)


def test_evaluate_data_comes_from_known_classes_only(image_dir):
    hparams = {"_class_path": "dae.data.ImageFolderDataModule", "data_dir": str(image_dir), "channels": 3}
    data = data_module(hparams)
    data.setup("test")
    assert data.test_set.images.shape[1] == 3
    with pytest.raises(ValueError, match="--dataset mnist: the checkpoint was trained on an image folder"):
        data_module(hparams, dataset="mnist")
    with pytest.raises(ValueError, match="data module os.System is not one dae evaluate knows"):
        data_module({"_class_path": "os.System"})


def test_every_method_sees_the_same_seeded_noisy_images():
    clean = torch.rand(6, 1, 9, 11)
    seen: dict[str, list[torch.Tensor]] = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def prepare(self, std):
            return ""

        def __call__(self, noisy, std):
            seen.setdefault(self.name, []).append(noisy.clone())
            return noisy.mul_(0)  # even a method that scribbles on its input cannot change what others see

    evaluate([Recorder("a"), Recorder("b")], clean, [0.1, 0.3], seed=5, clip=True)
    for i, std in enumerate([0.1, 0.3]):
        expected = noisy_copy(clean, std, seed=5, clip=True)
        assert torch.equal(seen["a"][i], expected) and torch.equal(seen["b"][i], expected)
    assert torch.equal(noisy_copy(clean, 0.3, 5, True), noisy_copy(clean, 0.3, 5, True))
    assert not torch.equal(noisy_copy(clean, 0.3, 5, True), noisy_copy(clean, 0.3, 6, True))


@pytest.mark.parametrize("clip", [False, True])
def test_noisy_row_is_the_psnr_of_the_noisy_images_the_methods_get(clip):
    # Dark images, where clipping the noise would lift the PSNR by several dB: the row must score the very
    # images the methods denoise, unclipped unless --clip clips them for everyone.
    clean = torch.rand(5, 1, 8, 8) * 0.1
    rows = evaluate([], clean, [0.5], seed=0, clip=clip)
    assert rows[0].method == "noisy input" and rows[0].images_per_s is None
    noisy = noisy_copy(clean, 0.5, 0, clip=clip)
    per_image = torch.stack([10 * torch.log10(1 / (n - c).pow(2).mean()) for n, c in zip(noisy, clean)])
    assert rows[0].psnr == pytest.approx(per_image.mean().item(), rel=1e-5)
    assert scores(clean, clean)[1] == pytest.approx(1.0)
    assert "| noisy input |" in markdown_table(rows)


@pytest.mark.parametrize(
    "args,message",
    [
        (["missing_run"], "missing_run: no such checkpoint file or run folder"),
        (["--dataset", "mnist", "--std", "2"], "--std values must lie in [0, 1]"),
        ([], "give at least one checkpoint, or --dataset"),
        (["--dataset", "mnist", "--baselines", "BM4D"], "unknown baseline"),
        (["--dataset", "mnist", "--limit", "0"], "must be > 0"),
    ],
)
def test_bad_arguments_stop_with_a_clear_message(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

"""Translation between two datasets (datasets_prep/translation.py and train.py): the source
batches are data of the source set, phase 0 measures each image against its own source, the
saves map the source's test split and show images below their sources. EMNIST letters are
read in tests/test_datasets.py."""
import json
import shlex

import numpy as np
import pytest
import torch

import datasets_prep.loader
import train
from datasets_prep import build_image_dataset, translation
from tiny import run, run_dir
from uot.errors import UsageError
from uot.io import load_checkpoint

TOY = ("--image_size 2 --model_name toy --nz 2 --reg_name none --phi2 kl --no_use_ema --batch_size 64 "
       "--log_every 1")
DIGITS = ("--dataset digits0-4to5-9 --image_size 8 --num_channels_dae 8 --ch_mult 1 2 --num_res_blocks 1 "
          "--attn_resolutions 4 --ngf 8 --nz 4 --z_emb_dim 16 --n_mlp 2 --batch_size 16 --log_every 1 --phi2 kl")


def map_step_calls(monkeypatch):
    """The positional arguments of every train.map_step call: (G, D, opt, loss, x, z, y_ref, ...)."""
    calls, real = [], train.map_step
    monkeypatch.setattr(train, "map_step", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    return calls


def exact_cdist(a, b):
    """Distances between the flattened images of a and b, with exact zeros for equal ones."""
    return torch.cdist(a.flatten(1), b.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")


def test_toy_translation_maps_source_data_against_itself(tmp_path, monkeypatch):
    drawn = []
    sample_toy = datasets_prep.loader.sample_toy
    monkeypatch.setattr(datasets_prep.loader, "sample_toy",
                        lambda name, n, **kw: drawn.append(name) or sample_toy(name, n, **kw))
    maps = map_step_calls(monkeypatch)
    flags = TOY + " --dataset moon2spiral --num_phase 2 --init_num_iterations 2 --num_iterations 2 --save_image_every 4"
    assert run(flags, tmp_path) == 0
    # per iteration: a batch of the target (spiral), two of the source (moon): one per step
    assert drawn == ["spiral", "moon", "moon"] * 4
    x, y_ref = maps[0][4], maps[0][6]
    assert torch.equal(y_ref, x)                   # phase 0: the reference map is the identity
    assert x.abs().max() > 8                       # moon's arcs reach |x| 15, N(0, I) hardly 5
    assert not torch.equal(maps[2][6], maps[2][4])   # phase 1: T_0 of the source
    out = run_dir(tmp_path, "moon2spiral")
    saved = np.load(out / "samples_4.npz")
    fixed = translation.toy_source("moon2spiral", 4000, 2, generator=torch.Generator().manual_seed(1024))
    np.testing.assert_array_equal(saved["source"], fixed.numpy())   # the source's fixed test draw
    record = json.loads((out / "metrics.json").read_text())[-1]
    cost = ((saved["generated"] - saved["source"]) ** 2).mean()
    assert record["transport_cost"] == pytest.approx(cost, rel=1e-5)
    assert {"knn_kl", "energy_distance"} <= set(record)


def test_digits_translation_trains_on_the_source_split_and_measures_the_test_split(tmp_path, monkeypatch):
    maps = map_step_calls(monkeypatch)
    assert run(DIGITS + " --num_phase 1 --init_num_iterations 2 --save_image_every 2", tmp_path) == 0
    train_sources = translation.to_model_input(translation.source_images("digits0-4to5-9", None, 8))
    for args in maps:   # every source image a map step saw is a training digit of classes 0-4
        assert (exact_cdist(args[4], train_sources).min(1).values == 0).all()
    out = run_dir(tmp_path, "digits0-4to5-9")
    assert (out / "samples_2.png").stat().st_size > 0
    record = json.loads((out / "metrics.json").read_text())[-1]
    assert {"transport_cost", "target_class_share", "source_target_class_share", "target_fd"} <= set(record)
    # the classifier finds few of the test sources (0-4) in 5-9: the level before any transport
    assert record["source_target_class_share"] < 0.1


def test_digits_translation_splits():
    sets = {(side, split): getattr(translation, f"{side}_images")("digits0-4to5-9", None, 8, split)
            for side in ("source", "target") for split in ("train", "test")}
    assert set(sets["source", "train"].labels.tolist()) == set(translation.SOURCE_CLASSES)
    assert set(sets["target", "test"].labels.tolist()) == set(translation.TARGET_CLASSES)
    for side in ("source", "target"):
        train_images, test_images = sets[side, "train"].images, sets[side, "test"].images
        assert len(test_images) == round(0.2 * (len(train_images) + len(test_images)))
        # no training image is a test image (the digits hold no exact repeats across the split)
        assert exact_cdist(train_images.float(), test_images.float()).min() > 0
    # the dataset's own data is its target side, as train.py and test.py read it
    assert torch.equal(build_image_dataset("digits0-4to5-9", None, 8).images, sets["target", "train"].images)


def test_beside_sources_puts_each_row_of_images_under_its_sources():
    sources, images = torch.zeros(40, 1, 2, 2), torch.ones(40, 1, 2, 2)
    sources[:, 0, 0, 0] = images[:, 0, 0, 0] = torch.arange(40.0)
    tiles = translation.beside_sources(sources, images)
    assert tiles.shape == (64, 1, 2, 2)
    rows = tiles[:, 0, 0, 0].reshape(8, 8)
    assert torch.equal(rows[0::2], rows[1::2]) and torch.equal(rows[2 * 3], torch.arange(24.0, 32.0))
    assert (tiles[:, 0, 1, 1].reshape(8, 8)[1::2] == 1).all() and (tiles[:, 0, 1, 1].reshape(8, 8)[0::2] == 0).all()


@pytest.mark.parametrize("flags, message", [
    ("--dataset emnist2mnist --model_name otm", "--model_name otm maps 3 x 8 x 8 noise"),
    ("--dataset moon2spiral --model_name toy --fid_every 10", "--fid_every"),
    ("--dataset moons --model_name toy", "moon2spiral, spiral2moon"),
    ("--dataset nope", "cifar10, "),
])
def test_translation_flag_errors(flags, message):
    with pytest.raises(UsageError, match=message) as err:
        train.resolve_args(train.build_parser().parse_args(shlex.split(flags)), 1)
    if "nope" in flags:   # the one line lists every dataset
        for name in train.DATASET_NAMES:
            assert name in str(err.value)


def test_resume_continues_the_source_order_exactly(tmp_path):
    # batch 128: the 721 training sources give 5 batches an epoch, two drawn per iteration, so
    # the 6 iterations cross two source epochs and the resume starts mid-epoch
    common = DIGITS + " --batch_size 128 --num_phase 1 --save_content_every 3 --save_image_every 100"
    assert run(common + " --init_num_iterations 6", tmp_path, exp="straight") == 0
    assert run(common + " --init_num_iterations 3", tmp_path, exp="resumed") == 0
    assert run(common + " --init_num_iterations 6 --resume", tmp_path, exp="resumed") == 0
    a, b = (load_checkpoint(run_dir(tmp_path, "digits0-4to5-9", exp) / "content.pth") for exp in ("straight", "resumed"))
    assert a["step"] == b["step"] == 6
    for key in ("G", "D"):
        for name in a[key]:
            torch.testing.assert_close(a[key][name], b[key][name], rtol=0, atol=0, msg=f"{key}.{name}")

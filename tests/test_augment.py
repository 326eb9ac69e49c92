"""Batched augmentation, device-resident batches and two-view training."""

from __future__ import annotations

import pytest
import torch

from infomax.augment import Augment
from infomax.data import DeviceBatches
from infomax.module import DeepInfoMax


def _images(n: int = 16, c: int = 3, s: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_none_is_identity():
    x = _images()
    assert torch.equal(Augment("none")(x), x)


def test_full_crop_is_identity_or_mirror():
    # A crop of the whole image at aspect 1 resamples every pixel centre onto itself: the output is
    # the image or its mirror image, per image, and both occur in a batch of 64.
    torch.manual_seed(0)
    x = _images(64)
    y = Augment("crop_flip", scale=(1.0, 1.0), ratio=(1.0, 1.0))(x)
    same = (y - x).abs().flatten(1).amax(1) < 1e-5
    mirrored = (y - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert bool((same | mirrored).all())
    assert same.any() and mirrored.any()


def test_crop_zooms_into_the_image():
    # A half-width, half-height crop of an image whose left half is 0 and right half is 1 shows a
    # single colour or the edge between them; never a pixel outside [0, 1].
    torch.manual_seed(1)
    x = torch.zeros(32, 1, 32, 32)
    x[..., 16:] = 1.0
    y = Augment("crop_flip", scale=(0.25, 0.25), ratio=(1.0, 1.0))(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.allclose(y, x) and not torch.allclose(y, x.flip(-1))


def test_colour_jitter_off_keeps_pixels_and_greyscale_on_equalises_channels():
    torch.manual_seed(2)
    x = _images()
    keep = Augment("simclr", scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, grey_p=0.0)
    y = keep(x)
    assert bool(((y - x).abs().flatten(1).amax(1) < 1e-5).logical_or((y - x.flip(-1)).abs().flatten(1).amax(1) < 1e-5).all())
    grey = Augment("simclr", jitter=0.0, grey_p=1.0)(x)
    assert torch.allclose(grey[:, 0], grey[:, 1]) and torch.allclose(grey[:, 1], grey[:, 2])
    # Luma of a pure red image: 0.299, as ITU-R 601 says.
    red = torch.zeros(4, 3, 32, 32)
    red[:, 0] = 1.0
    assert torch.allclose(
        Augment("simclr", scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0, grey_p=1.0)(red), torch.full_like(red, 0.299), atol=1e-5
    )


def test_jitter_varies_per_image_and_stays_in_range():
    torch.manual_seed(3)
    x = _images(32)
    y = Augment("simclr", scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.4, jitter_p=1.0, grey_p=0.0)(x)
    assert y.min() >= 0 and y.max() <= 1
    ratios = y.mean(dim=(1, 2, 3)) / x.mean(dim=(1, 2, 3))
    assert ratios.std() > 0.01  # each image draws its own factors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": "blur"}, "augment='blur'"),
        ({"scale": (0.0, 1.0)}, "scale="),
        ({"jitter": 1.5}, "jitter=1.5"),
        ({"grey_p": 2.0}, "grey_p=2.0"),
        ({"ratio": (2.0, 1.0)}, "ratio="),
    ],
)
def test_bad_settings_raise_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Augment(**kwargs)


def test_device_batches_partition_each_epoch_across_ranks():
    images = torch.arange(103, dtype=torch.uint8).view(103, 1, 1, 1)
    labels = torch.arange(103)
    ranks = [DeviceBatches(images, labels, batch_size=10, device="cpu", seed=5, rank=r, world_size=2) for r in range(2)]
    assert [len(r) for r in ranks] == [5, 5]  # 51 per rank, incomplete batch dropped
    seen = [torch.cat([y for _, y in r]) for r in ranks]
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0  # disjoint shares
    assert all(len(s) == 50 for s in seen)
    for x, y in DeviceBatches(images, labels, 10, "cpu", seed=5):
        assert torch.equal(x.flatten().long(), y)  # images and labels stay paired
    one = DeviceBatches(images, labels, 10, "cpu", seed=5)
    assert not torch.equal(torch.cat([y for _, y in one]), torch.cat([y for _, y in one]))  # reshuffled per epoch
    with pytest.raises(ValueError, match="rank=2"):
        DeviceBatches(images, labels, 10, "cpu", rank=2, world_size=2)


def test_two_view_training_step_learns_and_keeps_the_state_dict():
    torch.manual_seed(0)
    model = DeepInfoMax(z_dim=16, critic_hidden=32, augment="simclr", views=2)
    plain = DeepInfoMax(z_dim=16, critic_hidden=32)
    assert model.state_dict().keys() == plain.state_dict().keys()  # augmentation adds no weights
    model.setup("fit")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    losses = []
    for _ in range(15):
        loss = model._losses((x, None)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3


def test_two_views_need_an_augmentation():
    with pytest.raises(ValueError, match="views=2"):
        DeepInfoMax(views=2)
    with pytest.raises(ValueError, match="views=3"):
        DeepInfoMax(views=3, augment="simclr")


def test_channels_last_setup_keeps_outputs():
    torch.manual_seed(0)
    a = DeepInfoMax(z_dim=8, critic_hidden=16).eval()
    b = DeepInfoMax(z_dim=8, critic_hidden=16, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    b.setup("fit")
    conv = next(m for m in b.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = (torch.rand(4, 3, 32, 32) * 255).to(torch.uint8)
    assert torch.allclose(a(x), b(x), atol=1e-5)

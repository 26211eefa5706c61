"""Fixed input statistics of the dense models: checked once, in one place, for all of them."""

from __future__ import annotations

import pytest
import torch

from cytobench.errors import BadInputError
from cytobench.models.image_norm import image_stats, standardize
from cytobench.models.mask_rcnn import build_mask_rcnn
from cytobench.models.seunet import build_seunet
from cytobench.models.sparse_seunet import build_sparse_seunet
from cytobench.models.tiny_segnet import build_tiny_segnet

BUILDERS = {
    "seunet": lambda **kw: build_seunet(in_channels=2, depth=2, width=4, **kw),
    "sparse_seunet": lambda **kw: build_sparse_seunet(
        in_channels=2,
        depth=2,
        width=4,
        num_instances=4,
        branch_channels=4,
        kernel_dim=4,
        branch_convs=1,
        **kw,
    ),
    "tiny_segnet": lambda **kw: build_tiny_segnet(3, in_channels=2, width=4, num_layers=1, **kw),
    "mask_rcnn": lambda **kw: build_mask_rcnn(2, in_channels=2, backbone="resnet18", **kw),
}


def test_image_stats_are_channel_buffers_or_none() -> None:
    mean, std = image_stats(2, [0.5, 0.25], [0.1, 0.2])
    assert mean.shape == std.shape == (2, 1, 1) and mean.dtype == torch.float32
    image = torch.tensor([0.7, 0.65]).view(2, 1, 1).expand(2, 3, 3)
    torch.testing.assert_close(standardize(image, mean, std), torch.full((2, 3, 3), 2.0))
    assert image_stats(2, None, None) == (None, None)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_dense_models_refuse_bad_statistics(name: str) -> None:
    build = BUILDERS[name]
    with pytest.raises(BadInputError, match="3 values for 2 channels"):
        build(image_mean=[0.1, 0.2, 0.3], image_std=[1.0, 1.0, 1.0])
    # one without the other used to be dropped silently by SEU-Net, SparseSEU-Net and TinySegNet
    with pytest.raises(BadInputError, match="give both image_mean and image_std, or neither"):
        build(image_mean=[0.5, 0.5])
    with pytest.raises(BadInputError, match="give both image_mean and image_std, or neither"):
        build(image_std=[0.2, 0.2])


@pytest.mark.parametrize("name", ["seunet", "sparse_seunet", "tiny_segnet"])
def test_fixed_statistics_reach_the_model(name: str) -> None:
    model = BUILDERS[name](image_mean=[0.5, 0.25], image_std=[0.1, 0.2])
    image = torch.tensor([0.7, 0.65]).view(2, 1, 1).expand(2, 3, 3)
    torch.testing.assert_close(model.normalize(image), torch.full((2, 3, 3), 2.0))
    assert "image_mean" not in model.state_dict()  # config, not weights: a checkpoint does not pin them

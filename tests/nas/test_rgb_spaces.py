"""The RGB spaces load, run at their input size, and their committed CPU tables cover them;
their search configs parse with the image data module."""

import pytest
import torch
import yaml

from costmodels import CostTable
from supernet import SearchSpace, SuperNet
from tests.conftest import ROOT


@pytest.mark.parametrize(("name", "shape", "classes"), [
    ("rgb32", (3, 32, 32), 10),
    ("rgb224", (3, 224, 224), 1000),
])
def test_rgb_space_runs_and_its_table_covers_it(name, shape, classes):
    space = SearchSpace.from_yaml(ROOT / "configs/spaces" / f"{name}.yaml")
    assert (space.input_channels, space.input_size, space.input_size) == shape
    CostTable.load(ROOT / "configs/tables" / f"{name}_cpu.json").check_covers(space)
    net = SuperNet(space).eval()
    with torch.no_grad():
        logits = net(torch.randn(1, *shape), space.smallest())
    assert logits[-1].shape == (1, classes)


def test_rgb224_has_a_stride_2_stem():
    space = SearchSpace.from_yaml(ROOT / "configs/spaces/rgb224.yaml")
    assert space.stem.stride == 2
    strides = [space.stem.stride] + [s.stride for s in space.stages]
    assert torch.tensor(strides).prod() == 32  # 224 -> 7, as MobileNetV3


@pytest.mark.parametrize("name", ["rgb32_folder", "rgb224_folder"])
def test_rgb_search_configs_name_existing_files_and_the_image_module(name):
    config = yaml.safe_load((ROOT / "configs/search" / f"{name}.yaml").read_text())
    assert (ROOT / config["model"]["space"]).is_file()
    assert (ROOT / config["model"]["cost_table"]).is_file()
    assert config["data"]["class_path"] == "nas.data.images.ImageDataModule"
    from nas.data.images import Augment, ImageDataModule

    args = dict(config["data"]["init_args"])
    args["augment"] = Augment(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in args["augment"].items()})
    ImageDataModule(**args)  # every option is an argument the module takes, with valid values

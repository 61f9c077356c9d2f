"""bench/fid.py: FID's Inception-v3 has the weights file's layout and loads it strictly."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))
from fid import InceptionV3, inception_features, load_inception  # noqa: E402


def test_inception_has_the_fid_weights_layout():
    # The FID weights file (pytorch-fid's pt_inception-2015-12-05) is torchvision's Inception-v3
    # without the auxiliary classifier and with 1,008 classes: 27,161,264 parameters less the
    # auxiliary head's 3,326,696, plus 8 classes' 2,049 -> 23,850,960; 94 convolutions.
    model = InceptionV3()
    assert sum(p.numel() for p in model.parameters()) == 23_850_960
    state = model.state_dict()
    assert sum(k.endswith("conv.weight") for k in state) == 94
    for key, shape in [("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
                       ("Mixed_5b.branch_pool.conv.weight", (32, 192, 1, 1)),
                       ("Mixed_6a.branch3x3.conv.weight", (384, 288, 3, 3)),
                       ("Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
                       ("Mixed_7a.branch7x7x3_4.conv.weight", (192, 192, 3, 3)),
                       ("Mixed_7c.branch3x3dbl_3b.bn.running_var", (384,)),
                       ("fc.weight", (1008, 2048))]:
        assert state[key].shape == shape, key


def test_inception_features_load_from_a_path_and_reject_other_files(tmp_path):
    torch.manual_seed(0)
    model = InceptionV3().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    features = inception_features(load_inception(str(tmp_path / "weights.pth")), images)
    assert features.shape == (2, 2048)
    with torch.no_grad():
        assert torch.allclose(features, model.features(images), atol=1e-5)
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "other.pth")
    (tmp_path / "text.pth").write_text("not weights")
    for name, message in [("other.pth", "is not the FID Inception-v3 weights file"),
                          ("text.pth", "is not the FID Inception-v3 weights file"),
                          ("missing.pth", "no such file")]:
        with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
            load_inception(str(tmp_path / name))
        assert "\n" not in str(error.value)

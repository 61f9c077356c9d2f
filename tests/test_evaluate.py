"""evaluate.py: the Frechet distance against its closed forms; the FID Inception-v3's layout."""
import pytest
import torch

from evaluate import feature_statistics, frechet_distance


def test_identical_feature_sets_are_at_distance_zero():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    stats = feature_statistics(features)
    assert abs(frechet_distance(*stats, *stats)) < 1e-8


def test_gaussians_with_diagonal_covariances_match_the_closed_form():
    # With S_1 = diag(a), S_2 = diag(b): Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) = sum (sqrt a - sqrt b)^2
    mu_1, mu_2 = torch.tensor([0.0, 1.0, 2.0]).double(), torch.tensor([1.0, 1.0, -1.0]).double()
    a, b = torch.tensor([1.0, 4.0, 0.25]).double(), torch.tensor([9.0, 1.0, 0.25]).double()
    expected = (mu_1 - mu_2).pow(2).sum() + (a.sqrt() - b.sqrt()).pow(2).sum()   # 10 + 5
    assert abs(frechet_distance(mu_1, torch.diag(a), mu_2, torch.diag(b)) - expected) < 1e-9


def test_rotated_covariances_and_sampled_features():
    # Rotating both Gaussians by one orthogonal matrix leaves the distance unchanged, and the
    # statistics of many samples give the distance of the Gaussians they were drawn from.
    g = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]
    a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]).double(), torch.tensor([2.0, 2.0, 1.0, 0.5]).double()
    mu_1, mu_2 = torch.zeros(4).double(), torch.ones(4).double()
    exact = frechet_distance(mu_1, torch.diag(a), mu_2, torch.diag(b))
    rotated = frechet_distance(q @ mu_1, q @ torch.diag(a) @ q.T, q @ mu_2, q @ torch.diag(b) @ q.T)
    assert abs(rotated - exact) < 1e-9
    n = 200000
    x = (torch.randn(n, 4, generator=g, dtype=torch.float64) * a.sqrt() + mu_1) @ q.T
    y = (torch.randn(n, 4, generator=g, dtype=torch.float64) * b.sqrt() + mu_2) @ q.T
    sampled = frechet_distance(*feature_statistics(x), *feature_statistics(y))
    assert abs(sampled - exact) < 0.05 * exact


def test_inception_has_the_fid_weights_layout():
    # The FID weights file (pytorch-fid's pt_inception-2015-12-05) is torchvision's Inception-v3
    # without the auxiliary classifier and with 1,008 classes: 27,161,264 parameters less the
    # auxiliary head's 3,326,696, plus 8 classes' 2,049 -> 23,850,960; 94 convolutions.
    from evaluate import InceptionV3
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
    from evaluate import InceptionV3, inception_features, load_inception
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

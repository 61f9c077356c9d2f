"""vqvae.py: nearest code, straight-through gradient, the two losses, EMA, restarts, learning;
the prior over codes: causal, and it learns."""
import dataclasses

import torch
import torch.nn.functional as F

from data import shapes_data
from vqvae import VQVAE, CodePrior, CodePriorConfig, VectorQuantizer, VQVAEConfig


def test_chosen_code_is_argmin_of_distances():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQVAEConfig(num_codes=16, embedding_dim=4))
    flat = torch.randn(50, 4)
    slow = torch.tensor([min(range(16), key=lambda k: (v - vq.codebook[k]).pow(2).sum().item())
                         for v in flat.unbind()])
    assert torch.equal(vq.nearest(flat), slow)


def test_straight_through_gradient_is_identity():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQVAEConfig(num_codes=8, embedding_dim=4)).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    z_q = vq(z_e)[0]
    upstream = torch.randn_like(z_q)
    (z_q * upstream).sum().backward()
    assert torch.equal(z_e.grad, upstream)  # d z_q / d z_e = I
    assert torch.allclose(z_q, vq.codebook[vq(z_e)[1]].permute(0, 3, 1, 2))  # forward: the codes


def test_codebook_and_commitment_losses():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQVAEConfig(num_codes=8, embedding_dim=4)).eval()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    _, codes, codebook, commitment, _ = vq(z_e)
    e = vq.codebook[codes].permute(0, 3, 1, 2)
    assert torch.allclose(codebook, F.mse_loss(e, z_e))
    assert torch.allclose(commitment, F.mse_loss(z_e, e))
    # The two are equal numbers (MSE is symmetric): what tells them apart is where each sends
    # its gradient. The codebook term moves the codes and not the encoder ...
    codebook.backward(retain_graph=True)
    assert z_e.grad is None and vq.codebook.grad.abs().sum() > 0
    vq.codebook.grad = None
    commitment.backward()  # ... and the commitment term moves the encoder, not the codes
    assert vq.codebook.grad is None and z_e.grad.abs().sum() > 0


def test_ema_update_moves_codes_to_the_mean_of_their_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQVAEConfig(num_codes=4, embedding_dim=2, codebook_decay=0.5,
                                     restart_dead_codes=False)).train()
    vq.initialised.fill_(True)
    vq.codebook.data = torch.tensor([[0., 0.], [10., 10.], [-10., 10.], [10., -10.]])
    vq.ema_sum.copy_(vq.codebook), vq.ema_count.fill_(1.0)
    target = torch.tensor([1.0, 1.0])
    for _ in range(10):
        vq((target + 0.1 * torch.randn(64, 2)).T.reshape(1, 2, 8, 8))  # (1, D, 8, 8)
    assert torch.allclose(vq.codebook[0], target, atol=0.05)
    assert torch.allclose(vq.codebook[1], torch.tensor([10., 10.]), atol=0.2)  # unpicked: stay


def test_dead_codes_are_restarted_on_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(VQVAEConfig(num_codes=8, embedding_dim=2)).train()
    vq.initialised.fill_(True)
    vq.codebook.data = torch.tensor([[0., 0.]] + [[100., 100.]] * 7)
    z_e = 0.1 * torch.randn(1, 2, 8, 8)
    vq.usage[1:] = 0  # codes 1..7 never picked
    vq(z_e)
    assert vq.codebook[1:].abs().max() < 1  # moved onto the data
    assert vq.dead_codes() == 0


def test_vqvae_loss_falls_on_tiny_shapes():
    torch.manual_seed(0)
    x = shapes_data(32, 16, seed=0).batch(torch.arange(32))[0]
    model = VQVAE(VQVAEConfig(resolution=16, channels=16, num_codes=32, embedding_dim=8))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        loss, figures = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(figures["mse"])
    assert sum(losses[-5:]) < sum(losses[:5]) / 4, (losses[:5], losses[-5:])
    assert model.reconstruct(x).shape == x.shape
    assert model.decode_codes(torch.zeros(2, 4, 4, dtype=torch.long)).shape == (2, 3, 16, 16)


def tiny_code_prior():
    vq = VQVAEConfig(resolution=16, channels=16, num_codes=32, embedding_dim=8)
    return CodePrior(CodePriorConfig(vqvae=dataclasses.asdict(vq), width=32, layers=2, heads=2))


def test_code_prior_predicts_each_code_from_the_codes_before_it_only():
    torch.manual_seed(0)
    model = tiny_code_prior()
    codes = torch.randint(32, (3, 10))
    changed = codes.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 32
    diff = (model.logits(codes) - model.logits(changed)).abs().amax(dim=(0, 2))  # (11,)
    # position j + 1 predicts code j + 1 from codes 0..j: changing code 6 moves positions 7..10
    assert diff[:7].max() == 0 and diff[7:].min() > 0, diff


def test_code_prior_learns_the_code_grids_of_a_few_scenes_and_samples_them():
    torch.manual_seed(0)
    model = tiny_code_prior()
    x = shapes_data(4, 16, seed=0).batch(torch.arange(4))[0]
    model.vqvae.train()(x)  # one training-mode pass starts the codes on encoder outputs
    grids = model.encode(x)                                                # (4, 16)
    assert len({tuple(g.tolist()) for g in grids}) == 4  # four different code grids
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    bits = []
    for _ in range(150):
        loss, figures = model.train().loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        bits.append(figures["bits_per_code"])
    # The floor: which of the 4 grids is 2 bits, spread over 16 codes, 0.125 bits per code.
    assert bits[0] > 4 and 0.12 < sum(bits[-5:]) / 5 < 0.2, (bits[:3], bits[-5:])
    torch.manual_seed(1)
    sampled = model.eval().sample_codes(8).flatten(1)                      # (8, 16)
    memorised = [any(torch.equal(s, g) for g in grids) for s in sampled]
    assert sum(memorised) >= 7, memorised
    assert model.sample(2).shape == (2, 3, 16, 16)

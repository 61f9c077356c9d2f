"""VQ-VAE: a discrete bottleneck (van den Oord et al. 2017, arXiv 1711.00937).

The encoder maps an image to a grid of vectors z_e; each is replaced by its nearest entry of a
learned codebook, z_q = e_k with k = argmin_j ||z_e - e_j||; the decoder rebuilds the image from
z_q. The argmin has no gradient, so the straight-through estimator copies the decoder's gradient
from z_q to z_e. The loss (their eq. 3) is

    L = ||x - dec(z_q)||^2 + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,

reconstruction, codebook (moves codes towards the encoder outputs) and commitment (keeps the
encoder near its codes), sg = stop-gradient, beta = 0.25. Alternatively the codebook follows an
exponential moving average of the vectors assigned to each code (their appendix A.1). Codes that
no vector picks ("dead codes") are restarted on random encoder outputs. Usage is reported as
perplexity, exp(entropy of the code histogram): K when all K codes are used equally.

The VQ-VAE alone only reconstructs. To draw new images the paper fits a prior over the grid of
codes, autoregressive in raster order (their section 3.2, a PixelCNN),

    p(c) = prod_j p(c_j | c_1 ... c_{j-1}),

trained by cross-entropy on the codes of the training images with the VQ-VAE frozen; a sample's
codes are then decoded. CodePrior is that prior as a small causal transformer (as DALL-E's and
VQGAN's later were), the frozen VQ-VAE inside it, so one checkpoint draws images. Its negative
log-likelihood on test images, in bits per code, says how much structure it found: log2 K if none.

DALL-E (the first) tokenised images this way; DALL-E 2 replaced the tokens with CLIP latents.

Defines: VQVAEConfig, ResidualBlock, straight_through, VectorQuantizer, VQVAE, CodePriorConfig,
CodePrior (encode, logits, nll, loss, sample_codes, sample).
Run `python vqvae.py` to train on shapes for two to three minutes: reconstruction error, usage,
the prior's bits per code, and samples.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class VQVAEConfig:
    resolution: int = 32
    channels: int = 64             # width of the convolutional stacks
    embedding_dim: int = 32        # D, the size of one code vector
    num_codes: int = 128           # K, the codebook size
    downsample: int = 4            # each latent vector stands for a 4x4 patch
    commitment_cost: float = 0.25  # beta
    codebook_decay: float = 0.0    # 0: learn codes by the codebook loss; e.g. 0.99: EMA updates
    restart_dead_codes: bool = True


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the paper's block."""

    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        return x + self.body(x)


def straight_through(z_e, z_q):
    """The value of z_q, the gradient of the identity with respect to z_e (section 3.1: the
    decoder's gradient is copied to the encoder): z_e + sg[z_q - z_e]."""
    return z_e + (z_q - z_e).detach()


class VectorQuantizer(nn.Module):
    """(B, D, h, w) continuous -> nearest codes, with the straight-through gradient."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.codebook = nn.Parameter(torch.randn(cfg.num_codes, cfg.embedding_dim)
                                     / cfg.embedding_dim)
        self.codebook.requires_grad_(cfg.codebook_decay == 0)
        # Running statistics: the EMA cluster sizes and sums, and usage to find dead codes.
        self.register_buffer("ema_count", torch.ones(cfg.num_codes))
        self.register_buffer("ema_sum", self.codebook.detach().clone())
        self.register_buffer("usage", torch.ones(cfg.num_codes) / cfg.num_codes)
        self.register_buffer("initialised", torch.tensor(False))

    def nearest(self, flat):
        """(N, D) -> (N,) index of the closest code: ||z||^2 - 2 z.e + ||e||^2, minimised over e."""
        distances = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.T
                     + self.codebook.pow(2).sum(1))  # (N, K)
        return distances.argmin(1)

    def forward(self, z_e):
        b, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)                  # (B*h*w, D)
        codes = self.nearest(flat)                                     # (B*h*w,)
        z_q = self.codebook[codes].view(b, h, w, d).permute(0, 3, 1, 2)  # (B, D, h, w)
        commitment = F.mse_loss(z_e, z_q.detach())
        codebook = (F.mse_loss(z_q, z_e.detach()) if self.cfg.codebook_decay == 0
                    else z_e.new_zeros(()))
        one_hot = F.one_hot(codes, self.cfg.num_codes).type_as(flat)   # (N, K)
        if self.training:
            self.update(flat, one_hot)
        probs = one_hot.mean(0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        z_q = straight_through(z_e, z_q)
        return z_q, codes.view(b, h, w), codebook, commitment, perplexity

    @torch.no_grad()
    def update(self, flat, one_hot):
        """EMA codebook step (if enabled) and restarts of codes no vector has picked lately."""
        if not self.initialised:  # start the codes on encoder outputs, not far from all of them
            self.restart(torch.ones_like(self.usage, dtype=torch.bool), flat)
            self.initialised.fill_(True)
        decay = self.cfg.codebook_decay
        if decay > 0:
            self.ema_count.mul_(decay).add_(one_hot.sum(0), alpha=1 - decay)
            self.ema_sum.mul_(decay).add_(one_hot.T @ flat, alpha=1 - decay)
            n = self.ema_count.sum()  # Laplace smoothing keeps empty clusters from dividing by 0
            count = (self.ema_count + 1e-5) / (n + self.cfg.num_codes * 1e-5) * n
            self.codebook.copy_(self.ema_sum / count[:, None])
        self.usage.mul_(0.99).add_(one_hot.mean(0), alpha=0.01)
        if self.cfg.restart_dead_codes and self.dead().any():
            self.restart(self.dead(), flat)

    def dead(self):
        """Codes whose usage has decayed ~350 steps unpicked from a fair share (1/K)."""
        return self.usage < 0.03 / self.cfg.num_codes

    def restart(self, which, flat):
        picks = flat[torch.randint(len(flat), (int(which.sum()),), device=flat.device)]
        self.codebook[which] = picks
        self.ema_sum[which], self.ema_count[which] = picks, 1.0
        self.usage[which] = 1.0 / self.cfg.num_codes

    def dead_codes(self):
        return int(self.dead().sum())


class VQVAE(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.resolution % cfg.downsample or cfg.downsample not in (2, 4, 8):
            raise ValueError(f"VQ-VAE needs downsample in 2, 4, 8 dividing the resolution, "
                             f"got {cfg.downsample} at {cfg.resolution} px")
        self.cfg = cfg
        c, stages = cfg.channels, cfg.downsample.bit_length() - 1
        down = [nn.Conv2d(3 if i == 0 else c, c, 4, stride=2, padding=1) for i in range(stages)]
        self.encoder = nn.Sequential(*sum(([conv, nn.ReLU()] for conv in down), [])[:-1],
                                     ResidualBlock(c), ResidualBlock(c), nn.ReLU(),
                                     nn.Conv2d(c, cfg.embedding_dim, 1))
        up = [nn.ConvTranspose2d(c, c if i < stages - 1 else 3, 4, stride=2, padding=1)
              for i in range(stages)]
        self.decoder = nn.Sequential(nn.Conv2d(cfg.embedding_dim, c, 3, padding=1),
                                     ResidualBlock(c), ResidualBlock(c),
                                     *sum(([nn.ReLU(), conv] for conv in up), []))
        self.quantizer = VectorQuantizer(cfg)

    def forward(self, x):
        """(B, 3, R, R) -> reconstruction (B, 3, R, R) and the quantiser's outputs."""
        z_q, codes, codebook, commitment, perplexity = self.quantizer(self.encoder(x))
        return self.decoder(z_q), codes, codebook, commitment, perplexity

    def loss(self, x):
        x_hat, _, codebook, commitment, perplexity = self(x)
        mse = F.mse_loss(x_hat, x)
        loss = mse + codebook + self.cfg.commitment_cost * commitment
        return loss, {"mse": mse.item(), "perplexity": perplexity.item(),
                      "dead": self.quantizer.dead_codes()}

    @torch.no_grad()
    def reconstruct(self, x):
        return self(x)[0].clamp(-1, 1)

    @torch.no_grad()
    def decode_codes(self, codes):
        """(B, h, w) code indices -> images: what a prior over codes would feed the decoder."""
        return self.decoder(self.quantizer.codebook[codes].permute(0, 3, 1, 2)).clamp(-1, 1)


# ----------------------------------------------------------------------------------------------
# A prior over the codes: what makes the VQ-VAE generative.

@dataclass
class CodePriorConfig:
    vqvae: dict = None     # the frozen VQ-VAE's config, from its checkpoint (stages.py)
    width: int = 64
    layers: int = 4
    heads: int = 4


class CodePrior(nn.Module):
    """p(c) over the VQ-VAE's (h, w) grid of codes in raster order, one code at a time."""

    def __init__(self, cfg):
        super().__init__()
        if not cfg.vqvae:
            raise ValueError("a code prior needs its VQ-VAE's config: train the vqvae stage "
                             "first (python train.py vqvae), then code_prior with the same --out")
        self.cfg = cfg
        self.vqvae = VQVAE(VQVAEConfig(**cfg.vqvae)).requires_grad_(False)
        v, w = self.vqvae.cfg, cfg.width
        self.side = v.resolution // v.downsample
        self.code_embed = nn.Embedding(v.num_codes + 1, w)  # the last entry: the start token
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(self.side ** 2, w))
        layer = nn.TransformerEncoderLayer(w, cfg.heads, 4 * w, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(w)
        self.head = nn.Linear(w, v.num_codes)

    def train(self, mode=True):
        super().train(mode)
        self.vqvae.eval()  # frozen: no codebook updates, no restarts
        return self

    @torch.no_grad()
    def encode(self, images):
        """(B, 3, R, R) -> (B, h w) code indices in raster order."""
        return self.vqvae.quantizer(self.vqvae.encoder(images))[1].flatten(1)

    def logits(self, codes):
        """(B, j) codes so far -> (B, j + 1, K): the distribution of each code given those
        before it (position 0 sees the start token alone)."""
        start = torch.full((len(codes), 1), self.vqvae.cfg.num_codes, device=codes.device)
        x = self.code_embed(torch.cat([start, codes], 1))                      # (B, j+1, w)
        n = x.shape[1]
        causal = torch.full((n, n), float("-inf"), device=x.device).triu(1)
        x = self.transformer(x + self.positional_embedding[:n], mask=causal, is_causal=True)
        return self.head(self.ln_final(x))

    def nll(self, codes):
        """(B, h w) codes -> (B, h w): -log p(c_j | c_<j) of each, in nats."""
        logits = self.logits(codes[:, :-1])                                     # (B, h w, K)
        return F.cross_entropy(logits.flatten(0, 1).float(), codes.flatten(),
                               reduction="none").view_as(codes)

    def loss(self, images):
        nll = self.nll(self.encode(images)).mean()
        return nll, {"bits_per_code": nll.item() / math.log(2)}

    @torch.no_grad()
    def sample_codes(self, n, temperature=1.0):
        """(n, h, w) code grids, drawn one code at a time in raster order."""
        if not temperature > 0:
            raise ValueError(f"temperature must be above 0 (1: as trained), got {temperature}")
        codes = torch.zeros(n, 0, dtype=torch.long, device=self.head.weight.device)
        for _ in range(self.side ** 2):
            probs = F.softmax(self.logits(codes)[:, -1].float() / temperature, -1)   # (n, K)
            codes = torch.cat([codes, torch.multinomial(probs, 1)], 1)
        return codes.view(n, self.side, self.side)

    def sample(self, n, temperature=1.0):
        """n images (n, 3, R, R) in [-1, 1]: sampled codes, decoded."""
        return self.vqvae.decode_codes(self.sample_codes(n, temperature))


if __name__ == "__main__":
    import time

    from data import save_grid, shapes_data
    torch.manual_seed(0)
    data = shapes_data(4000, 32)
    model = VQVAE(VQVAEConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.time()
    for step in range(501):
        loss, figures = model.loss(data.batch(torch.randint(len(data), (64,)))[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: mse {figures['mse']:.4f}, perplexity {figures['perplexity']:.1f}, "
                  f"dead codes {figures['dead']} ({time.time() - start:.0f}s)")
    # Then a prior over the codes of the trained (now frozen) VQ-VAE, and samples from it.
    prior = CodePrior(CodePriorConfig(vqvae=asdict(model.cfg)))
    prior.vqvae.load_state_dict(model.state_dict())
    opt = torch.optim.Adam([p for p in prior.parameters() if p.requires_grad], lr=1e-3)
    for step in range(301):
        loss, figures = prior.train().loss(data.batch(torch.randint(len(data), (64,)))[0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"prior step {step}: {figures['bits_per_code']:.2f} bits per code (uniform: "
                  f"{math.log2(model.cfg.num_codes):.0f}) ({time.time() - start:.0f}s)")
    x = data.batch(torch.arange(8))[0]
    save_grid(torch.cat([x, model.reconstruct(x), prior.eval().sample(8)]), "out/vqvae_demo.png",
              scale=2)
    print("wrote out/vqvae_demo.png (rows: data, reconstructions, samples through the prior)")

"""CLIP: a text encoder and an image encoder trained so matching pairs point the same way.

Radford et al. 2021 (arXiv 2103.00020). A batch of N (image, caption) pairs gives an N x N matrix
of cosine similarities between L2-normalised embeddings, scaled by a learned temperature,
    logits = exp(logit_scale) * I_e @ T_e^T                      (their Figure 3),
and the loss is the cross-entropy of picking the right caption for each image and the right
image for each caption, averaged (the symmetric InfoNCE loss). logit_scale starts at log(1/0.07)
and is clamped at log(100) so that the logits cannot grow without bound.

The text encoder is a causal transformer over the caption's tokens (bytes, or the words of a closed
vocabulary); its feature at the end-of-text token, layer-normed and projected, is the text
embedding. The image encoder is a small ViT or convolutional network. Once trained, CLIP is frozen:
DALL-E 2's prior maps its text embeddings to its image embeddings, which its decoder inverts.

CLIP trained on captions alone tends to learn a bag of words: "a red circle left of a blue square"
and "a blue circle left of a red square" get one embedding, and unCLIP then draws the colours on
the wrong objects (the paper's limitations section). Two things make ours bind: an image encoder
that keeps where each feature is (ConvEncoder), and hard negatives in the loss, captions one edit
away from the truth (NegCLIP: Yuksekgonul et al. 2023). CLIP.loss takes them as `foils`;
stages.py's loss gets them from shapes.contrastive_targets, made beside the grammar they edit.

Zero-shot classification embeds one prompt per class (or averages many: prompt ensembling) and
picks the class whose embedding is nearest the image's.

Defines: ByteTokenizer, WordTokenizer, caption_vocabulary, CLIPConfig, Block (reused by prior.py),
TextEncoder, ViTEncoder, ConvEncoder, CLIP (encode_text, encode_image, loss), contrastive_loss,
normalise_embedding, image_embeddings (images -> CLIP features) and clip_embeddings (what the prior
and decoder see), zero_shot_weights, recall_at_k and retrieval. Needs torch.
Run `python clip.py` to train a small CLIP on shapes for a minute and print its retrieval.
"""
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Tokenizers: UTF-8 bytes (no text is ever out of vocabulary), or the words of a closed vocabulary.

class ByteTokenizer:
    """Bytes 0..255, then start-of-text, end-of-text and padding; a fixed context length. Longer
    text is truncated so the end token fits (a warning, once per tokenizer, names the first)."""
    unit = "bytes"
    warned = False  # set on the instance by the first truncation

    def __init__(self, context_length=80):
        self.context_length = context_length
        self.sot, self.eot, self.pad, self.vocab_size = 256, 257, 258, 259

    def split(self, text):
        return list(text.encode("utf-8", errors="replace"))  # a lone surrogate becomes "?"

    def encode(self, text):
        body = self.split(text)
        if len(body) > self.context_length - 2:
            if not self.warned:  # once: a data set may hold thousands
                warnings.warn(f"captions longer than {self.context_length - 2} {self.unit} are "
                              f"truncated (the first: {text[:40]!r}...); raise --context_length "
                              "to keep more")
                self.warned = True
            body = body[: self.context_length - 2]
        return [self.sot] + body + [self.eot] + [self.pad] * (self.context_length - 2 - len(body))

    def __call__(self, texts):
        """list of str -> (B, context_length) int64."""
        return torch.tensor([self.encode(t) for t in texts], dtype=torch.long)

    def check(self, prompts):
        """Refuse empty prompts, over-long ones and (words) unknown words, in one line each."""
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompt {i} is empty: write what the image should show")
            size = len(self.split(prompt))
            if size > self.context_length - 2:
                raise ValueError(f"prompt {i} is {size} {self.unit}; this CLIP reads at most "
                                 f"{self.context_length - 2}: shorten it")


class WordTokenizer(ByteTokenizer):
    """The words of a closed vocabulary (the training captions'), then start-of-text, end-of-text
    and padding. A shapes caption is then at most 17 tokens instead of 78 bytes, so the text
    transformer, the prior and the decoder's attention read sequences a quarter as long. A word
    outside the vocabulary is an error, not a guess: open-vocabulary data keeps bytes."""
    unit = "words"

    def __init__(self, vocabulary, context_length=24):
        self.vocabulary, self.context_length = tuple(vocabulary), context_length
        self.index = {word: i for i, word in enumerate(self.vocabulary)}
        self.sot, self.eot, self.pad = range(len(self.vocabulary), len(self.vocabulary) + 3)
        self.vocab_size = len(self.vocabulary) + 3

    def split(self, text):
        words = text.lower().split()
        for word in words:
            if word not in self.index:
                raise ValueError(f"{word!r} is not one of the {len(self.vocabulary)} words this "
                                 f"CLIP was trained on ({' '.join(self.vocabulary[:8])} ...): "
                                 "rephrase, or train with --tokenizer=byte")
        return [self.index[word] for word in words]


def caption_vocabulary(captions):
    """The sorted words of a list of captions: a WordTokenizer's vocabulary."""
    return tuple(sorted({word for caption in captions for word in caption.lower().split()}))


@dataclass
class CLIPConfig:
    embed_dim: int = 64          # the joint embedding
    tokenizer: str = "word"      # "word" (a closed vocabulary) or "byte" (open)
    vocabulary: tuple = ()       # the words (stages.data_fields: the training captions')
    context_length: int = 24     # tokens, with start and end (shapes: <= 17 words, 78 bytes)
    text_width: int = 96
    text_layers: int = 3
    text_heads: int = 4
    image_encoder: str = "conv"  # "conv" (keeps where things are: it binds) or "vit"
    hard_negatives: int = 2      # minimal foils per two-object shapes caption in the loss
    resolution: int = 32
    patch_size: int = 4
    vision_width: int = 96
    vision_layers: int = 3
    vision_heads: int = 4


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width, heads, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def attention(self, x):
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, heads, N, w/h)
        return self.proj(out.transpose(1, 2).reshape(b, n, w))

    def forward(self, x):  # (B, N, width) -> (B, N, width)
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextEncoder(nn.Module):
    """Tokens (B, L) -> (B, embed_dim): the causal transformer's feature at end-of-text."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.tokenizer == "word" and not cfg.vocabulary:
            raise ValueError("a word tokenizer needs its vocabulary (clip.caption_vocabulary of "
                             "the training captions), or use tokenizer='byte'")
        self.tokenizer = (WordTokenizer(cfg.vocabulary, cfg.context_length)
                          if cfg.tokenizer == "word" else ByteTokenizer(cfg.context_length))
        self.token_embedding = nn.Embedding(self.tokenizer.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(
            0.01 * torch.randn(cfg.context_length, cfg.text_width))
        # Causal, as in CLIP: each token sees only those before it, so the end-of-text token
        # summarises the caption (and the same encoder can serve a language model).
        self.blocks = nn.Sequential(*[Block(cfg.text_width, cfg.text_heads, causal=True)
                                      for _ in range(cfg.text_layers)])
        self.ln_final = nn.LayerNorm(cfg.text_width)
        self.projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)

    def forward(self, tokens, return_tokens=False):
        """tokens (B, L) -> (B, embed_dim), and with return_tokens every token's features
        (B, L, width), zero at padding (a zero feature is "no token" to the prior and decoder)."""
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        x = self.ln_final(self.blocks(x))                                  # (B, L, width)
        eot = (tokens == self.tokenizer.eot).int().argmax(dim=1)           # (B,)
        features = self.projection(x[torch.arange(len(x)), eot])          # (B, embed_dim)
        if not return_tokens:
            return features
        return features, x * (tokens != self.tokenizer.pad)[..., None]


class ViTEncoder(nn.Module):
    """Images (B, 3, R, R) -> (B, embed_dim): patches, a class token, pre-norm blocks."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.resolution % cfg.patch_size:
            raise ValueError(f"patch_size {cfg.patch_size} must divide resolution "
                             f"{cfg.resolution}")
        width, n = cfg.vision_width, (cfg.resolution // cfg.patch_size) ** 2
        self.patchify = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size)
        self.class_token = nn.Parameter(0.02 * torch.randn(width))
        self.positional_embedding = nn.Parameter(0.02 * torch.randn(n + 1, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.blocks = nn.Sequential(*[Block(width, cfg.vision_heads)
                                      for _ in range(cfg.vision_layers)])
        self.projection = nn.Linear(width, cfg.embed_dim, bias=False)

    def forward(self, images):
        x = self.patchify(images).flatten(2).transpose(1, 2)                # (B, N, width)
        x = torch.cat([self.class_token.expand(len(x), 1, -1), x], dim=1)  # (B, N + 1, width)
        x = self.blocks(self.ln_pre(x + self.positional_embedding))
        return self.projection(self.ln_post(x[:, 0]))                    # the class token


class ConvEncoder(nn.Module):
    """Images (B, 3, R, R) -> (B, embed_dim): three stride-2 convolution stages, then a projection
    of the whole (R/8 x R/8) feature map. Global average pooling would add up the cells and forget
    which colour was where ("red left of blue" and "blue left of red" alike); reading each cell
    with its own weights keeps it, as CLIP's attention pooling with positional embeddings does."""

    def __init__(self, cfg):
        super().__init__()
        w, layers, c_in = cfg.vision_width, [], 3
        for c_out in (w // 4, w // 2, w):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1),
                       nn.GroupNorm(math.gcd(8, c_out), c_out),
                       nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU()]
            c_in = c_out
        self.net = nn.Sequential(*layers, nn.Flatten())                     # (B, w R^2 / 64)
        self.projection = nn.Linear(w * (cfg.resolution // 8) ** 2, cfg.embed_dim, bias=False)

    def forward(self, images):
        return self.projection(self.net(images))


class CLIP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg.image_encoder not in ("vit", "conv"):
            raise ValueError(f"image_encoder must be 'vit' or 'conv', got {cfg.image_encoder!r}")
        if cfg.tokenizer not in ("word", "byte"):
            raise ValueError(f"tokenizer must be 'word' or 'byte', got {cfg.tokenizer!r}")
        self.cfg = cfg
        self.text = TextEncoder(cfg)
        self.visual = ViTEncoder(cfg) if cfg.image_encoder == "vit" else ConvEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, texts, return_tokens=False):
        """list of str -> (B, embed_dim) unnormalised text embeddings; with return_tokens, also
        every token's (B, context_length, text_width) features: the prior's and decoder's view."""
        texts = [texts] if isinstance(texts, str) else texts
        tokens = self.text.tokenizer(texts)                                # (B, L), on the CPU
        # Causal attention: nothing after the last end-of-text token can change the features up
        # to it, so the padding after it is cut (exact; shapes batches: 17 of 24 positions).
        length = int((tokens == self.text.tokenizer.eot).int().argmax(dim=1).max()) + 1
        out = self.text(tokens[:, :length].to(self.logit_scale.device), return_tokens)
        if not return_tokens:
            return out
        features, per_token = out  # padded back to the full context: one shape for every batch
        return features, F.pad(per_token, (0, 0, 0, tokens.shape[1] - length))

    def encode_image(self, images):
        """(B, 3, R, R) floats in [-1, 1] -> (B, embed_dim) unnormalised image embeddings."""
        if images.shape[-1] != self.cfg.resolution:
            raise ValueError(f"this CLIP takes {self.cfg.resolution} px images, got "
                             f"{images.shape[-1]} px")
        return self.visual(images)

    def logits(self, images, texts):
        """(B_img, B_txt) scaled cosine similarities."""
        with torch.no_grad():  # clamp, as CLIP does: at most 100, and never below 1
            self.logit_scale.clamp_(0, math.log(100))
        image_e = F.normalize(self.encode_image(images), dim=-1)
        text_e = F.normalize(self.encode_text(texts), dim=-1)
        return self.logit_scale.exp() * image_e @ text_e.T

    def loss(self, images, texts, foils=(), keys=None):
        """Symmetric InfoNCE over a batch of pairs. foils: extra captions false of every image in
        the batch, competing with the true captions image-to-text only (hard negatives: minimal
        edits of its captions, as in NegCLIP, Yuksekgonul et al. 2023). keys: what each caption
        describes (default: its text); pairs with one key are not each other's negatives."""
        logits = self.logits(images, list(texts) + list(foils))                # (B, B + F)
        keys = list(texts) if keys is None else keys
        same = torch.tensor([[a == b for b in keys] for a in keys], device=logits.device)
        accuracy = same[torch.arange(len(logits)), logits.argmax(1).clamp(max=len(keys) - 1)]
        accuracy &= logits.argmax(1) < len(keys)  # a foil on top is wrong
        return contrastive_loss(logits, same), {"accuracy": accuracy.float().mean().item(),
                                                "temperature": 1 / self.logit_scale.exp().item()}


def contrastive_loss(logits, same=None):
    """Symmetric InfoNCE on logits (B, B + F) whose column j < B holds image j's caption and
    whose F further columns are foils: cross-entropy over captions per image and over images per
    caption, averaged. same (B, B) bool marks pairs that share a description: the target is
    spread over them evenly instead of making them negatives (default: the diagonal alone)."""
    b = len(logits)
    if same is None:
        same = torch.eye(b, dtype=torch.bool, device=logits.device)
    target = same.float() / same.sum(1, keepdim=True)          # (B, B), symmetric, rows sum to 1
    image_to_text = F.cross_entropy(logits, F.pad(target, (0, logits.shape[1] - b)))
    return (image_to_text + F.cross_entropy(logits[:, :b].T, target)) / 2


def normalise_embedding(z):
    """Unit length (CLIP compares embeddings by cosine only), times sqrt(D), so each coordinate
    has about unit variance: the scale of the N(0, I) noise the prior's diffusion adds to it.
    The prior and the decoder both see embeddings on this scale."""
    return F.normalize(z, dim=-1) * math.sqrt(z.shape[-1])


@torch.no_grad()
def image_embeddings(clip_model, images, chunk=500):
    """Images (N, 3, R, R), uint8 or in [-1, 1], of any size -> (N, D) unit-length CLIP image
    embeddings on the model's device: the one way images become CLIP features. Images larger
    than CLIP's are box-downsampled (area); a batch is encoded in chunks."""
    embeddings = []
    for x in images.split(chunk):
        x = x.to(clip_model.logit_scale.device)  # a batch may come from the CPU
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
        if x.shape[-1] != clip_model.cfg.resolution:
            x = F.interpolate(x, size=clip_model.cfg.resolution, mode="area")
        embeddings.append(F.normalize(clip_model.encode_image(x), dim=-1))
    return torch.cat(embeddings)


@torch.no_grad()
def clip_embeddings(clip_model, images, captions):
    """What the prior and the decoder see of a batch: z_i (B, D) and z_t (B, D) on
    normalise_embedding's scale, and the caption's token features (B, L, W)."""
    z_t, tokens = clip_model.encode_text(captions, return_tokens=True)
    z_i = image_embeddings(clip_model, images) * math.sqrt(z_t.shape[-1])
    return z_i, normalise_embedding(z_t), tokens


# ----------------------------------------------------------------------------------------------
# Using a trained CLIP: zero-shot classification and retrieval.

@torch.no_grad()
def zero_shot_weights(model, prompts_per_class, templates=("{}",)):
    """One unit vector per class: the normalised mean of the normalised embeddings of its
    prompts, each put in every template (prompt ensembling, CLIP section 3.1.4). (C, embed_dim)."""
    weights = []
    for prompts in prompts_per_class:
        texts = [t.format(p) for p in prompts for t in templates]
        weights.append(F.normalize(F.normalize(model.encode_text(texts), dim=-1).mean(0), dim=-1))
    return torch.stack(weights)


def recall_at_k(similarity, same, k):
    """Share of queries (rows) whose top-k columns include a match; same[i, j] marks matches
    (items with identical captions all count, since the caption cannot tell them apart)."""
    top = similarity.topk(min(k, similarity.shape[1]), dim=1).indices  # (Q, k)
    return same.gather(1, top).any(dim=1).float().mean().item()


@torch.no_grad()
def retrieval(model, images, captions):
    """Text-to-image and image-to-text recall@1, @5 and @10 over N pairs: images (N, 3, R, R)
    and their captions (N strings). Chance: k / N."""
    text_e = torch.cat([model.encode_text(captions[i:i + 250])
                        for i in range(0, len(captions), 250)])
    similarity = image_embeddings(model, images) @ F.normalize(text_e, dim=-1).T   # (N, N)
    same = torch.tensor([[a == b for b in captions] for a in captions], device=similarity.device)
    return {f"{name}_r@{k}": recall_at_k(s, same, k)
            for name, s in [("image_to_text", similarity), ("text_to_image", similarity.T)]
            for k in (1, 5, 10)}


if __name__ == "__main__":
    import time

    import data as datasets
    torch.manual_seed(0)
    train_data = datasets.shapes_data(20000, 32, seed=0, split="train")
    model = CLIP(CLIPConfig(vocabulary=caption_vocabulary(c[0] for c in train_data.captions)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    start = time.time()
    for step in range(301):
        images, captions, _ = train_data.batch(torch.randint(len(train_data), (64,)))
        loss, figures = model.loss(images, captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"step {step}: loss {loss.item():.3f}, batch accuracy {figures['accuracy']:.2f} "
                  f"({time.time() - start:.0f}s)")
    test = datasets.shapes_data(1000, 32, seed=0, split="train", prefixes=False, stream="test")
    print("retrieval on 1000 test pairs:",
          retrieval(model.eval(), test.images, [c[0] for c in test.captions]))

"""clip.py: the contrastive loss by hand, the clamped temperature, learning, loading, metrics."""
import math

import pytest
import torch

import clip
import train
from checkpoint import CheckpointError, load_clip, save_checkpoint
from clip import ByteTokenizer
from data import shapes_data

TINY = dict(embed_dim=16, tokenizer="byte", context_length=80, text_width=32, text_layers=1,
            text_heads=2, resolution=16, patch_size=4, vision_width=32, vision_layers=1,
            vision_heads=2, image_encoder="vit")


def test_loss_is_the_symmetric_cross_entropy_computed_by_hand():
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(**TINY))
    images, texts = torch.rand(3, 3, 16, 16) * 2 - 1, ["a red circle", "a blue square", "abc"]
    loss, _ = model.loss(images, texts)
    logits = model.logits(images, texts).double()
    per_image = [-logits[i, i] + math.log(sum(math.exp(v) for v in logits[i].tolist()))
                 for i in range(3)]
    per_text = [-logits[i, i] + math.log(sum(math.exp(v) for v in logits[:, i].tolist()))
                for i in range(3)]
    assert abs(loss.item() - (sum(per_image) / 3 + sum(per_text) / 3) / 2) < 1e-5
    i = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    t = torch.nn.functional.normalize(model.encode_text(texts), dim=-1)
    assert torch.allclose(logits.float(), (1 / 0.07) * i @ t.T, atol=1e-4)  # the initial scale


def test_temperature_receives_gradient_and_stays_clamped():
    model = clip.CLIP(clip.CLIPConfig(**TINY))
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100
    loss, _ = model.loss(torch.rand(4, 3, 16, 16), ["a", "b", "c", "d"])
    assert model.logit_scale.item() == pytest.approx(math.log(100))
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad != 0


@pytest.mark.parametrize("image_encoder", ["vit", "conv"])
def test_tiny_clip_learns_to_match_shapes_captions(image_encoder):
    torch.manual_seed(0)
    data = shapes_data(8, 16, seed=2, prefixes=False)
    images, captions = data.images.float() / 127.5 - 1, [c[0] for c in data.captions]
    assert len(set(captions)) == 8
    model = clip.CLIP(clip.CLIPConfig(**dict(TINY, image_encoder=image_encoder)))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(150):
        loss, _ = model.loss(images, captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    figures = clip.retrieval(model.eval(), data.images, captions)
    assert figures["image_to_text_r@1"] >= 0.9 and figures["text_to_image_r@1"] >= 0.9, figures


def test_recall_counts_identical_captions_as_matches():
    similarity = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.1, 0.8], [0.0, 0.3, 0.4]])
    same = torch.eye(3, dtype=torch.bool)
    assert clip.recall_at_k(similarity, same, 1) == pytest.approx(1 / 3)
    assert clip.recall_at_k(similarity, same, 2) == pytest.approx(2 / 3)
    same[0, 1] = same[1, 0] = True  # items 0 and 1 share a caption
    assert clip.recall_at_k(similarity, same, 1) == pytest.approx(2 / 3)


def test_zero_shot_weights_are_unit_vectors_of_prompt_means():
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(**TINY)).eval()
    weights = clip.zero_shot_weights(model, [["a", "b"], ["c"]])
    assert weights.shape == (2, 16) and torch.allclose(weights.norm(dim=1), torch.ones(2))
    single = torch.nn.functional.normalize(model.encode_text(["c"]), dim=-1)[0]
    assert torch.allclose(weights[1], single, atol=1e-6)


def test_load_returns_a_frozen_model_and_refuses_other_stages(tmp_path):
    run = dict(train.RUN_DEFAULTS, resolution=16, n_train=32, batch_size=8, steps=2, warmup=1)
    train.train("clip", run, TINY, str(tmp_path), device="cpu", quiet=True)
    model = load_clip(str(tmp_path))
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.encode_text(["a small red circle on the left"]).shape == (1, 16)
    assert model.encode_image(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    with pytest.raises(ValueError, match="takes 16 px images"):
        model.encode_image(torch.zeros(1, 3, 32, 32))
    save_checkpoint(str(tmp_path / "clip.pt"), {"format": "unclip-from-scratch/1", "stage": "vae"})
    with pytest.raises(CheckpointError, match="holds a 'vae' model, not 'clip'"):
        load_clip(str(tmp_path))


def test_trains_from_a_metadata_jsonl_folder(tmp_path, capsys):
    from PIL import Image
    folder = tmp_path / "pairs"
    folder.mkdir()
    rows = []
    for i, colour in enumerate(["red", "blue", "green", "white"]):
        Image.new("RGB", (20, 20), colour).save(folder / f"{i}.png")
        rows.append('{"file_name": "%d.png", "text": "a %s square"}' % (i, colour))
    (folder / "metadata.jsonl").write_text("\n".join(rows))
    overrides = [f"--{k}={v}" for k, v in TINY.items() if k != "resolution"]
    train.main(["clip", "--data", f"folder:{folder}", "--resolution", "16", "--steps", "2",
                "--batch-size", "4", "--out", str(tmp_path / "run"), "--quiet"] + overrides)
    assert "image_to_text_r@1" in capsys.readouterr().out


def _random_text(rng, max_len=120):
    """Any code points, lone surrogates included (what pasting from anywhere can produce)."""
    return "".join(chr(rng.randint(1, 0x10FFFF)) if rng.random() < 0.3 else
                   chr(rng.randint(32, 126)) for _ in range(rng.randint(0, max_len)))


def test_tokenizer_round_trip_and_padding():
    tok = ByteTokenizer(context_length=32)
    tokens = tok(["a small red circle", "é"])
    assert tokens.shape == (2, 32)
    assert tokens[0, 0] == tok.sot and tokens[0, 19] == tok.eot
    assert (tokens[0, 20:] == tok.pad).all()
    assert tokens[0, 1:19].tolist() == list(b"a small red circle")
    assert tokens[1, 1:3].tolist() == list("é".encode("utf-8")) and tokens[1, 3] == tok.eot


def test_tokenizer_truncates_with_one_warning():
    tok = ByteTokenizer(context_length=10)
    with pytest.warns(UserWarning, match="truncated") as caught:
        tokens = tok(["a large purple triangle", "a small green square"])
        tok(["another long caption"])
    assert len(caught) == 1  # not one per caption
    assert tokens[0, -1] == tok.eot and tokens[0, 1:9].tolist() == list(b"a large ")


def test_tokenizer_fuzz_never_raises_and_keeps_its_shape():
    import random
    import warnings
    rng = random.Random(0)
    tok = ByteTokenizer(context_length=40)
    texts = [_random_text(rng) for _ in range(500)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the documented truncation warning
        tokens = tok(texts)
    assert tokens.shape == (500, 40) and tokens.min() >= 0 and tokens.max() < tok.vocab_size
    assert ((tokens == tok.eot).sum(1) == 1).all()      # one end token, always kept
    for t, row in zip(texts, tokens):
        body = list(t.encode("utf-8", errors="replace"))
        if len(body) <= 38:
            assert row[1:len(body) + 2].tolist() == body + [tok.eot]


def test_word_tokenizer_encodes_its_vocabulary_and_refuses_other_words():
    vocabulary = clip.caption_vocabulary(["a small red circle", "A large Blue square above"])
    assert vocabulary == ("a", "above", "blue", "circle", "large", "red", "small", "square")
    tok = clip.WordTokenizer(vocabulary, context_length=8)
    tokens = tok(["a blue circle", "red"])
    assert tokens[0].tolist() == [tok.sot, 0, 2, 3, tok.eot] + [tok.pad] * 3
    assert tok.vocab_size == len(vocabulary) + 3
    with pytest.raises(ValueError, match="'pink' is not one of the 8 words"):
        tok(["a pink circle"])
    with pytest.raises(ValueError, match="needs its vocabulary"):
        clip.CLIP(clip.CLIPConfig(**dict(TINY, tokenizer="word")))


def test_padding_is_cut_exactly_and_token_features_are_zero_there():
    torch.manual_seed(0)
    model = clip.CLIP(clip.CLIPConfig(**TINY)).eval()
    text, captions = model.text, ["a red circle", "a much longer caption than that"]
    tokens = text.tokenizer(captions)
    features, per_token = model.encode_text(captions, return_tokens=True)
    full = text.ln_final(text.blocks(text.token_embedding(tokens) + text.positional_embedding))
    eot = (tokens == text.tokenizer.eot).int().argmax(1)
    assert torch.allclose(features, text.projection(full[torch.arange(2), eot]), atol=1e-5)
    assert per_token.shape == (2, 80, 32)
    real = tokens != text.tokenizer.pad
    assert torch.allclose(per_token[real], full[real], atol=1e-5)
    assert (per_token[~real] == 0).all()


def test_same_descriptions_share_the_target_and_foils_are_image_to_text_negatives():
    torch.manual_seed(0)
    logits = torch.randn(3, 5)  # 3 pairs, then 2 foils
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    log_p_text, log_p_image = logits.log_softmax(1), logits[:, :3].log_softmax(0)
    # Images 0 and 1 have one description: half the target on each of their captions.
    image_to_text = -(log_p_text[0, :2].mean() + log_p_text[1, :2].mean() + log_p_text[2, 2]) / 3
    text_to_image = -(log_p_image[:2, 0].mean() + log_p_image[:2, 1].mean()
                      + log_p_image[2, 2]) / 3
    loss = clip.contrastive_loss(logits, same)
    assert abs(loss.item() - (image_to_text + text_to_image).item() / 2) < 1e-6
    # No foils and no duplicates: the plain symmetric InfoNCE.
    plain = (torch.nn.functional.cross_entropy(logits[:, :3], torch.arange(3))
             + torch.nn.functional.cross_entropy(logits[:, :3].T, torch.arange(3))) / 2
    assert abs(clip.contrastive_loss(logits[:, :3]).item() - plain.item()) < 1e-6

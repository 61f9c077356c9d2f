"""Mutation testing, small: break the code on purpose and check that the named tests go red.

    python bench/mutations.py            # every mutation; about 6 minutes on 2 cores
    python bench/mutations.py lab        # the course's break-it labs (notebooks/labs.py)
    python bench/mutations.py resume     # only those whose name contains "resume"

Each mutation replaces one exact piece of one file by a wrong version (a bug a test claims to
catch), in a copy of the repository, and runs the tests that claim it. "killed" means they
failed, as they should; "survived" means the suite cannot see that bug. The last line is the
score, killed/total, so the suite's strength is a number.
"""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, file, the right code, the bug, the tests that must catch it)
MUTATIONS = [
    ("skip-step-loses-last-checkpoint", "train.py",
     'elif run["on_nonfinite"] == "stop":  # "skip" leaves the weights and goes on',
     'elif run["on_nonfinite"] == "skip":\n            continue\n        else:',
     "tests/test_train.py -k can_skip"),
    ("nonfinite-gradient-applied", "train.py",
     "if torch.isfinite(loss) and torch.isfinite(grad_norm):", "if torch.isfinite(loss):",
     "tests/test_train.py -k nonfinite_gradients"),
    ("unknown-choice-accepted", "stages.py", "        if run[key] not in allowed:",
     "        if False:", "tests/test_train.py -k command_line_errors"),
    ("resume-ignores-run-settings", "train.py",
     "check_resumable(state, path, dict(config, **run, seed=seed), clip_model)",
     "check_resumable(state, path, config, clip_model)",
     "tests/test_train.py -k refuses_other_run_settings"),
    ("resume-restarts-the-ema", "train.py",
     '            ema.model.load_state_dict(state["ema"])\n', "            pass\n",
     "tests/test_train.py -k ema_that_reads_clip"),
    ("pickled-objects-loaded", "checkpoint.py",
     'torch.load(path, map_location="cpu", weights_only=True)',
     'torch.load(path, map_location="cpu", weights_only=False)',
     "tests/test_train.py -k pickled_object"),
    ("clip-input-left-on-cpu", "clip.py",
     "        x = x.to(clip_model.logit_scale.device)  # a batch may come from the CPU\n", "",
     "tests/test_train.py -k follow_the_model_device"),
    ("codebook-loss-moves-the-encoder", "vqvae.py",
     "codebook = (F.mse_loss(z_q, z_e.detach())", "codebook = (F.mse_loss(z_q.detach(), z_e)",
     "tests/test_vqvae.py -k codebook_and_commitment"),
    ("no-reparameterisation", "vae.py",
     "z = reparameterise(mean, logvar, torch.randn_like(mean))", "z = mean",
     "tests/test_vae.py -k reparameterised"),
    ("fid-commuting-formula", "evaluate.py",
     "cross = torch.linalg.eigvalsh(root_1 @ sigma_2 @ root_1).clamp(min=0).sqrt().sum()",
     "cross = (root_1 @ _sqrtm_psd(sigma_2)).trace()", "tests/test_evaluate.py"),
    ("v-consistently-negated", "diffusion.py",
     """        return (extract(self.sqrt_alphas_cumprod, t, x0) * eps
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def x0_from_v(self, x_t, t, v):
        return (extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)""",
     """        return -(extract(self.sqrt_alphas_cumprod, t, x0) * eps
                 - extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def x0_from_v(self, x_t, t, v):
        return (extract(self.sqrt_alphas_cumprod, t, x_t) * x_t
                + extract(self.sqrt_one_minus_alphas_cumprod, t, x_t) * v)""",
     "tests/test_diffusion.py -k v_is_the_published"),
    ("ddim-eta-zero-draws-noise", "diffusion.py", "sigma = eta * ((1 - abar_prev)",
     "sigma = (eta + 0.01) * ((1 - abar_prev)", "tests/test_diffusion.py -k deterministic"),
    ("no-label-dropout-in-ddpm-loss", "diffusion.py",
     "            y = drop_labels(y, self.cfg.p_uncond, self.cfg.num_classes)\n",
     "            pass\n", "tests/test_diffusion.py -k label_dropout"),
    ("decoder-caption-before-embedding", "decoder.py",
     "return torch.cat([extra, caption], dim=1)",
     "return torch.cat([caption, extra], dim=1)",
     "tests/test_decoder.py -k context_is"),
    ("decoder-ignores-embedding-vector", "decoder.py",
     "return self.unet(x_t, t, embedding=z_i, context=context",
     "return self.unet(x_t, t, embedding=0 * z_i, context=context",
     "tests/test_decoder.py -k context_is"),
    ("harsh-degradation-not-quantised", "upsample.py",
     "            low = torch.round((low.clamp(-1, 1) + 1) / 2 * levels) / levels * 2 - 1\n",
     "", "tests/test_upsample.py -k harsh"),
    ("cascade-scored-on-other-prompts", "evaluate.py",
     "prompts[:2 * n]).items()})", "prompts[:2 * n][::-1]).items()})",
     "tests/test_evaluate.py -k scored_on_its_own"),
    ("classifier-guidance-towards-another-class", "diffusion.py",
     "selected = log_probs[torch.arange(len(y)), y].sum()",
     "selected = log_probs[torch.arange(len(y)), (y + 1) % log_probs.shape[1]].sum()",
     "tests/test_diffusion.py -k noisy_classifier"),
    ("clip-fid-of-the-real-images-alone", "evaluate.py",
     "*feature_statistics(image_embeddings(clip_model, images).cpu()))",
     "*feature_statistics(image_embeddings(clip_model, real).cpu()))",
     "tests/test_train.py -k clip_fid"),
    ("variations-share-one-noise", "unclip.py",
     "z_i, decoder_guidance, steps, upsampler_steps)\n",
     "z_i, decoder_guidance, steps, upsampler_steps,\n                  same_noise=True)\n",
     "tests/test_unclip.py -k figures"),
    ("interpolation-draws-fresh-noise", "unclip.py",
     "x_T = torch.randn(1 if same_noise else len(z_i), 3, resolution, resolution)",
     "x_T = torch.randn(len(z_i), 3, resolution, resolution)",
     "tests/test_sample.py -k variations_interpolations"),
    ("import-up-the-ladder", "clip.py", "import torch.nn.functional as F\n",
     "import torch.nn.functional as F\nimport data  # noqa: F401\n", "tests/test_imports.py"),
    ("import-circle-through-a-function", "data.py", 'def load_data(spec, resolution=32',
     'def _circle():\n    import evaluate  # noqa: F401\n\n\ndef load_data(spec, resolution=32',
     "tests/test_imports.py -k circle"),
    ("foil-places-keeps-the-order", "shapes.py",
     '"places": text(b, relation, a)}', '"places": text(a, relation, b)}',
     "tests/test_shapes.py -k minimal_foils"),
    ("binding-counts-ties-as-wins", "evaluate.py",
     "+ 0.5 * (true_score[owner] == foil_score)", "+ 1.0 * (true_score[owner] == foil_score)",
     "tests/test_evaluate.py -k binding"),
    ("same-descriptions-made-negatives", "clip.py",
     "    target = same.float() / same.sum(1, keepdim=True)",
     "    target = torch.eye(b, device=logits.device)", "tests/test_clip.py -k same_descriptions"),
    ("foils-true-of-a-batch-image", "shapes.py",
     " if scene_key(f) not in described]", "]",
     "tests/test_shapes.py -k contrastive_targets"),
    ("caption-padding-features-kept", "clip.py",
     "        return features, x * (tokens != self.tokenizer.pad)[..., None]",
     "        return features, x",
     "tests/test_clip.py -k padding_is_cut"),
    ("decoder-ignores-the-embedding-altogether", "decoder.py",
     "        context, mask = self.context(z_i, tokens)\n",
     "        z_i = 0 * z_i\n        context, mask = self.context(z_i, tokens)\n",
     "tests/test_decoder.py -k invert_an_embedding"),
    ("decoder-attends-to-padding", "decoder.py",
     "context=context, context_mask=mask)", "context=context)",
     "tests/test_decoder.py -k without_its_padding"),
    ("min-snr-cap-ignored", "diffusion.py",
     "        return capped.clamp(max=self.min_snr_gamma) / implicit",
     "        return torch.ones_like(implicit)", "tests/test_diffusion.py -k min_snr"),
    ("ddp-not-wrapped", "train.py", "    if world > 1:  # the processes start from rank 0",
     "    if False:  # the processes start from rank 0", "tests/test_train.py -k torchrun"),
    ("ddp-ranks-share-one-half-batch", "train.py", "            index = index[rank::world]",
     "            index = index[:len(index) // world]", "tests/test_train.py -k torchrun"),
    ("held-out-images-also-in-train", "data.py",
     '    return test if split == "test" else order[len(test):].sort().values',
     '    return test if split == "test" else order.sort().values',
     "tests/test_data.py -k flickr8k"),
    ("not-the-centre-crop", "data.py", "    left, top = (w - side) // 2, (h - side) // 2",
     "    left, top = 0, 0", "tests/test_data.py -k centre_crops"),
    ("zero-shot-without-articles", "evaluate.py",
     "[[datasets.with_article(c)] for c in data.class_names]", "[[c] for c in data.class_names]",
     "tests/test_evaluate.py -k zero_shot"),
    ("samples-judged-against-other-labels", "evaluate.py",
     "        accuracy, features = judge(images, y)",
     "        accuracy, features = judge(images, y.roll(1))",
     "tests/test_evaluate.py -k class_conditional"),
    ("classifier-always-noised", "diffusion.py",
     "t = torch.randint(0, self.cfg.max_timestep or self.cfg.timesteps, (len(x0),),",
     "t = torch.randint(0, self.cfg.timesteps, (len(x0),),",
     "tests/test_diffusion.py -k max_timestep"),
    ("code-prior-sees-the-code-it-predicts", "vqvae.py",
     "x + self.positional_embedding[:n], mask=causal, is_causal=True)",
     "x + self.positional_embedding[:n])", "tests/test_vqvae.py -k code_prior"),
    ("code-prior-trains-its-vqvae-codebook", "vqvae.py",
     "        self.vqvae.eval()  # frozen: no codebook updates, no restarts\n",
     "        pass\n", "tests/test_train.py -k code_prior"),
    ("notebook-imports-train", "notebooks/exercises.py", "import torch\n\nsys.path.insert",
     "import torch\nimport train  # noqa: F401\n\nsys.path.insert",
     "tests/test_imports.py -k command_lines"),
    ("grading-runs-the-projects-answers", "notebooks/grade.py", "copy, blank=True)",
     "copy, blank=False)", "tests/test_grading.py -k blanks_every_answer"),
    ("grading-leaves-the-frechet-distance", "notebooks/grade.py",  # and its matrix root
     '"frechet_distance", "frechet_distance",\n     "The squared Frechet distance between N(mu_1, '
     'sigma_1) and N(mu_2, sigma_2)."),\n    ("evaluate", "_sqrtm_psd",',
     '"feature_statistics", "frechet_distance",\n     "The squared Frechet distance between '
     'N(mu_1, sigma_1) and N(mu_2, sigma_2)."),\n    ("evaluate", "clip_score",',
     "tests/test_grading.py -k blanks_every_answer"),
    ("grading-leaves-ddim", "notebooks/grade.py",  # x0_from_eps, which ddim_sample calls, too
     '"GaussianDiffusion.x0_from_eps", "ddim_step",\n     "x_0 from x_t, t and eps (invert eq. '
     '4)."),\n    ("diffusion", "GaussianDiffusion.ddim_sample",',
     '"GaussianDiffusion.loss_weight", "ddim_step",\n     "x_0 from x_t, t and eps (invert eq. '
     '4)."),\n    ("diffusion", "GaussianDiffusion.p_sample",',
     "tests/test_grading.py -k blanks_every_answer"),
    ("grading-seeds-shared-by-every-student", "notebooks/grade.py", 'f"{secret}\\n{student}"',
     'f"{secret}"', "tests/test_grading.py -k seeds_of_their_own"),
    ("grading-all-or-nothing-per-seed", "notebooks/grade.py",
     "shares.append(sum(right) / len(right))", "shares.append(float(all(right)))",
     "tests/test_grading.py -k per_case"),
    ("grading-runs-what-reaches-for-a-reference", "notebooks/grade.py",
     "        if name in FORBIDDEN_NAMES:", "        if name in ():",
     "tests/test_grading.py -k cheats"),
    ("student-copy-keeps-derived-coefficients", "notebooks/grade.py",
     "edits.append((statement.lineno, statement.end_lineno, []))", "pass",
     "tests/test_grading.py -k blanking"),
    ("ddim-one-end-for-the-batch", "diffusion.py",
     "extract(self.alphas_cumprod_prev, t_prev + 1, x_t)",
     "extract(self.alphas_cumprod, t_prev.clamp(min=0), x_t) if t_prev.min() >= 0 else "
     "torch.ones_like(abar_t)", "tests/test_diffusion.py -k each_item"),
    ("min-snr-offset-ignored", "diffusion.py",
     '        capped = snr + self.min_snr_offset if self.prediction == "v" else implicit',
     "        capped = implicit", "tests/test_diffusion.py -k min_snr"),
    ("probe-reads-the-first-named-object", "evaluate.py",
     '    return scene["objects"][scene["relation"] not in ("to the left of", "above")]',
     '    return scene["objects"][0]', "tests/test_evaluate.py -k probe"),
    ("zero-shot-argmin", "evaluate.py", "predicted = (p_caption @ names.T).argmax(1)",
     "predicted = (p_caption @ names.T).argmin(1)", "tests/test_evaluate.py -k zero_shot"),
    ("checkpoints-loaded-where-they-were-saved", "checkpoint.py",
     'torch.load(path, map_location="cpu", weights_only=True)',
     "torch.load(path, weights_only=True)", "tests/test_train.py -k gpu_load"),
]
# The course's break-it labs (notebooks/labs.py), each with the test that must catch its bug.
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
from labs import LABS  # noqa: E402

LAB_TESTS = {1: "tests/test_vae.py -k gaussian_kl", 2: "tests/test_vqvae.py -k straight_through",
             3: "tests/test_diffusion.py -k convert", 4: "tests/test_diffusion.py -k free",
             5: "tests/test_clip.py -k symmetric", 6: "tests/test_prior.py -k dropped",
             7: "tests/test_decoder.py -k guidance", 8: "tests/test_unclip.py -k slerp",
             9: "tests/test_evaluate.py -k closed_form"}
MUTATIONS += [(f"lab-{week}", path, right, wrong, LAB_TESTS[week])
              for week, (path, right, wrong, _, _) in LABS.items()]


def run(name, path, right, wrong, tests):
    """Apply one mutation in a copy of the repository and run its tests: True if killed."""
    with tempfile.TemporaryDirectory() as copy:
        shutil.copytree(ROOT, copy, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".git", "out", "runs", "data", "__pycache__"))
        with open(os.path.join(copy, path)) as f:
            text = f.read()
        if text.count(right) != 1:
            raise SystemExit(f"{name}: the code to mutate is not in {path} exactly once: "
                             "update the mutation to match the code")
        with open(os.path.join(copy, path), "w") as f:
            f.write(text.replace(right, wrong))
        try:
            done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                   "no:cacheprovider", *tests.split()], cwd=copy,
                                  capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:  # a bug that makes a test hang is not caught well
            return False
        return done.returncode != 0


def main():
    chosen = [m for m in MUTATIONS if len(sys.argv) < 2 or sys.argv[1] in m[0]]
    killed = 0
    for mutation in chosen:
        result = run(*mutation)
        killed += result
        print(f"{'killed  ' if result else 'SURVIVED'} {mutation[0]}  ({mutation[4]})",
              flush=True)
    print(f"{killed}/{len(chosen)} mutations killed")


if __name__ == "__main__":
    main()

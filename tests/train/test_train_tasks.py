"""The embedder and diffusion tasks on in-memory latents: learning and per-sample randomness."""

import torch
from standins import EMBEDDER, FakeLatents, embedder_task, latent_settings

from diffma_cli.diffusion.gaussian import GaussianDiffusion, released_betas
from diffma_cli.models import create_model
from diffma_cli.train.data_order import SampleRandomness
from diffma_cli.train.distributed import processes
from diffma_cli.train.loop import fit
from diffma_cli.train.tasks import DiffusionTask, sample_latents


def test_sampled_latents_follow_the_posterior_and_the_seeds():
    mean, std = torch.full((3, 4, 2, 2), 2.0), torch.full((3, 4, 2, 2), 0.5)
    first = sample_latents(mean, std, 0.5, SampleRandomness([1, 2, 3]))
    again = sample_latents(mean, std, 0.5, SampleRandomness([1, 2, 3]))
    assert torch.equal(first, again)
    expected = (2.0 + 0.5 * torch.randn((4, 2, 2), generator=torch.Generator().manual_seed(2))) * 0.5
    assert torch.equal(first[1], expected)


def test_embedder_task_loss_falls_and_mask_token_stays(tmp_path):
    task = embedder_task(spread=0.1)
    assert not task.model.vision_embedding.mask_token.requires_grad  # never used in forward
    with processes("cpu") as where:
        result = fit(task, latent_settings(global_batch_size=8, steps=10, lr=1e-2), tmp_path, where,
                     progress=False)
    assert result.losses[-1] < 0.3 * result.losses[0]


class FixedNoiseDiffusionTask(DiffusionTask):
    """The same timesteps and noise at every step: a truly fixed batch, which the model must fit."""

    def loss(self, model, batch, randomness):
        return super().loss(model, batch, SampleRandomness(range(len(randomness))))


def test_diffusion_task_loss_falls_on_a_fixed_batch(tmp_path):
    torch.manual_seed(0)
    embedder = create_model(EMBEDDER[0], **EMBEDDER[1]).requires_grad_(False)
    backbone = create_model("DiffMa-S/7", depth=2, hidden_size=32, scan="spiral")
    task = FixedNoiseDiffusionTask(backbone, embedder, GaussianDiffusion(released_betas()), FakeLatents(2),
                                   0.18215, clip_width=32)
    with processes("cpu") as where:
        result = fit(task, latent_settings(global_batch_size=2, steps=5, lr=1e-2), tmp_path, where,
                     progress=False)
    # Zero-initialised output layer: eps_hat = 0 at first, so the loss starts near E[eps^2] = 1.
    assert 0.8 < result.losses[0] < 1.5
    assert result.losses[-1] < 0.7 * result.losses[0]


def test_regression_objective_is_the_mse_of_one_pass_from_the_ct(tmp_path):
    """diffusion.objective=regression: x = 0, t = 0, the CT latent as input; MSE on the C latent channels,
    written out here with the backbone called directly."""
    torch.manual_seed(0)
    embedder = create_model(EMBEDDER[0], **EMBEDDER[1]).requires_grad_(False)
    backbone = create_model("DiffMa-S/7", depth=1, hidden_size=32, condition="latent")
    with torch.no_grad():  # a non-zero output layer, so that the loss is not that of a zero prediction
        backbone.final_layer.linear.weight.normal_(0, 0.1)
    task = DiffusionTask(backbone, embedder, GaussianDiffusion(released_betas()), FakeLatents(2), 0.18215,
                         clip_width=32, objective="regression")
    batch = {key: value.unsqueeze(0).expand(2, *value.shape) for key, value in FakeLatents(2)[0].items()}
    randomness = SampleRandomness([3, 4])
    loss = task.loss(backbone, batch, randomness)
    again = SampleRandomness([3, 4])  # the same draws, in the task's order: source, then target
    source = sample_latents(batch["source_mean"], batch["source_std"], 0.18215, again)
    target = sample_latents(batch["target_mean"], batch["target_std"], 0.18215, again)
    w, y2 = embedder(source)
    t, y = torch.zeros(2, dtype=torch.long), torch.zeros(2, 32)
    out = backbone(torch.zeros_like(source), t, y, y2, w, source)
    torch.testing.assert_close(loss, ((out[:, :4] - target) ** 2).mean())


def test_min_snr_task_loss_is_the_weighted_hybrid_loss():
    """diffusion.mse_weighting=min-snr: the task's loss, written out here from the same draws, is
    mean(min(SNR_t, 5) / SNR_t · ‖ε − ε̂‖² + VB), not the released mean(‖ε − ε̂‖² + VB)."""
    torch.manual_seed(0)
    embedder = create_model(EMBEDDER[0], **EMBEDDER[1]).requires_grad_(False)
    backbone = create_model("DiffMa-S/7", depth=1, hidden_size=32, condition="latent")
    with torch.no_grad():  # a non-zero output layer, so that the ε error is not that of a zero prediction
        backbone.final_layer.linear.weight.normal_(0, 0.1)
    diffusion = GaussianDiffusion(released_betas())
    batch = {key: value.unsqueeze(0).expand(4, *value.shape) for key, value in FakeLatents(4)[0].items()}
    seeds = [3, 4, 5, 6]
    losses = {gamma: DiffusionTask(backbone, embedder, diffusion, FakeLatents(4), 0.18215, clip_width=32,
                                   min_snr_gamma=gamma).loss(backbone, batch, SampleRandomness(seeds))
              for gamma in (None, 5.0)}
    again = SampleRandomness(seeds)  # the task's order of draws: source, target, timestep, noise
    source = sample_latents(batch["source_mean"], batch["source_std"], 0.18215, again)
    target = sample_latents(batch["target_mean"], batch["target_std"], 0.18215, again)
    t, noise = again.randint(1000), again.randn(*target.shape[1:])
    w, y2 = embedder(source)
    terms = diffusion.training_losses(lambda x, steps: backbone(x, steps, torch.zeros(4, 32), y2, w, source),
                                      target, t, noise)
    alphas_cumprod = diffusion.alphas_cumprod[t]
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = (torch.clamp(snr, max=5.0) / snr).float()
    assert (weight < 1).any() and (weight == 1).any(), t  # the seeds draw clean and noisy timesteps
    torch.testing.assert_close(losses[None], (terms["mse"] + terms["vb"]).mean())
    torch.testing.assert_close(losses[5.0], (weight * terms["mse"] + terms["vb"]).mean())

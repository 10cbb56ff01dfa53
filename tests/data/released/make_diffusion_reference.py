"""Write the diffusion reference tensors from the authors' released DiffMa code.

Run OUTSIDE the diffma repository, against a checkout of the released code (never copied into ours):

    python tests/data/released/make_diffusion_reference.py /path/to/DiffMa OUT_DIR

Writes OUT_DIR/diffusion_losses.safetensors (schedule tables, q_sample, posterior, p_mean_variance and the
hybrid loss for seeded inputs and a fake 2C-channel network output) and
OUT_DIR/diffusion_ancestral.safetensors (the released 10- and 250-step respaced ancestral sampler run on
a fixed toy network with seeded noise).
"""

import sys

import torch
from safetensors.torch import save_file


def toy_model(x, t):
    """A fixed, parameter-free stand-in for a trained network: (N, 2C, H, W) from x_t and the timestep."""
    s = (t.float() / 1000.0).view(-1, 1, 1, 1)
    eps = 0.3 * x + 0.2 * torch.sin(3 * x + s)
    v = torch.tanh(x - s)
    return torch.cat([eps, v], dim=1)


def main(released_dir: str, out: str) -> None:
    sys.path.insert(0, released_dir)
    from diffusion import create_diffusion  # the released package

    torch.manual_seed(0)
    n, c, h, w = 6, 4, 8, 8
    x_start = torch.randn(n, c, h, w) * 0.8
    noise = torch.randn(n, c, h, w)
    t = torch.tensor([0, 1, 17, 500, 998, 999])
    model_output = torch.cat([torch.randn(n, c, h, w), torch.rand(n, c, h, w) * 2 - 1], dim=1)

    d = create_diffusion(timestep_respacing="")
    terms = d.training_losses(lambda x, tt: model_output, x_start, t, noise=noise)
    x_t = d.q_sample(x_start, t, noise=noise)
    pmv = d.p_mean_variance(lambda x, tt: model_output, x_t, t, clip_denoised=False)
    post_mean, _, post_log_var = d.q_posterior_mean_variance(x_start, x_t, t)
    save_file({
        "betas": torch.from_numpy(d.betas),
        "alphas_cumprod": torch.from_numpy(d.alphas_cumprod),
        "posterior_variance": torch.from_numpy(d.posterior_variance),
        "posterior_log_variance_clipped": torch.from_numpy(d.posterior_log_variance_clipped),
        "x_start": x_start, "noise": noise, "t": t, "model_output": model_output,
        "x_t": x_t, "loss": terms["loss"], "mse": terms["mse"], "vb": terms["vb"],
        "posterior_mean": post_mean, "posterior_log_variance": post_log_var,
        "p_mean": pmv["mean"], "p_log_variance": pmv["log_variance"], "p_pred_xstart": pmv["pred_xstart"],
    }, f"{out}/diffusion_losses.safetensors")

    tensors = {}
    for steps in (10, 250):
        spaced = create_diffusion(timestep_respacing=str(steps))
        torch.manual_seed(1)
        z = torch.randn(3, c, h, w)
        torch.manual_seed(123)  # the released p_sample draws its noise from the global generator
        sample = spaced.p_sample_loop(toy_model, z.shape, z, clip_denoised=False, device="cpu")
        tensors[f"noise_{steps}"] = z
        tensors[f"sample_{steps}"] = sample
        tensors[f"timesteps_{steps}"] = torch.tensor(spaced.timestep_map)
    save_file(tensors, f"{out}/diffusion_ancestral.safetensors")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

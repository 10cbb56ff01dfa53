"""Diffusion math (`gaussian`: IDDPM schedule and hybrid training loss) and sampling (`samplers`: diffusers
schedulers). Schedulers never import models: they take a `model_fn(x_t, t) -> (N, 2C, H, W)`.

Submodules are imported explicitly (`from diffma_cli.diffusion.gaussian import GaussianDiffusion`).
"""

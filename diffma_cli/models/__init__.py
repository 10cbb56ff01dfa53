"""Diffusion backbones (DiffMa and the paper's baselines), the CT Vision Embedder and their parts."""

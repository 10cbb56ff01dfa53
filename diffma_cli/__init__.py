"""diffma: DiffMa (Diffusion Mamba, arXiv 2406.15910) for CT -> MR synthesis, as a command-line toolkit.

Importing this package must stay cheap (no torch): `diffma --help` depends on it.
"""

__version__ = "0.1.0"

"""Evaluation: how close predicted volumes are to their references (docs/metrics.md, docs/consistency.md).

Submodules, one idea each, imported explicitly (`from diffma_cli.evaluation.metrics import ...`):

- `scales`: the intensity scales metrics are computed on (CT in HU, MR on prepare's normalised scale).
- `metrics`: SynthRAD2023's masked 3-D image metrics and the paper's per-slice 8-bit protocol.
- `ms_ssim`: SynthRAD2025's masked 3-D multi-scale SSIM.
- `consistency`: whole-volume measures of slice-to-slice consistency (reformats, through-plane roughness).
- `pairing`: which prediction belongs to which reference, and loading them with a geometry check.
- `evaluate`: one function per use -- arrays, files, a folder of predictions -- returning result records.
- `results`: per-metric summary and the JSON/CSV files.
- `report`: PNG montages and slice stacks per case and an index.html with slice viewers.
"""

"""The frozen third-party encoders a run uses: the VAE (diffusers AutoencoderKL) and CLIP (BiomedCLIP through
open_clip), and where their weights come from (hub, local folder or file, offline cache; docs/encoders.md).

    source.py  a source string -> local files, offline rules, and a fingerprint of the weights
    vae.py     `load_vae`: the frozen VAE (or a tiny stand-in for tests and the demo)
    clip.py    `load_clip`: the frozen CLIP image tower (or none)
"""

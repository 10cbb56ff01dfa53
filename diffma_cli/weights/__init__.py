"""Model weights on disk: our safetensors files and the released implementation's `.pt` checkpoints.

    model_files.py  `save_model` / `load_model` / `import_released`: safetensors with the config in metadata
    torch_pickle.py a torch-pickle reader that never runs code from the file (released checkpoints)
    released.py     which network a released checkpoint holds, from its keys and shapes, and its mapping

docs/weights.md describes the formats.
"""

from diffma_cli.weights.model_files import (
    FORMAT,
    SUFFIX,
    import_released,
    is_safetensors,
    load_model,
    read_safetensors_header,
    save_model,
    stored_config,
)

__all__ = ["FORMAT", "SUFFIX", "import_released", "is_safetensors", "load_model", "read_safetensors_header",
           "save_model", "stored_config"]

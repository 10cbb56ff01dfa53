"""One training loop for the three trainings (VAE, CT Vision Embedder, diffusion backbone).

`loop.fit(task, settings, run)` owns everything a training needs besides the loss: devices and DDP, bf16
autocast, gradient accumulation, EMA, atomic checkpoints, exact resume, progress and the JSONL log. A task
(`tasks.py`) only provides the trainable model, the data set and the loss of a micro-batch. `run_folder`
creates and reads run folders (`load_run` is what `diffma convert` uses). See docs/training.md.
"""

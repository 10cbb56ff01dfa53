"""Recipes: every hyper-parameter of a training run, as typed dataclasses that round-trip through YAML.

A recipe is read from a YAML file (`recipes/{brain,pelvis,demo}.yaml` at the top of the repository, shipped
with the package, or any path), then command-line overrides `section.key=value` are applied, and the
resolved recipe is stored in the run folder (`recipe.yaml`) so that a run describes itself.
Unknown keys and values of the wrong type are `InputError`s that name the key and list the valid ones;
nothing is silently ignored.

Where each default value comes from is noted in the shipped YAML files (paper section or released config).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from diffma_cli.errors import InputError

BUILTIN_RECIPES = ("brain", "pelvis", "pelvis-512", "demo")
DIRECTIONS = ("ct->mr", "mr->ct")
PRECISIONS = ("auto", "fp32", "bf16")
SCANS = ("released", "spiral")
OBJECTIVES = ("diffusion", "regression")
MSE_WEIGHTINGS = ("uniform", "min-snr")


@dataclass
class DataConfig:
    """What the prepared slices hold and which way the model translates."""

    direction: str = "ct->mr"
    image_size: int = 224
    ct_window_hu: list[float] = field(default_factory=lambda: [-1024.0, 3000.0])
    mr_percentiles: list[float] = field(default_factory=lambda: [0.5, 99.5])
    # Axis layout volumes are sliced in (diffma_cli.data.orientation): prepare and convert reorient to it.
    orientation: str = "LPS"

    @property
    def source(self) -> str:
        """The modality the model reads: "ct" for ct->mr."""
        return self.direction.split("->")[0]

    @property
    def target(self) -> str:
        """The modality the model writes: "mr" for ct->mr."""
        return self.direction.split("->")[1]


@dataclass
class EncodersConfig:
    """The frozen encoders: hub ids, local folders or weights files (see docs/encoders.md).

    `latent_scale` None uses the VAE's own `scaling_factor` (0.18215 for the SD VAE; `diffma train-vae`
    measures and stores it for its VAEs); a number overrides it.
    """

    vae: str = "stabilityai/sd-vae-ft-ema"
    clip: str = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
    latent_scale: float | None = None
    offline: bool = False


@dataclass
class TrainingConfig:
    """Optimisation settings shared by the three trainings (VAE, embedder, diffusion backbone).

    `global_batch_size` counts images per optimiser step over all processes and accumulation steps; it must
    be divisible by world size x `grad_accumulation`. `steps` (when > 0) stops training after that many
    optimiser steps and takes precedence over `epochs`. `ema_decay` 0 keeps the EMA equal to the model.
    `ema_warmup` (ours, on by default) ramps the decay up as min(ema_decay, (1 + n) / (10 + n)) after n
    updates, so that a short run never exports its initialisation; false is the released behaviour (the
    full decay from the first step, the EMA starting at the initial weights).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    global_batch_size: int = 8
    epochs: int = 50
    steps: int = 0
    grad_accumulation: int = 1
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    precision: str = "auto"
    checkpoint_every: int = 50_000
    log_every: int = 10
    seed: int = 0
    num_workers: int = 4
    # torch.compile the network for the run (opt-in): +19 % for the DiffMa-B/2 training step on an H100 in
    # benchmarks/backbone.py; the first steps pay for compilation. Checkpoints are unchanged.
    compile: bool = False
    # Diffusion training only: PNG previews (CT | generated | reference of fixed val slices, the loss curve)
    # into RUN/previews/ every this many optimiser steps; 0 = off (docs/training.md).
    preview_every: int = 5000


@dataclass
class EmbedderConfig:
    """The CT Vision Embedder and its contrastive pre-training (paper Fig. 3)."""

    patch_size: int = 2
    embed_dim: int = 512
    tau: float = 0.07
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        global_batch_size=32, epochs=100, checkpoint_every=5000))


@dataclass
class ModelConfig:
    """The diffusion backbone: a registry name plus optional architecture overrides (null = as named).

    `scan` and `soft_mask` reach DiffMa backbones only; `soft_mask: false` ignores the embedder's soft mask
    (w = 1), the paper's "w/o soft mask" ablation (Table 2). `condition` (every backbone) says how the CT
    reaches the network: released | tokens | latent | latent+tokens (models/conditioning.py). Its default
    here is the released model's, so a recipe written before the setting existed keeps its meaning; the
    shipped recipes name their choice.
    """

    name: str = "DiffMa-B/2"
    scan: str = "spiral"
    depth: int | None = None
    hidden_size: int | None = None
    soft_mask: bool = True
    condition: str = "released"


@dataclass
class DiffusionConfig:
    """IDDPM Gaussian diffusion used for training (docs/reference.md §3.5).

    `objective` "diffusion" (default) trains the backbone to denoise; "regression" (ours, a comparison row)
    trains the same backbone to map the CT latent to the MR latent in one pass (input x = 0, t = 0, MSE on
    the first C output channels): the deterministic predictor users would otherwise pick. It needs a
    condition that gives the backbone the CT latent (`latent` or `latent+tokens`).

    `mse_weighting` "uniform" (released) weights the ε loss of every timestep alike; "min-snr" (ours) by
    min(SNR_t, `min_snr_gamma`) / SNR_t (Hang et al., ICCV 2023; docs/training.md).
    """

    num_timesteps: int = 1000
    noise_schedule: str = "linear"
    learn_sigma: bool = True
    objective: str = "diffusion"
    mse_weighting: str = "uniform"
    min_snr_gamma: float = 5.0


@dataclass
class SamplingConfig:
    """Defaults of `diffma convert`."""

    sampler: str = "dpm"
    steps: int = 25
    batch_size: int = 16
    seed: int = 0


@dataclass
class VAEConfig:
    """`diffma train-vae`: a small diffusers AutoencoderKL (8x downsampling, 4 latent channels)."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 128])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    kl_weight: float = 1e-6
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        lr=1e-4, global_batch_size=16, epochs=20, ema_decay=0.0, checkpoint_every=2000))


@dataclass
class Recipe:
    """A whole training recipe; `diffma train*` read the sections they need."""

    data: DataConfig = field(default_factory=DataConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def validate(self) -> Recipe:
        """Check values that have a fixed set of choices or a range; returns self."""
        _choice("data.direction", self.data.direction, DIRECTIONS)
        _choice("model.scan", self.model.scan, SCANS)
        from diffma_cli.models.conditioning import CONDITIONS  # no torch import: conditioning is plain Python

        _choice("model.condition", self.model.condition, CONDITIONS)
        _choice("diffusion.objective", self.diffusion.objective, OBJECTIVES)
        _choice("diffusion.mse_weighting", self.diffusion.mse_weighting, MSE_WEIGHTINGS)
        _finite_range("diffusion.min_snr_gamma", self.diffusion.min_snr_gamma, low=0.0, low_open=True,
                      why="it caps the signal-to-noise ratio of the loss weights")
        for prefix, training in (("vae.training", self.vae.training),
                                 ("embedder.training", self.embedder.training),
                                 ("training", self.training)):
            _choice(f"{prefix}.precision", training.precision, PRECISIONS)
            for key in ("global_batch_size", "grad_accumulation", "checkpoint_every", "log_every"):
                if getattr(training, key) < 1:
                    raise InputError(f"recipe value {prefix}.{key}={getattr(training, key)} must be >= 1")
            if training.epochs < 1 and training.steps < 1:
                raise InputError(f"recipe {prefix}: set epochs or steps to at least 1")
            if not 0.0 <= training.ema_decay < 1.0:
                raise InputError(f"recipe value {prefix}.ema_decay={training.ema_decay} must be in [0, 1)")
            _check_optimiser(prefix, training)
        _finite_range("embedder.tau", self.embedder.tau, low=0.0, low_open=True,
                      why="the InfoNCE temperature divides the similarities")
        _finite_range("vae.kl_weight", self.vae.kl_weight, low=0.0)
        for key, value in (("embedder.patch_size", self.embedder.patch_size),
                           ("embedder.embed_dim", self.embedder.embed_dim),
                           ("model.depth", self.model.depth), ("model.hidden_size", self.model.hidden_size),
                           ("sampling.steps", self.sampling.steps),
                           ("sampling.batch_size", self.sampling.batch_size),
                           ("data.image_size", self.data.image_size)):
            if value is not None and value < 1:
                raise InputError(f"recipe value {key}={value} must be >= 1")
        _seed_range("sampling.seed", self.sampling.seed)
        from diffma_cli.data.orientation import check_orientation

        self.data.orientation = check_orientation(self.data.orientation)
        if self.data.image_size % 8:
            raise InputError(f"recipe value data.image_size={self.data.image_size} must be a multiple of 8 "
                             "(the VAE downsamples by 8)")
        return self


def _finite_range(key: str, value: float, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False, why: str = "") -> None:
    """InputError unless `value` is finite and within [low, high] (an open end excludes the bound)."""
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        if low is not None and high is not None:
            bounds = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            bounds = f"{'>' if low_open else '>='} {low:g}"
        else:
            bounds = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        because = f" ({why})" if why else ""
        raise InputError(f"recipe value {key}={value} must be a finite number {bounds}{because}".rstrip())


def _seed_range(key: str, value: int) -> None:
    if not 0 <= value < 2**63:
        raise InputError(f"recipe value {key}={value} must be in [0, 2^63)")


def _check_optimiser(prefix: str, training: TrainingConfig) -> None:
    """Ranges of the AdamW settings and of the counters, before a run folder exists."""
    _finite_range(f"{prefix}.lr", training.lr, low=0.0)
    _finite_range(f"{prefix}.weight_decay", training.weight_decay, low=0.0)
    if len(training.betas) != 2:
        raise InputError(f"recipe value {prefix}.betas={training.betas} must hold two numbers")
    for beta in training.betas:
        _finite_range(f"{prefix}.betas", beta, low=0.0, high=1.0, high_open=True)
    for key in ("steps", "epochs", "num_workers"):
        if getattr(training, key) < 0:
            raise InputError(f"recipe value {prefix}.{key}={getattr(training, key)} must be >= 0")
    _seed_range(f"{prefix}.seed", training.seed)


def _choice(key: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise InputError(f"recipe value {key}={value!r} is not one of: {', '.join(valid)}")


# ---------------------------------------------------------------- dict <-> dataclass, with typed checks

def _describe(kind) -> str:
    return getattr(kind, "__name__", str(kind)).replace("typing.", "")


def _convert(value, kind, key: str):
    """Return `value` as type `kind` (a dataclass field type) or raise InputError naming `key`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        return _convert(value, inner[0], key)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise InputError(f"recipe key {key} must be a section (key: value pairs), got {value!r}")
        return _from_dict(kind, value, key + ".")
    if origin is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise InputError(f"recipe key {key} must be a list of {_describe(item_kind)}, got {value!r}")
        return [_convert(item, item_kind, f"{key}[{i}]") for i, item in enumerate(value)]
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        # YAML reads "1e-4" as a string (YAML 1.1 needs a dot): accept numbers written either way.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, str):
            return value
    raise InputError(f"recipe key {key} must be {_describe(kind)}, got {value!r}")


def _from_dict(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in values if key not in names]
    if unknown:
        where = f"section {prefix[:-1]}" if prefix else "the top level"
        raise InputError(f"unknown recipe key {prefix}{unknown[0]} "
                         f"(valid keys in {where}: {', '.join(names)})")
    converted = {key: _convert(value, hints[key], prefix + key) for key, value in values.items()}
    return cls(**converted)


def recipe_from_dict(values: dict) -> Recipe:
    """Build and validate a Recipe from nested dicts; missing keys take their defaults."""
    if not isinstance(values, dict):
        raise InputError("a recipe must be a mapping of sections (data, encoders, model, training, ...)")
    return _from_dict(Recipe, values).validate()


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


# ---------------------------------------------------------------- files

def _read_yaml(text: str, source: str) -> dict:
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"is not valid YAML: {error}", path=source) from None
    if values is None:  # an empty file would silently mean every default (the brain recipe)
        raise InputError("is empty", path=source,
                         hint="a recipe needs its sections; start from `--recipe brain` and --set changes")
    return values


def builtin_recipe_text(name: str) -> str:
    """The YAML text of a shipped recipe.

    An installed package carries the recipes as `diffma_cli/recipes/` (setup.py copies them there at build
    time); a source checkout, editable installs included, reads the repository's top-level `recipes/`.
    """
    packaged = resources.files("diffma_cli").joinpath("recipes", f"{name}.yaml")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[1] / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read a built-in recipe by name (`brain`, `pelvis`, `pelvis-512`, `demo`) or a YAML file."""
    name = str(name_or_path)
    if name in BUILTIN_RECIPES:
        text, source = builtin_recipe_text(name), f"recipe {name}"
    else:
        path = Path(name)
        if not path.is_file():
            raise InputError("no such recipe file", path=path,
                             hint=f"give a YAML file or one of: {', '.join(BUILTIN_RECIPES)}")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        return recipe_from_dict(_read_yaml(text, source))
    except InputError as error:
        if error.path is None:
            raise InputError(error.problem, path=source, hint=error.hint) from None
        raise


def recipe_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML text (what `recipe.yaml` of a run folder holds)."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    from diffma_cli.io.atomic import atomic_file

    with atomic_file(path, overwrite=True) as temporary:
        temporary.write_text(recipe_yaml(recipe), encoding="utf-8")


# ---------------------------------------------------------------- command-line overrides

def parse_override(text: str) -> tuple[str, object]:
    """Split `section.key=value`; the value is read as YAML (`1e-4`, `true`, `[1, 2]`, `null`)."""
    if "=" not in text:
        raise InputError(f"override {text!r} is not of the form section.key=value",
                         hint="for example --set training.lr=2e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def apply_overrides(recipe: Recipe, overrides: list[str] | dict[str, object]) -> Recipe:
    """Return a new recipe with `section.key=value` overrides applied (strings or a {key: value} dict)."""
    values = recipe_to_dict(recipe)
    pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in pairs:
        parts = key.split(".")
        node, prefix = values, ""
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                valid = [name for name, sub in node.items() if isinstance(sub, dict)]
                raise InputError(f"unknown recipe section {prefix}{part} in override {key}",
                                 hint=f"valid sections here: {', '.join(valid)}")
            node, prefix = node[part], f"{prefix}{part}."
        if parts[-1] not in node:
            raise InputError(f"unknown recipe key {key} (valid keys in "
                             f"{prefix[:-1] or 'the top level'}: {', '.join(node)})")
        node[parts[-1]] = value
    return recipe_from_dict(values)

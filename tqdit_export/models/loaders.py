"""Loading DiT weights from the formats they are published in.

Three sources, one model (`DiT`, whose state-dict keys are those of facebookresearch/DiT):

- official facebookresearch/DiT checkpoints (`.pt`): a plain state dict (the released
  `DiT-XL-2-256x256.pt`), or a `train.py` checkpoint `{"model", "ema", "opt", "args"}`
  (the EMA weights are taken). Read with `torch.load(weights_only=True)` only; the
  `argparse.Namespace` that `train.py` stores under "args" is the one class allowed
  besides tensors and containers. Keys are copied one by one; any unknown, missing or
  mis-shaped key is an error. The stored `pos_embed` (fixed sin-cos) is used as stored.
- diffusers `DiTTransformer2DModel` (or the older `Transformer2DModel` with
  `norm_type="ada_norm_zero"`, same keys): `diffusion_pytorch_model.safetensors` with its
  `config.json`, converted by `convert_diffusers_state_dict`.
- the project's own safetensors format (`checkpoint.py`), dispatched to `load_dit`.

`load_checkpoint(path)` picks the right one from the file's content.

Numerics vs diffusers
---------------------
Read from diffusers 0.42 (`dit_transformer_2d.py`, `attention.py` BasicTransformerBlock,
`normalization.py` AdaLayerNormZero, `embeddings.py`). Differences from facebookresearch/DiT
and how `load_diffusers_checkpoint` handles them:

- Timestep frequencies: diffusers' `CombinedTimestepLabelEmbeddings` uses
  `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=1)`, i.e. frequencies
  `exp(-ln(10000) * i / (128 - 1))`; DiT divides by 128. Handled by the config override
  `timestep_freq_shift=1` (hard-coded in diffusers, not in its config.json). The order
  [cos | sin] (flip_sin_to_cos=True) is DiT's.
- LayerNorm before the MLP: diffusers' `norm3 = LayerNorm(dim, norm_eps)` with config
  `norm_eps` (default 1e-5); DiT uses 1e-6. Handled by `mlp_norm_eps = norm_eps`
  (read from config.json, 1e-5 when absent).
- LayerNorm before attention (`AdaLayerNormZero.norm`) and before the output
  (`norm_out`): eps 1e-6 in both, as DiT. Nothing to do.
- GELU: `activation_fn="gelu-approximate"` is the tanh approximation, as DiT; any other
  activation is refused.
- Attention: `scaled_dot_product_attention` with the default scale head_dim**-0.5, as
  DiT's explicit Q·Kᵀ·scale (only float rounding differs). No qk-norm, no residual, no
  output rescale in the DiT config.
- Labels: `LabelEmbedding(num_classes, dim, dropout_prob=0.1)` has num_classes + 1 rows
  and the null class at index `num_classes`, as DiT (`class_dropout_prob=0.1`).
- Conditioning: diffusers keeps a copy of the timestep and label embedders in every block
  (each block uses its own copy; the output layer uses block 0's). DiT has one. The
  converter takes block 0's and refuses a checkpoint whose copies differ.
- Layouts: adaLN chunk order (shift, scale, gate ×2), output modulation order
  (shift, scale), patch-embed token order and the unpatchify order (p, p, C) are the same
  as DiT's; q, k, v are concatenated on dim 0 into `qkv`. No permutation is needed.
- Position embedding: diffusers recomputes a non-persistent sin-cos buffer; ours is the
  same function (`get_2d_sincos_pos_embed`, float64 then float32), so the converter fills
  `pos_embed` from it (and checks a stored `pos_embed.pos_embed` against it if present).

Official checkpoints keep `timestep_freq_shift=0` and `mlp_norm_eps=1e-6` (the defaults).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_output
from .checkpoint import FORMAT as TQDIT_FORMAT
from .checkpoint import load_dit
from .dit import DIT_CONFIGS, DiT, DiTConfig, get_2d_sincos_pos_embed

__all__ = [
    "DIFFUSERS_DEFAULT_NORM_EPS",
    "checkpoint_format",
    "DIFFUSERS_TIMESTEP_FREQ_SHIFT",
    "convert_diffusers_state_dict",
    "diffusers_config_to_dit",
    "infer_official_config",
    "load_checkpoint",
    "load_diffusers_checkpoint",
    "load_official_checkpoint",
    "load_official_state_dict",
    "save_official_state_dict",
]

# diffusers' CombinedTimestepLabelEmbeddings: Timesteps(..., downscale_freq_shift=1).
DIFFUSERS_TIMESTEP_FREQ_SHIFT = 1.0
# DiTTransformer2DModel(norm_eps=1e-5): eps of norm3, the LayerNorm before the feed-forward.
DIFFUSERS_DEFAULT_NORM_EPS = 1e-5

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_CONFIG = "config.json"

# num_heads cannot be read from shapes: the paper's sizes (hidden -> heads).
_PAPER_HEADS: dict[int, int] = {
    cfg.hidden_size: cfg.num_heads
    for name, cfg in DIT_CONFIGS.items()
    if re.fullmatch(r"DiT-(XL|L|B|S)/\d+", name)
}


# --------------------------------------------------------------------------- helpers


def _fmt_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_and_copy(
    model: DiT, state: Mapping[str, torch.Tensor], source: str, origin: Mapping[str, str] | None = None, hint: str = ""
) -> None:
    """Copy `state` into `model` after checking that names and shapes match exactly."""
    expected = model.state_dict()
    origin = origin or {}

    def name(key: str) -> str:
        return f"{key!r} (from {origin[key]!r})" if key in origin else repr(key)

    problems: list[str] = []
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    for key in unknown:
        problems.append(f"unexpected key {name(key)}, not in the DiT built from the config")
    for key in missing:
        problems.append(f"missing key {key!r} (shape {tuple(expected[key].shape)}), required by the config")
    for key in sorted(set(state) & set(expected)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"key {name(key)} holds a {type(value).__name__}, expected a tensor")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"key {name(key)} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )
    if problems:
        raise ValueError(
            f"{source}: weights do not match DiT config {model.config}:\n  - "
            + "\n  - ".join(problems)
            + "\nCheck that the config matches the checkpoint (pass config=, e.g. "
            "infer_official_config(state_dict, num_heads=N) or dit_config(name, input_size=...))"
            + (f"; {hint}" if hint else "")
        )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key])


def _save_torch(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _sincos_pos_embed(config: DiTConfig) -> torch.Tensor:
    grid = config.input_size // config.patch_size
    return torch.from_numpy(get_2d_sincos_pos_embed(config.hidden_size, grid)).float().unsqueeze(0)


# --------------------------------------------------------------------------- official


def load_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a facebookresearch/DiT checkpoint (`.pt`).

    Accepts a plain state dict (the released checkpoints) or a training checkpoint with
    "ema" and/or "model" entries ("ema" is taken when present). Always read with
    `torch.load(map_location="cpu", weights_only=True)`; `argparse.Namespace` (the "args"
    that `train.py` stores) is the only extra class allowed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official DiT checkpoint {path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError (not a torch file), ...
        raise ValueError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Expected a facebookresearch/DiT .pt holding a "
            "state dict or {'ema'/'model': state dict}; re-save only the tensors with torch.save(state_dict)"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(  # noqa: TRY004 - a file's content, reported as a bad value
            f"{path}: holds a {type(obj).__name__}, expected a dict (a state dict or "
            "{'ema'/'model': state dict}); save model.state_dict(), not the module"
        )
    top_is_state = bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    if top_is_state:
        state, where = obj, "state dict"
    elif "ema" in obj or "model" in obj:
        entry = "ema" if "ema" in obj else "model"
        state, where = obj[entry], f"entry {entry!r}"
    else:
        raise ValueError(
            f"{path}: not a DiT checkpoint: top-level keys {_fmt_keys(sorted(map(str, obj)))} are neither "
            "parameter tensors nor 'ema'/'model'; extract the state dict and save it with "
            "save_official_state_dict or torch.save(state_dict)"
        )
    if not isinstance(state, dict) or not state:
        raise ValueError(
            f"{path}: {where} is an empty or non-dict {type(state).__name__}, expected a non-empty state dict "
            "of tensors"
        )
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(
            f"{path}: {where} has non-tensor entries {_fmt_keys(bad)}; expected a state dict of tensors"
        )
    return dict(state)


def infer_official_config(state_dict: Mapping[str, torch.Tensor], **overrides: Any) -> DiTConfig:
    """The `DiTConfig` of an official-layout state dict, read from tensor shapes.

    depth, hidden_size, patch_size, in_channels, input_size (pos_embed tokens × patch),
    num_classes, learn_sigma and mlp_ratio come from shapes. num_heads does not: it is
    taken from the paper's sizes (hidden 1152/1024/768/384 -> 16/16/12/6 heads), otherwise
    it must be given as `num_heads=`. Any `overrides` (DiTConfig fields) win over inference.
    """
    fields = {f.name for f in dataclasses.fields(DiTConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"infer_official_config: unknown override(s) {unknown}; DiTConfig fields are {sorted(fields)}")

    def need(key: str, ndim: int) -> torch.Tensor:
        if key not in state_dict:
            raise ValueError(
                f"infer_official_config: key {key!r} is missing, so the config cannot be inferred; "
                "is this a facebookresearch/DiT state dict? (pass config= to skip inference)"
            )
        t = state_dict[key]
        if t.ndim != ndim:
            raise ValueError(f"infer_official_config: key {key!r} has shape {tuple(t.shape)}, expected {ndim} dims")
        return t

    proj = need("x_embedder.proj.weight", 4)
    hidden, in_channels, ph, pw = proj.shape
    if ph != pw:
        raise ValueError(f"infer_official_config: 'x_embedder.proj.weight' has non-square patches {ph}x{pw}")
    patch = ph
    tokens = need("pos_embed", 3).shape[1]
    grid = round(tokens**0.5)
    if grid * grid != tokens:
        raise ValueError(f"infer_official_config: 'pos_embed' has {tokens} tokens, not a square grid")
    depth = len({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise ValueError("infer_official_config: no 'blocks.N.*' keys; expected a facebookresearch/DiT state dict")
    rows = need("y_embedder.embedding_table.weight", 2).shape[0]
    dropout = float(overrides.get("class_dropout_prob", DiTConfig.class_dropout_prob))
    num_classes = rows - (1 if dropout > 0 else 0)
    out = need("final_layer.linear.weight", 2).shape[0]
    if out % (patch * patch):
        raise ValueError(
            f"infer_official_config: 'final_layer.linear.weight' has {out} rows, not a multiple of "
            f"patch²={patch * patch}"
        )
    out_channels = out // (patch * patch)
    if out_channels == 2 * in_channels:
        learn_sigma = True
    elif out_channels == in_channels:
        learn_sigma = False
    else:
        raise ValueError(
            f"infer_official_config: 'final_layer.linear.weight' gives {out_channels} output channels for "
            f"{in_channels} input channels; DiT supports in (learn_sigma=False) or 2×in (learn_sigma=True)"
        )
    mlp_ratio = need("blocks.0.mlp.fc1.weight", 2).shape[0] / hidden
    if "num_heads" in overrides:
        num_heads = overrides["num_heads"]
    elif hidden in _PAPER_HEADS:
        num_heads = _PAPER_HEADS[hidden]
    else:
        raise ValueError(
            f"infer_official_config: hidden size {hidden} is not a paper size {sorted(_PAPER_HEADS)}, and the "
            "number of heads cannot be read from the weights; pass num_heads= (e.g. num_heads=4)"
        )
    inferred: dict[str, Any] = {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": mlp_ratio,
        "num_classes": num_classes,
        "learn_sigma": learn_sigma,
    }
    inferred.update(overrides)
    return DiTConfig(**inferred)


def load_official_checkpoint(path: str | Path, config: DiTConfig | None = None) -> DiT:
    """A `DiT` (eval mode, CPU) with the weights of a facebookresearch/DiT `.pt`.

    `config` defaults to `infer_official_config` of the weights. Keys are copied one by one;
    an unknown, missing or mis-shaped key raises ValueError naming it. The stored pos_embed
    is used as stored.
    """
    state = load_official_state_dict(path)
    hint = ""
    if any(k.startswith("module.") for k in state):
        hint = "keys start with 'module.' (DistributedDataParallel): strip that prefix and re-save"
    elif any(k.startswith("transformer_blocks.") for k in state):
        hint = "these look like diffusers keys: use load_diffusers_checkpoint"
    if config is None:
        try:
            config = infer_official_config(state)
        except ValueError as err:
            raise ValueError(
                f"{path}: {err}" + (f"; {hint}" if hint else "")
                + "; to give the config: load_official_checkpoint(path, config=infer_official_config("
                "load_official_state_dict(path), num_heads=N))"
            ) from err
    model = DiT(config)
    _check_and_copy(model, state, str(path), hint=hint)
    return model.eval()


def save_official_state_dict(model: DiT, path: str | Path) -> None:
    """Write `model.state_dict()` as a plain `.pt` (the official format), atomically."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _save_torch(state, Path(path))


# --------------------------------------------------------------------------- diffusers

# DiTTransformer2DModel.__init__ defaults (diffusers 0.42), for keys absent from config.json.
_DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": None,
    "num_layers": 28,
    "attention_bias": True,
    "sample_size": 32,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": DIFFUSERS_DEFAULT_NORM_EPS,
}
_DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")


def diffusers_config_to_dit(cfg: Mapping[str, Any], source: str = "config.json") -> DiTConfig:
    """The `DiTConfig` (with diffusers numerics) of a diffusers DiT `config.json` dict."""
    cls = cfg.get("_class_name")
    if cls is not None and cls not in _DIFFUSERS_CLASSES:
        raise ValueError(
            f"{source}: _class_name {cls!r} is not a DiT transformer; expected one of {_DIFFUSERS_CLASSES}"
        )

    def get(key: str) -> Any:
        return cfg.get(key, _DIFFUSERS_DEFAULTS[key])

    wanted = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate", "norm_elementwise_affine": False,
              "attention_bias": True}
    for key, value in wanted.items():
        if get(key) != value:
            raise ValueError(
                f"{source}: {key}={get(key)!r}, but DiT needs {key}={value!r}; this diffusers model is not a DiT"
            )
    if get("num_embeds_ada_norm") is None:
        raise ValueError(f"{source}: num_embeds_ada_norm is null; a class-conditional DiT needs the number of classes")
    size = get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"{source}: sample_size={size}; DiT supports square inputs only")
        size = size[0]
    in_channels = int(get("in_channels"))
    out_channels = get("out_channels")
    out_channels = in_channels if out_channels is None else int(out_channels)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(
            f"{source}: out_channels={out_channels} with in_channels={in_channels}; DiT supports in or 2×in"
        )
    heads, head_dim = int(get("num_attention_heads")), int(get("attention_head_dim"))
    return DiTConfig(
        input_size=int(size),
        patch_size=int(get("patch_size")),
        in_channels=in_channels,
        hidden_size=heads * head_dim,
        depth=int(get("num_layers")),
        num_heads=heads,
        mlp_ratio=4.0,  # FeedForward(mult=4)
        class_dropout_prob=0.1,  # LabelEmbedding(..., 0.1) in CombinedTimestepLabelEmbeddings
        num_classes=int(get("num_embeds_ada_norm")),
        learn_sigma=out_channels == 2 * in_channels,
        timestep_freq_shift=DIFFUSERS_TIMESTEP_FREQ_SHIFT,
        mlp_norm_eps=float(get("norm_eps")),
    )


def _convert_diffusers(
    sd: Mapping[str, torch.Tensor], config: DiTConfig, source: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str) -> torch.Tensor | None:
        if key not in sd:
            missing.append(key)
            return None
        used.add(key)
        return sd[key]

    def put(ours: str, theirs: str) -> None:
        value = take(theirs)
        if value is not None:
            out[ours] = value
            origin[ours] = theirs

    put("x_embedder.proj.weight", "pos_embed.proj.weight")
    put("x_embedder.proj.bias", "pos_embed.proj.bias")
    pos = _sincos_pos_embed(config)
    if "pos_embed.pos_embed" in sd:  # only stored by models with pos_embed_max_size; check it
        used.add("pos_embed.pos_embed")
        stored = sd["pos_embed.pos_embed"]
        if tuple(stored.shape) != tuple(pos.shape) or not torch.allclose(stored.float(), pos, atol=1e-6, rtol=0):
            raise ValueError(
                f"{source}: key 'pos_embed.pos_embed' (shape {tuple(stored.shape)}) is not the fixed 2-D sin-cos "
                f"embedding of shape {tuple(pos.shape)} that DiT uses; this model cannot be converted"
            )
    out["pos_embed"] = pos

    embedders = {
        "t_embedder.mlp.0.weight": "norm1.emb.timestep_embedder.linear_1.weight",
        "t_embedder.mlp.0.bias": "norm1.emb.timestep_embedder.linear_1.bias",
        "t_embedder.mlp.2.weight": "norm1.emb.timestep_embedder.linear_2.weight",
        "t_embedder.mlp.2.bias": "norm1.emb.timestep_embedder.linear_2.bias",
        "y_embedder.embedding_table.weight": "norm1.emb.class_embedder.embedding_table.weight",
    }
    for ours, theirs in embedders.items():
        put(ours, f"transformer_blocks.0.{theirs}")
        first = out.get(ours)
        for i in range(1, config.depth):
            key = f"transformer_blocks.{i}.{theirs}"
            copy = take(key)
            if copy is None or first is None:
                continue
            if copy.shape != first.shape or not torch.equal(copy, first):
                raise ValueError(
                    f"{source}: key {key!r} differs from 'transformer_blocks.0.{theirs}'; diffusers keeps one copy "
                    "of the timestep/label embedders per block and DiT has one shared embedder, so the copies "
                    "must be identical (this checkpoint is not a converted DiT and cannot be loaded)"
                )

    for i in range(config.depth):
        b, d = f"blocks.{i}", f"transformer_blocks.{i}"
        for kind in ("weight", "bias"):
            parts = [take(f"{d}.attn1.to_{x}.{kind}") for x in "qkv"]
            if all(p is not None for p in parts):
                if len({tuple(p.shape) for p in parts}) != 1:
                    raise ValueError(
                        f"{source}: {d}.attn1.to_q/to_k/to_v.{kind} have different shapes "
                        f"{[tuple(p.shape) for p in parts]}; expected equal shapes to concatenate into qkv"
                    )
                out[f"{b}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
                origin[f"{b}.attn.qkv.{kind}"] = f"{d}.attn1.to_{{q,k,v}}.{kind}"
            put(f"{b}.attn.proj.{kind}", f"{d}.attn1.to_out.0.{kind}")
            put(f"{b}.mlp.fc1.{kind}", f"{d}.ff.net.0.proj.{kind}")
            put(f"{b}.mlp.fc2.{kind}", f"{d}.ff.net.2.{kind}")
            put(f"{b}.adaLN_modulation.1.{kind}", f"{d}.norm1.linear.{kind}")
    for kind in ("weight", "bias"):
        # Same layouts as DiT: (shift, scale) chunks and (p, p, C) output rows.
        put(f"final_layer.adaLN_modulation.1.{kind}", f"proj_out_1.{kind}")
        put(f"final_layer.linear.{kind}", f"proj_out_2.{kind}")

    unconverted = sorted(set(sd) - used)
    problems = [f"missing diffusers key {k!r}" for k in missing]
    problems += [f"unconverted diffusers key {k!r} (no DiT counterpart)" for k in unconverted]
    if problems:
        raise ValueError(
            f"{source}: diffusers weights do not match a DiT of depth {config.depth}:\n  - "
            + "\n  - ".join(problems)
            + "\nExpected a DiTTransformer2DModel (norm_type='ada_norm_zero', no affine norms) with the "
            "architecture of its config.json"
        )
    return out, origin


def convert_diffusers_state_dict(sd: Mapping[str, torch.Tensor], config: DiTConfig) -> dict[str, torch.Tensor]:
    """diffusers `DiTTransformer2DModel` weights -> a DiT state dict for `config`.

    Maps keys only (see the module docstring); the numerics come from `config`, which for
    a faithful copy of diffusers must have `timestep_freq_shift=1` and `mlp_norm_eps` =
    diffusers' `norm_eps` (see `diffusers_config_to_dit`). Every diffusers key that is not
    converted, and every expected one that is missing, raises ValueError naming it.
    """
    out, _ = _convert_diffusers(sd, config, "diffusers state dict")
    return out


def _read_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        part = load_file(str(f), device="cpu")
        dup = sorted(set(part) & set(state))
        if dup:
            raise ValueError(f"{f}: keys {_fmt_keys(dup)} also appear in another shard")
        state.update(part)
    return state


def _diffusers_files(path: Path) -> tuple[list[Path], Path | None]:
    """Weight files and config.json of a diffusers model file or folder."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: diffusers weights must be a .safetensors file (got {path.suffix!r})")
        cfg = path.parent / DIFFUSERS_CONFIG
        return [path], cfg if cfg.is_file() else None
    if not path.is_dir():
        raise FileNotFoundError(f"diffusers model {path}: no such file or folder")
    for folder in (path, path / "transformer"):  # a model folder, or a pipeline folder
        cfg = folder / DIFFUSERS_CONFIG
        cfg = cfg if cfg.is_file() else None
        if (folder / DIFFUSERS_WEIGHTS).is_file():
            return [folder / DIFFUSERS_WEIGHTS], cfg
        index = folder / (DIFFUSERS_WEIGHTS + ".index.json")
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            return [folder / name for name in sorted(set(weight_map.values()))], cfg
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(
        f"{path}: no {DIFFUSERS_WEIGHTS} (nor transformer/{DIFFUSERS_WEIGHTS}); found {found[:20]}. "
        "Save the model with DiTTransformer2DModel.save_pretrained(..., safe_serialization=True); "
        ".bin weights are not read"
    )


def load_diffusers_checkpoint(path_or_dir: str | Path, config: DiTConfig | None = None) -> DiT:
    """A `DiT` (eval mode, CPU) reproducing a diffusers `DiTTransformer2DModel`.

    `path_or_dir`: a `diffusion_pytorch_model.safetensors` file (its folder's config.json
    is read when present), a folder holding both, or a pipeline folder with `transformer/`.
    The config comes from config.json (`diffusers_config_to_dit`); `config` replaces it (needed
    when there is no config.json), but its numerics are still set to diffusers'
    (`timestep_freq_shift=1`, `mlp_norm_eps` = config.json's `norm_eps`, default 1e-5).
    """
    path = Path(path_or_dir)
    files, cfg_path = _diffusers_files(path)
    cfg_json: dict[str, Any] | None = None
    if cfg_path is not None:
        try:
            cfg_json = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg_path}: not valid JSON ({err})") from err
    if config is not None:
        eps = float((cfg_json or {}).get("norm_eps", DIFFUSERS_DEFAULT_NORM_EPS))
        config = dataclasses.replace(config, timestep_freq_shift=DIFFUSERS_TIMESTEP_FREQ_SHIFT, mlp_norm_eps=eps)
    elif cfg_json is not None:
        config = diffusers_config_to_dit(cfg_json, str(cfg_path))
    else:
        raise ValueError(
            f"{path}: no {DIFFUSERS_CONFIG} next to the weights, and the input size cannot be read from them "
            "(diffusers does not store pos_embed); put the model's config.json beside it or pass config="
        )
    sd = _read_safetensors(files)
    state, origin = _convert_diffusers(sd, config, str(path))
    model = DiT(config)
    _check_and_copy(model, state, str(path), origin)
    return model.eval()


# --------------------------------------------------------------------------- dispatch


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def checkpoint_format(path: str | Path) -> str:
    """Which format a checkpoint is in, from its content: "diffusers", "tqdit" or "official".

    - a folder: a diffusers model or pipeline folder;
    - safetensors with metadata format == "tqdit-dit": the project's format;
    - other safetensors with diffusers keys: diffusers;
    - a PyTorch file (zip or legacy pickle): a facebookresearch/DiT `.pt`.
    """
    path = Path(path)
    if path.is_dir():
        return "diffusers"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file or folder")
    with open(path, "rb") as f:
        head = f.read(16)
    if _looks_like_safetensors(head):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
        if meta.get("format") == TQDIT_FORMAT:
            return "tqdit"
        if "pos_embed.proj.weight" in keys or any(k.startswith("transformer_blocks.") for k in keys):
            return "diffusers"
        raise ValueError(
            f"{path}: safetensors file without '{TQDIT_FORMAT}' metadata and without diffusers keys "
            f"(first keys: {_fmt_keys(sorted(keys), 5)}); its config and numerics are unknown. Save DiT weights "
            "with save_dit (tqdit format) or save_official_state_dict (.pt)"
        )
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "official"
    raise ValueError(
        f"{path}: unrecognised checkpoint format (neither safetensors nor a PyTorch .pt); supported: tqdit "
        "safetensors (save_dit), diffusers safetensors/folder, facebookresearch/DiT .pt"
    )


def load_checkpoint(path: str | Path) -> DiT:
    """Load any supported DiT checkpoint (eval mode, CPU), in the format `checkpoint_format` finds."""
    from safetensors import SafetensorError

    loader = {"diffusers": load_diffusers_checkpoint, "tqdit": load_dit, "official": load_official_checkpoint}
    try:
        return loader[checkpoint_format(path)](path)
    except SafetensorError as err:  # a header or file cut short or edited: safetensors' own error type
        raise ValueError(f"{path}: not a readable safetensors file ({err}); write the checkpoint again") from err

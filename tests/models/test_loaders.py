"""Loaders: official facebookresearch/DiT .pt, diffusers DiTTransformer2DModel, dispatch."""
import argparse
import dataclasses

import pytest
import torch

from tqdit_export.models.checkpoint import save_dit
from tqdit_export.models.dit import DiT, DiTConfig, dit_config
from tqdit_export.models.loaders import (
    convert_diffusers_state_dict,
    infer_official_config,
    load_checkpoint,
    load_diffusers_checkpoint,
    load_official_checkpoint,
    load_official_state_dict,
    save_official_state_dict,
)


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.05, skip: tuple[str, ...] = ("pos_embed",)):
    """Random weights everywhere (adaLN and output layers are zero-initialised)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name not in skip:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _inputs(config: DiTConfig, n: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, config.input_size, config.input_size, generator=g)
    t = torch.tensor([3.0, 517.0][:n])
    y = torch.tensor([1, config.num_classes][:n])  # a class and the null class
    return x, t, y


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# ----------------------------------------------------------------------------- official


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """A random DiT-S/2 on 8x8 latents saved as plain, {'ema','model','opt','args'} and {'model'}."""
    torch.manual_seed(0)
    model = _randomize(DiT(dit_config("DiT-S/2", input_size=8)), seed=0)
    d = tmp_path_factory.mktemp("official")
    save_official_state_dict(model, d / "plain.pt")
    sd = model.state_dict()
    other = {k: -v for k, v in sd.items()}  # the non-EMA weights must not be the ones loaded
    torch.save({"ema": sd, "model": other, "opt": {"param_groups": [{"lr": 1e-4}]},
                "args": argparse.Namespace(model="DiT-S/2")}, d / "train.pt")
    torch.save({"model": sd}, d / "model_only.pt")
    return model, d


def test_official_roundtrip_is_bit_exact(official):
    model, d = official
    ref = model.state_dict()
    x, t, y = _inputs(model.config)
    with torch.no_grad():
        expected = model(x, t, y)
    for name in ("plain.pt", "train.pt", "model_only.pt"):
        loaded = load_official_checkpoint(d / name)
        got = loaded.state_dict()
        assert set(got) == set(ref), name
        for key in ref:
            assert torch.equal(got[key], ref[key]), (name, key)
        assert loaded.config == model.config
        if name != "model_only.pt":
            with torch.no_grad():
                assert torch.equal(loaded(x, t, y), expected), name


def test_infer_official_config_recovers_dit_s2(official):
    model, d = official
    assert infer_official_config(load_official_state_dict(d / "plain.pt")) == model.config
    # num_heads can be overridden; a non-paper hidden size needs it.
    assert infer_official_config(model.state_dict(), num_heads=12).num_heads == 12
    tiny = DiT(dit_config("DiT-tiny")).state_dict()
    with pytest.raises(ValueError, match="num_heads="):
        infer_official_config(tiny)
    assert infer_official_config(tiny, num_heads=2) == dit_config("DiT-tiny")


def test_load_checkpoint_dispatches_official_and_tqdit(tmp_path):
    model = _randomize(DiT(dit_config("DiT-S/2", input_size=8, depth=1)), seed=2)
    save_official_state_dict(model, tmp_path / "official.pt")
    save_dit(model, tmp_path / "ours.safetensors")
    for name in ("official.pt", "ours.safetensors"):
        loaded = load_checkpoint(tmp_path / name)
        assert loaded.config == model.config, name
        assert not loaded.training
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), (name, key)
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.bin"):
        load_checkpoint(tmp_path / "junk.bin")


def test_official_checkpoints_default_to_the_official_guidance(tmp_path):
    """facebookresearch/DiT guides 3 of 4 latent channels: its checkpoints sample that way unless told."""
    from tqdit_export.models import resolve_model

    model = _randomize(DiT(dit_config("DiT-S/2", input_size=8, depth=1)), seed=2)
    save_official_state_dict(model, tmp_path / "official.pt")
    save_dit(model, tmp_path / "ours.safetensors")
    assert resolve_model(str(tmp_path / "official.pt")).cfg_channels == 3
    assert resolve_model(str(tmp_path / "ours.safetensors")).cfg_channels is None
    assert resolve_model("dit-digits").cfg_channels is None


def _small_official_sd() -> dict:
    # hidden 384 is DiT-S, so num_heads is inferred; depth 1 keeps it fast.
    return DiT(dit_config("DiT-S/2", input_size=8, depth=1)).state_dict()


def test_official_unknown_missing_and_misshaped_keys_are_named(tmp_path):
    sd = _small_official_sd()
    sd["blocks.0.attn.extra"] = torch.zeros(3)
    torch.save(sd, tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match=r"unexpected key 'blocks\.0\.attn\.extra'"):
        load_official_checkpoint(tmp_path / "unknown.pt")

    sd = _small_official_sd()
    del sd["blocks.0.mlp.fc2.bias"]
    torch.save(sd, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"missing key 'blocks\.0\.mlp\.fc2\.bias'"):
        load_official_checkpoint(tmp_path / "missing.pt")

    sd = _small_official_sd()
    sd["blocks.0.attn.proj.weight"] = torch.zeros(384, 100)
    torch.save(sd, tmp_path / "shape.pt")
    shape_msg = r"'blocks\.0\.attn\.proj\.weight' has shape \(384, 100\), expected \(384, 384\)"
    with pytest.raises(ValueError, match=shape_msg):
        load_official_checkpoint(tmp_path / "shape.pt")


def test_official_rejects_other_file_shapes(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "epoch": 3}, tmp_path / "lightning.pt")
    with pytest.raises(ValueError, match="ema"):
        load_official_state_dict(tmp_path / "lightning.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list"):
        load_official_state_dict(tmp_path / "list.pt")


# ----------------------------------------------------------------------------- diffusers

_DIFFUSERS_KW = {
    "sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 8, "num_layers": 2,
    "num_attention_heads": 2, "attention_head_dim": 16, "num_embeds_ada_norm": 10, "norm_type": "ada_norm_zero",
}


@pytest.fixture(scope="module")
def diffusers_model(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(**_DIFFUSERS_KW)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.1)
        # diffusers' DiT carries identical embedder copies in every block (one in the original).
        first = ref.transformer_blocks[0].norm1.emb
        for block in ref.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(first.state_dict())
    ref.eval()
    d = tmp_path_factory.mktemp("diffusers") / "dit"
    ref.save_pretrained(d, safe_serialization=True)
    return ref, d


def test_diffusers_forward_matches(diffusers_model):
    ref, d = diffusers_model
    ours = load_diffusers_checkpoint(d)
    cfg = ours.config
    assert (cfg.timestep_freq_shift, cfg.mlp_norm_eps) == (1.0, 1e-5)
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.num_classes, cfg.learn_sigma) == (2, 32, 2, 10, True)
    # Our fixed sin-cos equals diffusers' recomputed buffer.
    torch.testing.assert_close(ours.pos_embed, ref.pos_embed.pos_embed, rtol=0, atol=1e-7)
    x, t, y = _inputs(cfg)
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    assert got.shape == expected.shape == (2, 8, 8, 8)
    assert _rel(got, expected) < 1e-5
    # Same through the dispatcher, from the folder and from the weights file.
    with torch.no_grad():
        assert torch.equal(load_checkpoint(d)(x, t, y), got)
        assert torch.equal(load_checkpoint(d / "diffusion_pytorch_model.safetensors")(x, t, y), got)


def test_diffusers_numeric_overrides_matter(diffusers_model):
    ref, d = diffusers_model
    ours = load_diffusers_checkpoint(d)
    plain_cfg = dataclasses.replace(ours.config, timestep_freq_shift=0.0, mlp_norm_eps=1e-6)
    plain = DiT(plain_cfg)
    plain.load_state_dict(ours.state_dict())
    plain.eval()
    x, t, y = _inputs(ours.config)
    with torch.no_grad():
        expected = ref(x, timestep=t, class_labels=y).sample
        assert _rel(plain(x, t, y), expected) > 1e-3


def test_diffusers_block_norm_eps_matters(diffusers_model):
    """The MLP-norm eps (1e-5 vs 1e-6) shows on small activations, block by block."""
    ref, d = diffusers_model
    ours = load_diffusers_checkpoint(d)
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, ours.config.num_tokens, ours.config.hidden_size, generator=g) * 3e-3
    t, y = torch.tensor([3.0, 517.0]), torch.tensor([1, 4])
    with torch.no_grad():
        c = ours.t_embedder(t) + ours.y_embedder(y, False)
        expected = ref.transformer_blocks[0](h, timestep=t, class_labels=y)
        got = ours.blocks[0](h, c)
        ours.blocks[0].norm2.eps = 1e-6
        wrong = ours.blocks[0](h, c)
    assert _rel(got, expected) < 1e-5
    assert _rel(wrong, expected) > 1e-3


def test_diffusers_conversion_errors_name_the_key(diffusers_model):
    ref, d = diffusers_model
    cfg = load_diffusers_checkpoint(d).config
    sd = dict(ref.state_dict())
    assert set(convert_diffusers_state_dict(sd, cfg)) == set(DiT(cfg).state_dict())

    bad = dict(sd, **{"transformer_blocks.0.attn1.norm_q.weight": torch.ones(16)})
    with pytest.raises(ValueError, match=r"unconverted diffusers key 'transformer_blocks\.0\.attn1\.norm_q\.weight'"):
        convert_diffusers_state_dict(bad, cfg)

    bad = dict(sd)
    del bad["transformer_blocks.1.attn1.to_k.bias"]
    with pytest.raises(ValueError, match=r"missing diffusers key 'transformer_blocks\.1\.attn1\.to_k\.bias'"):
        convert_diffusers_state_dict(bad, cfg)

    key = "transformer_blocks.1.norm1.emb.class_embedder.embedding_table.weight"
    bad = dict(sd, **{key: sd[key] + 1})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        convert_diffusers_state_dict(bad, cfg)


def test_diffusers_weights_without_config_need_one(diffusers_model, tmp_path):
    import shutil

    _, d = diffusers_model
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(d / "diffusion_pytorch_model.safetensors", lone)
    with pytest.raises(ValueError, match="config.json"):
        load_diffusers_checkpoint(lone / "diffusion_pytorch_model.safetensors")
    # The architecture can be given instead; diffusers' numerics are still applied.
    cfg = DiTConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=10)
    model = load_diffusers_checkpoint(lone, config=cfg)
    assert (model.config.timestep_freq_shift, model.config.mlp_norm_eps) == (1.0, 1e-5)

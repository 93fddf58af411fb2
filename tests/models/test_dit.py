"""The DiT architecture: shapes, registry, guidance, and the checkpoint format."""
import pytest
import torch

from tqdit_export.models import DIT_CONFIGS, DiT, DiTConfig, dit_config, load_dit, read_dit_metadata, save_dit


def _randomize(model: DiT, seed: int = 0) -> DiT:
    """DiT zero-initialises adaLN and the output; random weights make comparisons meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def test_registry_has_every_paper_size_and_the_bundled_configs():
    for size in ("XL", "L", "B", "S"):
        for patch in (2, 4, 8):
            assert f"DiT-{size}/{patch}" in DIT_CONFIGS
    xl = DIT_CONFIGS["DiT-XL/2"]
    assert (xl.depth, xl.hidden_size, xl.num_heads, xl.patch_size, xl.num_tokens) == (28, 1152, 16, 2, 256)
    assert DIT_CONFIGS["DiT-digits"].num_tokens == 64
    with pytest.raises(KeyError, match="DiT-Q/2"):
        dit_config("DiT-Q/2")


def test_dit_s2_parameter_count_matches_the_paper():
    # DiT-S/2 on 32x32x4 latents: 33.0M parameters (Peebles & Xie, Table 4; the count
    # includes the fixed pos_embed, as the reference code's print does).
    model = DiT(dit_config("DiT-S/2"))
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 1e6 - 33.0) < 0.05


def test_forward_shape_and_learned_sigma_channels():
    model = _randomize(DiT(dit_config("DiT-tiny")))
    x = torch.randn(3, 1, 8, 8)
    out = model(x, torch.tensor([0, 500, 999]), torch.tensor([0, 3, 10]))
    assert out.shape == (3, 2, 8, 8)
    assert torch.isfinite(out).all()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="patch_size"):
        DiTConfig(input_size=8, patch_size=3)
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(hidden_size=100, num_heads=3)


def test_forward_with_cfg_guides_the_conditional_half():
    model = _randomize(DiT(dit_config("DiT-tiny")))
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([400, 400, 400, 400])
    y = torch.tensor([1, 7, 10, 10])
    out = model.forward_with_cfg(torch.cat([x, x]), t, y, cfg_scale=4.0)
    cond = model(x, t[:2], y[:2])
    uncond = model(x, t[2:], y[2:])
    expected_eps = uncond[:, :1] + 4.0 * (cond[:, :1] - uncond[:, :1])
    torch.testing.assert_close(out[:2, :1], expected_eps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:2, 1:], cond[:, 1:], rtol=1e-5, atol=1e-5)


def test_label_dropout_uses_the_null_class_only_in_training():
    model = DiT(dit_config("DiT-tiny"))
    y = torch.arange(10)
    assert model.null_class == 10
    forced = model.y_embedder.token_drop(y, force_drop_ids=torch.ones(10, dtype=torch.long))
    assert (forced == 10).all()
    torch.testing.assert_close(model.y_embedder(y, train=False), model.y_embedder.embedding_table(y))


def test_checkpoint_roundtrip_carries_its_config(tmp_path):
    model = _randomize(DiT(dit_config("DiT-tiny")))
    path = tmp_path / "m.safetensors"
    save_dit(model, path, info={"steps": 7})
    config, info = read_dit_metadata(path)
    assert config == model.config and info == {"steps": 7}
    loaded = load_dit(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert not list(tmp_path.glob("*.tmp"))


def test_bundled_digits_model_loads():
    from tqdit_export.models import resolve_model

    resolved = resolve_model("dit-digits")
    assert resolved.model.config == dit_config("DiT-digits")
    assert resolved.pixel_space and resolved.dataset == "digits"
    _, info = read_dit_metadata(resolve_model.__globals__["BUNDLED_MODELS"]["dit-digits"].file)
    assert info["steps"] > 0 and info["hardware"]

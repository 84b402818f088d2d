"""The training loops on tiny modules: seeded, and they move the weights."""

from __future__ import annotations

import pytest
import torch

from fabric.errors import InvalidParameterError
from toyworld.train import TrainConfig, caption_variants, render_dataset, train_unet, train_vae


def _tiny_modules(seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKL(
            block_out_channels=(8, 8),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=4,
        )
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(8, 16),
            layers_per_block=1,
            norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=16,
                intermediate_size=16,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=16,
            )
        )
    return vae, unet, text


def _run(seed: int = 0):
    cfg = TrainConfig.quick(vae_steps=2, unet_steps=2, vae_batch=2, unet_batch=2)
    images, _, scenes = render_dataset(4, seed=0)
    images = images[:, :, :16, :16].contiguous()  # 16x16 crops keep the tiny models fast
    vae, unet, text = _tiny_modules(seed)
    before = unet.conv_in.weight.clone()
    g = torch.Generator().manual_seed(cfg.seed)
    stats = train_vae(vae, images, cfg, g)
    latents = stats.pop("latents") * stats["scaling_factor"]
    train_unet(unet, text, latents, caption_variants(scenes, seed=0), cfg, g)
    return vae, unet, before


def test_training_is_reproducible_and_updates_weights():
    vae_a, unet_a, before = _run()
    vae_b, unet_b, _ = _run()
    assert vae_a.config.scaling_factor == vae_b.config.scaling_factor != 1.0
    assert torch.equal(unet_a.conv_in.weight, unet_b.conv_in.weight)
    assert not torch.equal(unet_a.conv_in.weight, before)


@pytest.mark.parametrize("field, value", [("unet_steps", 0), ("caption_dropout", 1.0), ("vae_lr", -1.0), ("seed", -1)])
def test_train_config_rejects_bad_values(field, value):
    with pytest.raises(InvalidParameterError, match=field):
        TrainConfig(**{field: value})


def test_caption_variants_start_with_the_full_caption_and_are_seeded():
    from toyworld.scenes import caption, sample_scenes

    scenes = sample_scenes(20, seed=3)
    variants = caption_variants(scenes, seed=1)
    assert variants == caption_variants(scenes, seed=1)
    assert [v[0] for v in variants] == [caption(s) for s in scenes]
    partial = [p for v in variants for p in v[1:]]
    assert len(partial) == 40 and any(len(p) < len(v[0]) for v, p in zip(variants, partial[::2]))


def test_checkpoints_see_the_ema_weights_and_training_goes_on_with_the_live_ones():
    cfg = TrainConfig.quick(vae_steps=2, unet_steps=5, vae_batch=2, unet_batch=2, eval_every=2)
    images, _, scenes = render_dataset(4, seed=0)
    vae, unet, text = _tiny_modules(0)
    g = torch.Generator().manual_seed(0)
    stats = train_vae(vae, images[:, :, :16, :16].contiguous(), cfg, g)
    latents = stats.pop("latents") * stats["scaling_factor"]
    seen: list[tuple[int, bool, torch.Tensor]] = []

    def checkpoint(step: int) -> None:
        seen.append((step, unet.training, unet.conv_in.weight.detach().clone()))

    captions = caption_variants(scenes, seed=0)
    train_unet(unet, text, latents, captions, cfg, g, on_checkpoint=checkpoint)
    # steps 2 and 4 of 5; the final weights are saved by the caller, not as a checkpoint
    assert [s for s, *_ in seen] == [2, 4]
    assert not any(training for _, training, _ in seen)  # checkpoints generate in eval mode
    assert not torch.equal(seen[0][2], seen[1][2])

    # the same run without checkpoints ends with the same (EMA) weights: a checkpoint only looks
    vae2, unet2, text2 = _tiny_modules(0)
    g2 = torch.Generator().manual_seed(0)
    stats2 = train_vae(vae2, images[:, :, :16, :16].contiguous(), cfg, g2)
    train_unet(unet2, text2, stats2.pop("latents") * stats2["scaling_factor"], captions, cfg, g2)
    assert torch.equal(unet.conv_in.weight, unet2.conv_in.weight)


def _packaged_or_skip():
    from toyworld.model import DEFAULT_WEIGHTS_DIR, toy_weights_available

    if not toy_weights_available(DEFAULT_WEIGHTS_DIR):
        pytest.skip("no packaged toy weights")
    return DEFAULT_WEIGHTS_DIR


def test_training_continues_from_a_checkpoint_with_its_vae(tmp_path):
    from toyworld.model import load_toy_components
    from toyworld.train import train_sd

    root = _packaged_or_skip()
    cfg = TrainConfig.quick(n_images=8, unet_steps=1, unet_batch=2, eval_every=10)
    # no classifier in tmp_path: the accuracy readings are skipped, which keeps this fast
    stats = train_sd(cfg, tmp_path / "out", classifier_dir=tmp_path, init_from=root)
    start, after = load_toy_components(root), load_toy_components(tmp_path / "out")
    assert stats["unet"]["init_from"] == str(root)
    for name in ("unet", "text_encoder", "vae"):
        a, b = start[name].state_dict(), after[name].state_dict()
        # one step at lr 1e-3 moves a weight by about 1e-3; a fresh initialisation would be far off
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 0.01, name
    assert torch.equal(start["vae"].encoder.conv_in.weight, after["vae"].encoder.conv_in.weight)
    assert after["vae"].config.scaling_factor == start["vae"].config.scaling_factor


def test_continuing_needs_the_same_schedule_and_vae(tmp_path):
    import shutil

    from toyworld.train import train_sd

    root = _packaged_or_skip()
    v1 = tmp_path / "v1"
    shutil.copytree(root, v1)
    (v1 / "scheduler_config.json").unlink()  # a checkpoint without one has the first model's schedule
    cfg = TrainConfig.quick(n_images=8, unet_steps=1, unet_batch=2)
    with pytest.raises(InvalidParameterError, match="another noise schedule"):
        train_sd(cfg, tmp_path / "out", classifier_dir=tmp_path, init_from=v1)
    with pytest.raises(InvalidParameterError, match="keeps its own VAE"):
        train_sd(cfg, tmp_path / "out", classifier_dir=tmp_path, init_from=root, vae_from=v1)
    assert not (tmp_path / "out").exists()


def test_the_record_of_a_continued_run_keeps_the_earlier_record(tmp_path):
    import json

    from toyworld.train import training_record

    (tmp_path / "training.json").write_text(json.dumps({"sd": {"unet": {"final_mse": 0.13}}}))
    record = training_record(TrainConfig(unet_steps=7), init_from=tmp_path)
    assert record["config"]["unet_steps"] == 7
    assert record["continues"] == {"sd": {"unet": {"final_mse": 0.13}}}
    assert "continues" not in training_record(TrainConfig())


def test_a_stopped_run_ends_with_the_checkpoint_of_the_full_run_at_that_step():
    images, _, scenes = render_dataset(4, seed=0)
    captions = caption_variants(scenes, seed=0)

    def run(**overrides):
        cfg = TrainConfig.quick(vae_steps=2, unet_steps=5, vae_batch=2, unet_batch=2, eval_every=3, **overrides)
        vae, unet, text = _tiny_modules(0)
        g = torch.Generator().manual_seed(0)
        stats = train_vae(vae, images[:, :, :16, :16].contiguous(), cfg, g)
        seen: list[torch.Tensor] = []
        train_unet(
            unet,
            text,
            stats.pop("latents") * stats["scaling_factor"],
            captions,
            cfg,
            g,
            on_checkpoint=lambda step: seen.append(unet.conv_in.weight.detach().clone()),
        )
        return unet.conv_in.weight.detach(), seen

    full, checkpoints = run()
    stopped, none = run(unet_stop=3)
    # the same steps on the same learning-rate schedule: the stop's weights are the checkpoint's
    assert torch.equal(stopped, checkpoints[0]) and not torch.equal(stopped, full)
    assert none == []  # the stop is the end, not a checkpoint
    with pytest.raises(InvalidParameterError, match="unet_stop"):
        TrainConfig(unet_steps=10, unet_stop=11)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--unet-lr", "-1"], "unet_lr"),
        (["--unet-steps", "10", "--unet-stop", "11"], "unet_stop"),
        (["--init-from", "{tmp}/nothing"], "no toy checkpoint"),
    ],
)
def test_bad_training_input_is_one_line_and_exit_2_before_anything_is_written(tmp_path, capsys, argv, message):
    from toyworld.train import main

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main([a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()

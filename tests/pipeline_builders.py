"""Tiny random-weight instances of the pipeline families people deploy, built
without downloads: the UNets / transformers from diffusers' model classes
with small configs, the text encoders and VAE left out (the prompt embeddings
are passed directly). Each builder returns ``(pipe, kwargs)``: the pipeline
with its usual scheduler, and the keywords of a ``pipe(...)`` call (embeddings,
size, guidance). Used by the accelerate(pipe) and graph_pipeline tests."""

import inspect

import diffusers
import torch


def _embeddings(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _text(width=32, mask=False, pooled=None):
    """Prompt and negative embeddings (8 tokens of ``width``), with attention
    masks or pooled embeddings where the family takes them."""
    kw = {"prompt_embeds": _embeddings(1, 8, width, seed=10)}
    kw["negative_prompt_embeds"] = _embeddings(1, 8, width, seed=11)
    if mask:
        ones = torch.ones(1, 8, dtype=torch.long)
        kw.update(prompt=None, negative_prompt=None, prompt_attention_mask=ones, negative_prompt_attention_mask=ones)
    if pooled:
        kw.update(
            pooled_prompt_embeds=_embeddings(1, pooled, seed=12),
            negative_pooled_prompt_embeds=_embeddings(1, pooled, seed=13),
        )
    return kw


def _assemble(cls, **parts):
    """cls(**parts), every other component its __init__ requires (text
    encoders, tokenizers, VAE, safety checker, ...) left out (None)."""
    required = inspect.signature(cls.__init__).parameters.values()
    left_out = {p.name: None for p in required if p.default is inspect.Parameter.empty and p.name not in parts}
    return cls(**parts, **{k: v for k, v in left_out.items() if k != "self"})


def _unet(**config):
    return diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
        **config,
    )


def stable_diffusion():
    unet = _unet(sample_size=8, in_channels=4, out_channels=4, attention_head_dim=4)
    scheduler = diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    )
    pipe = _assemble(diffusers.StableDiffusionPipeline, unet=unet, scheduler=scheduler, requires_safety_checker=False)
    return pipe, dict(_text(), height=64, width=64, guidance_scale=7.5)


def stable_diffusion_xl():
    unet = _unet(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = _assemble(diffusers.StableDiffusionXLPipeline, unet=unet, scheduler=scheduler)
    return pipe, dict(_text(pooled=32), height=64, width=64, guidance_scale=5.0)


def stable_diffusion_3():
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=16,
    )
    pipe = _assemble(
        diffusers.StableDiffusion3Pipeline,
        transformer=transformer,
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    return pipe, dict(_text(pooled=32), height=64, width=64, guidance_scale=5.0)


def _flux_transformer(**channels):
    """A tiny Flux transformer (guidance embedding), 16 latent channels unless ``channels`` say otherwise."""
    return diffusers.FluxTransformer2DModel(
        patch_size=1,
        **{"in_channels": 16, **channels},
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )


def flux():
    """Flux: the guidance embedding, dynamic shifting by image size (the
    pipeline passes custom sigmas and mu to set_timesteps), packed latents."""
    transformer = _flux_transformer()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    pipe = _assemble(diffusers.FluxPipeline, scheduler=scheduler, transformer=transformer)
    text = {"prompt_embeds": _embeddings(1, 8, 32, seed=10), "pooled_prompt_embeds": _embeddings(1, 32, seed=12)}
    return pipe, dict(text, height=32, width=32, guidance_scale=3.5)


def _tiny_vae():
    """A small AutoencoderKL (4 latent channels, scale factor 2) for the
    pipelines that encode an input image."""
    return diffusers.AutoencoderKL(
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        shift_factor=0.1,
        scaling_factor=0.9,
        sample_size=32,
    )


def _image():
    return torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def flux_img2img():
    """Flux image-to-image: the input image's latents noised to the strength's
    first timestep, the schedule entered part-way (set_begin_index)."""
    pipe, kw = flux()
    pipe = _assemble(
        diffusers.FluxImg2ImgPipeline, scheduler=pipe.scheduler, transformer=pipe.transformer, vae=_tiny_vae()
    )
    return pipe, dict(kw, image=_image(), strength=0.6)


def flux_kontext():
    """Flux Kontext (editing): the input image's tokens beside the latents."""
    pipe, kw = flux()
    pipe = _assemble(
        diffusers.FluxKontextPipeline, scheduler=pipe.scheduler, transformer=pipe.transformer, vae=_tiny_vae()
    )
    return pipe, dict(kw, image=_image(), max_area=32 * 32, _auto_resize=False)


def flux_fill():
    """Flux Fill (inpainting): masked-image latents and the packed mask as extra channels."""
    pipe, kw = flux()
    transformer = _flux_transformer(in_channels=48, out_channels=16)  # latents, masked-image latents, mask
    pipe = _assemble(diffusers.FluxFillPipeline, scheduler=pipe.scheduler, transformer=transformer, vae=_tiny_vae())
    mask = (torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(6)) > 0.5).float()
    return pipe, dict(kw, image=_image(), mask_image=mask)


def stable_audio():
    """Stable Audio Open: a DiT on 1-d audio latents, its duration conditioning
    (projection model), the cosine DPM-Solver's schedule; latents out."""
    from diffusers.pipelines.stable_audio.modeling_stable_audio import StableAudioProjectionModel

    transformer = diffusers.StableAudioDiTModel(
        sample_size=8,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        num_key_value_attention_heads=1,
        out_channels=4,
        cross_attention_dim=16,
        time_proj_dim=8,
        global_states_input_dim=64,  # the start and end seconds' embeddings
        cross_attention_input_dim=32,
    )
    vae = diffusers.AutoencoderOobleck(  # (its hop length and sampling rate size the latents)
        encoder_hidden_size=6,
        downsampling_ratios=[1, 2],
        decoder_channels=3,
        decoder_input_channels=4,
        audio_channels=2,
        channel_multiples=[2, 4],
        sampling_rate=4,
    )
    projection = StableAudioProjectionModel(text_encoder_dim=32, conditioning_dim=32, min_value=0, max_value=32)
    scheduler = diffusers.CosineDPMSolverMultistepScheduler(
        solver_order=2, prediction_type="v_prediction", sigma_data=1.0, sigma_schedule="exponential"
    )
    parts = dict(transformer=transformer, vae=vae, projection_model=projection, scheduler=scheduler)
    pipe = _assemble(diffusers.StableAudioPipeline, **parts)
    text = {"prompt_embeds": _embeddings(1, 8, 32, seed=10), "negative_prompt_embeds": _embeddings(1, 8, 32, seed=11)}
    return pipe, dict(text, audio_end_in_s=4.0, guidance_scale=7.0)


def pixart_sigma():
    transformer = diffusers.PixArtTransformer2DModel(
        sample_size=8,
        num_layers=1,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=16,
        out_channels=8,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
    )
    scheduler = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    pipe = _assemble(diffusers.PixArtSigmaPipeline, transformer=transformer, scheduler=scheduler)
    return pipe, dict(_text(mask=True), height=64, width=64, guidance_scale=4.5, use_resolution_binning=False)


def sana():
    transformer = diffusers.SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_attention_heads=2,
        attention_head_dim=4,
        num_cross_attention_heads=2,
        cross_attention_head_dim=4,
        cross_attention_dim=8,
        caption_channels=32,
        sample_size=8,
    )
    pipe = _assemble(
        diffusers.SanaPipeline, transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    )
    return pipe, dict(_text(mask=True), height=64, width=64, guidance_scale=4.5, use_resolution_binning=False)


def auraflow():
    transformer = diffusers.AuraFlowTransformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        out_channels=4,
        pos_embed_max_size=64,
    )
    pipe = _assemble(
        diffusers.AuraFlowPipeline, transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler()
    )
    return pipe, dict(_text(mask=True), height=64, width=64, guidance_scale=3.5)


def _wan_transformer():
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        text_dim=32,
        freq_dim=16,
        ffn_dim=16,
        num_layers=1,
        rope_max_seq_len=32,
    )


def wan():
    transformer = _wan_transformer()
    scheduler = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    pipe = _assemble(diffusers.WanPipeline, scheduler=scheduler, transformer=transformer)
    return pipe, dict(_text(), height=32, width=32, num_frames=5, guidance_scale=5.0)


def wan_2_2():
    """Wan 2.2 (A14B): a second transformer, with its own guidance scale,
    below the boundary timestep."""
    pipe, kw = wan()
    parts = dict(scheduler=pipe.scheduler, transformer=pipe.transformer, transformer_2=_wan_transformer())
    pipe = _assemble(diffusers.WanPipeline, **parts, boundary_ratio=0.6)
    return pipe, dict(kw, guidance_scale_2=2.0)


def ltx_video():
    transformer = diffusers.LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=32,
    )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    pipe = _assemble(diffusers.LTXPipeline, scheduler=scheduler, transformer=transformer)
    text = _text(mask=True)
    del text["prompt"], text["negative_prompt"]
    return pipe, dict(text, height=32, width=32, num_frames=9, guidance_scale=3.0)


def cogvideox():
    transformer = diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=1,
        sample_width=4,
        sample_height=4,
        sample_frames=5,
        patch_size=2,
        max_text_seq_length=8,
    )
    scheduler = diffusers.CogVideoXDDIMScheduler(
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=True,
        snr_shift_scale=3.0,
    )
    pipe = _assemble(diffusers.CogVideoXPipeline, transformer=transformer, scheduler=scheduler)
    return pipe, dict(_text(), height=32, width=32, num_frames=5, guidance_scale=6.0)


def deepfloyd_if():
    """DeepFloyd IF stage I: pixel space, DDPM with dynamic thresholding and
    learned-range variances (which accelerate keeps stock), images out."""
    unet = _unet(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        encoder_hid_dim=32,
        resnet_time_scale_shift="scale_shift",
    )
    scheduler = diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        variance_type="learned_range",
    )
    pipe = _assemble(diffusers.IFPipeline, unet=unet, scheduler=scheduler, requires_safety_checker=False)
    return pipe, dict(_text(), height=16, width=16, guidance_scale=7.0, output_type="pt")


def lumina2():
    transformer = diffusers.Lumina2Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=16,
        num_layers=1,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=1,
        multiple_of=16,
        axes_dim_rope=(4, 2, 2),
        axes_lens=(32, 32, 32),
        cap_feat_dim=32,
    )
    pipe = _assemble(
        diffusers.Lumina2Pipeline, transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler()
    )
    return pipe, dict(_text(mask=True), height=64, width=64, guidance_scale=4.0)


def hunyuan_dit():
    """HunyuanDiT: two text embeddings (CLIP's and T5's) with masks, learned sigma."""
    transformer = diffusers.HunyuanDiT2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        patch_size=2,
        sample_size=8,
        hidden_size=16,
        num_layers=1,
        mlp_ratio=2.0,
        cross_attention_dim=32,
        cross_attention_dim_t5=32,
        pooled_projection_dim=16,
        text_len=8,
        text_len_t5=8,
        use_style_cond_and_image_meta_size=False,
    )
    scheduler = diffusers.DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.03,
        clip_sample=False,
        prediction_type="v_prediction",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = _assemble(diffusers.HunyuanDiTPipeline, transformer=transformer, scheduler=scheduler)
    text = _text(mask=True)
    second = {k.replace("embeds", "embeds_2").replace("mask", "mask_2"): v for k, v in text.items() if "prompt_" in k}
    return pipe, dict(text, **second, height=64, width=64, guidance_scale=5.0, use_resolution_binning=False)


def kandinsky_2_2():
    """Kandinsky 2.2's decoder: image embeddings (from the prior) instead of
    text, learned-range variances (which accelerate keeps stock for DDPM)."""
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        attention_head_dim=8,
        norm_num_groups=8,
        addition_embed_type="image",
        encoder_hid_dim=32,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        resnet_time_scale_shift="scale_shift",
    )
    scheduler = diffusers.DDPMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, variance_type="learned_range"
    )
    movq = diffusers.VQModel(  # (only its config is read: the latents are not decoded)
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8,
        latent_channels=4,
        num_vq_embeddings=16,
        vq_embed_dim=4,
    )
    pipe = _assemble(diffusers.KandinskyV22Pipeline, unet=unet, scheduler=scheduler, movq=movq)
    images = {"image_embeds": _embeddings(1, 32, seed=10), "negative_image_embeds": _embeddings(1, 32, seed=11)}
    return pipe, dict(images, height=16, width=16, guidance_scale=4.0)


def _helios_parts(scheduler):
    """A tiny Helios transformer and Wan VAE (the pipelines decode their
    history chunks, so the VAE is not left out)."""
    torch.manual_seed(0)
    transformer = diffusers.HeliosTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=256,
        ffn_dim=32,
        num_layers=1,
        rope_dim=(4, 4, 4),
    )
    vae = diffusers.AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    return dict(transformer=transformer, vae=vae, scheduler=scheduler)


def helios(scheduler_type="unipc"):
    """HeliosPipeline (autoregressive chunks, one stage of flow sigmas)."""
    scheduler = diffusers.HeliosScheduler(
        stage_range=[0, 1], stages=1, use_dynamic_shifting=True, scheduler_type=scheduler_type
    )
    pipe = _assemble(diffusers.HeliosPipeline, **_helios_parts(scheduler))
    return pipe, dict(_text(), height=16, width=16, num_frames=9, guidance_scale=3.0, max_sequence_length=8)


def helios_pyramid(scheduler_type="unipc", distilled=False):
    """HeliosPyramidPipeline (three stages at rising resolution, renoised in
    between), its distilled form with HeliosDMDScheduler. (gamma 0.2: at
    diffusers' default 1/3 its block-noise covariance for 2x2 patches is
    singular and the pipeline's Cholesky fails, stock or not.)"""
    if distilled:
        scheduler = diffusers.HeliosDMDScheduler(use_dynamic_shifting=True, gamma=0.2)
    else:
        scheduler = diffusers.HeliosScheduler(use_dynamic_shifting=True, gamma=0.2, scheduler_type=scheduler_type)
    pipe = _assemble(diffusers.HeliosPyramidPipeline, **_helios_parts(scheduler), is_distilled=distilled)
    kw = dict(_text(), height=64, width=64, num_frames=9, max_sequence_length=8)
    return pipe, dict(kw, guidance_scale=1.0 if distilled else 3.0, pyramid_num_inference_steps_list=[2, 3, 4])


FAMILIES = {
    f.__name__: f
    for f in (
        stable_diffusion,
        stable_diffusion_xl,
        stable_diffusion_3,
        flux,
        flux_img2img,
        flux_kontext,
        flux_fill,
        stable_audio,
        pixart_sigma,
        sana,
        auraflow,
        wan,
        ltx_video,
        cogvideox,
        deepfloyd_if,
        lumina2,
        hunyuan_dit,
        kandinsky_2_2,
    )
}

# The pipeline classes these families are, for the listing test.
FAMILY_CLASSES = {
    "stable_diffusion": "StableDiffusionPipeline",
    "stable_diffusion_xl": "StableDiffusionXLPipeline",
    "stable_diffusion_3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
    "flux_img2img": "FluxImg2ImgPipeline",
    "flux_kontext": "FluxKontextPipeline",
    "flux_fill": "FluxFillPipeline",
    "stable_audio": "StableAudioPipeline",
    "pixart_sigma": "PixArtSigmaPipeline",
    "sana": "SanaPipeline",
    "auraflow": "AuraFlowPipeline",
    "wan": "WanPipeline",
    "ltx_video": "LTXPipeline",
    "cogvideox": "CogVideoXPipeline",
    "deepfloyd_if": "IFPipeline",
    "lumina2": "Lumina2Pipeline",
    "hunyuan_dit": "HunyuanDiTPipeline",
    "kandinsky_2_2": "KandinskyV22Pipeline",
}

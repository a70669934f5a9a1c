"""graph_pipeline on every family it captures (SD, SDXL, SD3, Flux,
PixArt-Sigma, Sana, Wan 2.1 and 2.2), each a tiny random-weight pipeline
(tests/pipeline_builders.py), against the pipeline's own
``__call__(..., output_type="latent")`` for the same latents and embeddings,
2-3 schedulers each: run eagerly (CPU), recorded and replayed as a CUDA graph
would be (tests/replayed_graphs.py), on the meta device (no host read), and
with the denoiser through torch.compile; refusals. The SD 1.x/2.x loop's
older tests are in tests/test_graph.py."""

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")
pytest.importorskip("transformers", reason="diffusers' pipelines import it (make test installs it)")

from diffaccel.diffusers import graph_pipeline  # noqa: E402
from diffaccel.integrations.diffusers import graph_families  # noqa: E402

import pipeline_builders as builders  # noqa: E402
from replayed_graphs import use_replayed_loops  # noqa: E402
from conftest import DEVICE  # noqa: E402
from test_diffusers_every_class import ON_DEVICE  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore"),  # diffusers' notices about configs and unused components
    # Pipelines built on the host (diffusers' schedulers cannot be made under a
    # CUDA default device), then moved to DEVICE; no TF32 in the comparisons.
    pytest.mark.usefixtures("host_default_device", "exact_float32_convolutions"),
]

STEPS = 4

# (builder, scheduler class, graph_pipeline options): each family with 2-3 of
# the schedulers its pipeline is used with, and its loop-shaping options.
CASES = [
    ("stable_diffusion", "PNDMScheduler", {}),
    ("stable_diffusion", "DPMSolverMultistepScheduler", {"guidance_rescale": 0.7}),
    ("stable_diffusion", "EulerAncestralDiscreteScheduler", {}),
    ("stable_diffusion_xl", "EulerDiscreteScheduler", {}),
    (
        "stable_diffusion_xl",
        "DPMSolverMultistepScheduler",
        {"original_size": (96, 80), "crops_coords_top_left": (8, 0)},
    ),
    (
        "stable_diffusion_xl",
        "UniPCMultistepScheduler",
        {"negative_original_size": (32, 32), "negative_target_size": (48, 64), "guidance_rescale": 0.3},
    ),
    ("stable_diffusion_3", "FlowMatchEulerDiscreteScheduler", {}),
    ("stable_diffusion_3", "FlowMatchHeunDiscreteScheduler", {}),
    ("stable_diffusion_3", "DPMSolverMultistepScheduler", {}),
    ("flux", "FlowMatchEulerDiscreteScheduler", {}),
    ("flux", "FlowMatchEulerDiscreteScheduler", {"true_cfg_scale": 4.0}),
    ("pixart_sigma", "DPMSolverMultistepScheduler", {}),
    ("pixart_sigma", "DDIMScheduler", {}),
    ("pixart_sigma", "EulerAncestralDiscreteScheduler", {}),
    ("sana", "FlowMatchEulerDiscreteScheduler", {}),
    ("sana", "DPMSolverMultistepScheduler", {}),
    ("wan", "UniPCMultistepScheduler", {}),
    ("wan", "FlowMatchEulerDiscreteScheduler", {}),
    ("wan_2_2", "UniPCMultistepScheduler", {"guidance_scale_2": 2.0}),
]
IDS = [f"{b}-{s}" + "".join(f"-{k}" for k in o) for b, s, o in CASES]

# The keywords of a builder's pipe(...) call that graph_pipeline takes at capture.
CAPTURE_KEYWORDS = ("height", "width", "num_frames", "guidance_scale")


def _case(builder, scheduler, options, device=DEVICE):
    """The pipeline with ``scheduler`` made from its own scheduler's config,
    the pipe(...) keywords, the graph_pipeline keywords and the loop's inputs."""
    torch.manual_seed(0)
    pipe, kw = getattr(builders, builder)()
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    kw = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items() if k != "output_type"}
    kw.update(options)
    capture = {k: kw[k] for k in CAPTURE_KEYWORDS if k in kw}
    capture.update({k: kw[k] for k in options}, max_sequence_length=kw["prompt_embeds"].shape[1])
    if builder == "flux" and "true_cfg_scale" in options:  # Flux's true CFG needs the negative prompt's
        kw["negative_prompt_embeds"] = builders._embeddings(1, 8, 32, seed=11).to(device)
        kw["negative_pooled_prompt_embeds"] = builders._embeddings(1, 32, seed=13).to(device)
    inputs = {k: v for k, v in kw.items() if isinstance(v, torch.Tensor)}
    return pipe, kw, capture, inputs


def _stock(pipe, kw, latents):
    torch.manual_seed(1)  # (Euler ancestral draws from its generator; others from the global one)
    with torch.no_grad():
        out = pipe(
            **kw,
            latents=latents,
            num_inference_steps=STEPS,
            output_type="latent",
            generator=torch.Generator(DEVICE).manual_seed(2),
        )
    return out.frames if hasattr(out, "frames") else out.images


def _graphed(pipe, capture, inputs, latents):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, **capture)
    return loop, loop(loop.prepare_latents(latents), **{k: inputs[k] for k in loop.inputs}, seed=2)


def _relative(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def _noise(shape, seed=5):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def _latent_shape(pipe, capture):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(graph_pipeline(pipe, steps=1, **capture).latents.shape)


@pytest.mark.parametrize("replayed", [False, True], ids=["eager", "replayed"])
@pytest.mark.parametrize("builder,scheduler,options", CASES, ids=IDS)
def test_graph_pipeline_equals_the_pipelines_own_call(builder, scheduler, options, replayed, monkeypatch):
    """The captured loop (eager on CPU; or recorded and replayed op by op, as a
    CUDA graph replays) gives the pipeline's own latents for the same starting
    latents and embeddings, and a second call repeats the first."""
    pipe, kw, capture, inputs = _case(builder, scheduler, options)
    latents = _noise(_latent_shape(pipe, capture))
    want = _stock(pipe, kw, latents)
    if replayed:
        use_replayed_loops(monkeypatch)
    loop, got = _graphed(pipe, capture, inputs, latents)
    assert loop.graphed == (replayed or DEVICE == "cuda")
    assert got.shape == want.shape and got.dtype == want.dtype
    assert _relative(got, want) < 1e-4
    again = loop(loop.prepare_latents(latents), **{k: inputs[k] for k in loop.inputs}, seed=2)
    assert torch.equal(again, got)
    assert type(pipe.scheduler).__module__.startswith("diffusers.")  # the pipeline keeps its own scheduler


@pytest.mark.parametrize(
    "builder,scheduler,options",
    [
        ("stable_diffusion_xl", "EulerAncestralDiscreteScheduler", {}),
        ("flux", "FlowMatchEulerDiscreteScheduler", {"true_cfg_scale": 2.0}),
        ("wan", "UniPCMultistepScheduler", {}),
    ],
)
def test_batches_of_two(builder, scheduler, options):
    """Two images in one loop (SDXL's time ids repeated per image, Flux's ids and
    guidance expanded, Wan's two calls), each with its own embeddings."""
    pipe, kw, capture, inputs = _case(builder, scheduler, options)
    two = {k: torch.cat([v, torch.randn_like(v) if v.is_floating_point() else v]) for k, v in inputs.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, batch_size=2, **capture)
    latents = _noise(loop.latents.shape)
    got = loop(loop.prepare_latents(latents), **{k: two[k] for k in loop.inputs}, seed=2)
    assert got.shape[0] == 2
    assert _relative(got, _stock(pipe, dict(kw, **two), latents)) < 1e-4


def _sd3_dynamic_shift(pipe):
    dynamic = dict(use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64)
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **dynamic)
    assert pipe.scheduler.config.use_dynamic_shifting
    return pipe


def _lcm_unet(pipe):
    """An LCM-distilled UNet: guidance as an embedding (time_cond_proj_dim), no CFG."""
    torch.manual_seed(3)
    unet = builders._unet(sample_size=8, in_channels=4, out_channels=4, attention_head_dim=4, time_cond_proj_dim=8)
    scheduler = diffusers.LCMScheduler.from_config(pipe.scheduler.config)
    parts = dict(unet=unet.to(pipe.unet.device), scheduler=scheduler, requires_safety_checker=False)
    return builders._assemble(diffusers.StableDiffusionPipeline, **parts)


def _wan_expanded_timesteps(pipe):
    """Wan 2.2 TI2V's timestep per latent token."""
    pipe.register_to_config(expand_timesteps=True)
    return pipe


@pytest.mark.parametrize(
    "builder,scheduler,change",
    [
        ("stable_diffusion_3", "FlowMatchEulerDiscreteScheduler", _sd3_dynamic_shift),
        ("stable_diffusion", "PNDMScheduler", _lcm_unet),
        ("wan", "UniPCMultistepScheduler", _wan_expanded_timesteps),
    ],
    ids=["sd3-dynamic-shift", "sd-lcm-unet", "wan-expanded-timesteps"],
)
def test_schedule_and_model_variants(builder, scheduler, change):
    """SD3's dynamic shift (mu for the size), an LCM UNet (guidance as an
    embedding), Wan 2.2 TI2V's per-token timesteps: the pipeline's own latents.
    (In text-to-video every token's timestep is t, so Wan's case checks that the
    per-token form runs and agrees; it cannot tell it from the plain form.)"""
    pipe, kw, capture, inputs = _case(builder, scheduler, {})
    pipe = change(pipe)
    pipe.set_progress_bar_config(disable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, **capture)
    latents = _noise(loop.latents.shape)
    got = loop(loop.prepare_latents(latents), **{k: inputs[k] for k in loop.inputs}, seed=2)
    want = _stock(pipe, kw, latents)
    assert _relative(got, want) < 1e-4


def test_replayed_loops_follow_new_inputs(monkeypatch):
    """Inputs live in static buffers that the replay reads: new embeddings and
    latents give the pipeline's result for them, not the captured ones."""
    pipe, kw, capture, inputs = _case("flux", "FlowMatchEulerDiscreteScheduler", {"true_cfg_scale": 3.0})
    use_replayed_loops(monkeypatch)
    loop, _ = _graphed(pipe, capture, inputs, _noise(_latent_shape(pipe, capture)))
    other = {k: torch.randn_like(v) for k, v in inputs.items()}
    latents = _noise(loop.latents.shape, seed=9)
    got = loop(loop.prepare_latents(latents), **{k: other[k] for k in loop.inputs})
    assert _relative(got, _stock(pipe, dict(kw, **other), latents)) < 1e-4


def _on_host_then_meta(set_timesteps):
    """A family's set_timesteps run on the host (diffusers' schedulers keep
    host copies, which cannot come from the meta device), then the tensors
    diffusers leaves on the device moved to meta, as in
    tests/test_diffusers_every_class.py."""

    def on_host_then_meta(family, scheduler, steps):
        device, family.device = family.device, torch.device("cpu")
        try:
            set_timesteps(family, scheduler, steps)
        finally:
            family.device = device
        for name in ON_DEVICE.get(type(scheduler).__name__, ("timesteps",)):
            setattr(scheduler, name, getattr(scheduler, name).to("meta"))

    return on_host_then_meta


@pytest.mark.parametrize("builder,scheduler,options", CASES, ids=IDS)
def test_loop_reads_nothing_on_the_host(builder, scheduler, options, monkeypatch):
    """The whole loop with the denoiser, the inputs and the schedule on the meta
    device (which has no data: any .item(), bool() or .cpu() of a device tensor
    raises). The schedule is set on the host first, as at capture."""
    pipe, kw, capture, inputs = _case(builder, scheduler, options, device="cpu")
    family = graph_families.family_of(pipe)
    monkeypatch.setattr(family, "set_timesteps", _on_host_then_meta(family.set_timesteps))
    for name in ("unet", "transformer", "transformer_2"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, **capture)
    assert loop.latents.device.type == "meta"
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in inputs.items()}
    out = loop(torch.empty(loop.latents.shape, device="meta"), **{k: meta[k] for k in loop.inputs})
    assert out.device.type == "meta" and out.shape == loop.latents.shape


def test_prepare_latents_draws_the_pipelines_noise():
    """From a generator, prepare_latents draws what the pipeline draws: the same
    seed gives the pipeline's own result (Flux packs its noise; SD scales it)."""
    for builder, scheduler in (("flux", "FlowMatchEulerDiscreteScheduler"), ("stable_diffusion", "PNDMScheduler")):
        pipe, kw, capture, inputs = _case(builder, scheduler, {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loop = graph_pipeline(pipe, steps=STEPS, **capture)
        got = loop(loop.prepare_latents(generator=torch.Generator(DEVICE).manual_seed(4)), **inputs)
        with torch.no_grad():
            want = pipe(
                **kw, num_inference_steps=STEPS, output_type="latent", generator=torch.Generator(DEVICE).manual_seed(4)
            )
        assert _relative(got, want.images) < 1e-4


def test_encode_gives_the_loops_inputs(monkeypatch):
    """encode() calls the pipeline's own encode_prompt (stubbed here: the tiny
    pipelines have no text encoders) and names its results as the loop and
    the pipeline take them; negatives only with guidance."""
    pipe, kw, capture, inputs = _case("stable_diffusion_xl", "EulerDiscreteScheduler", {})
    calls = []

    def encode_prompt(**kwargs):
        calls.append(kwargs)
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return tuple(inputs[name] for name in names)

    monkeypatch.setattr(pipe, "encode_prompt", encode_prompt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, **capture)
    encoded = loop.encode("a photo", negative_prompt="blurry")
    assert set(encoded) == set(loop.inputs) == set(inputs)
    assert calls[0]["prompt"] == "a photo" and calls[0]["negative_prompt"] == "blurry"
    assert calls[0]["do_classifier_free_guidance"] is True and calls[0]["num_images_per_prompt"] == 1
    latents = _noise(loop.latents.shape)
    assert _relative(loop(loop.prepare_latents(latents), **encoded), _stock(pipe, kw, latents)) < 1e-4
    with pytest.raises(ValueError, match="give one prompt or 1"):
        loop.encode(["a", "b"])


def test_compiled_denoiser_inside_the_loop_equals_eager():
    """compile=True: the denoiser through torch.compile (inductor, on CPU here)
    inside the loop gives the eager loop's latents."""
    pipe, kw, capture, inputs = _case("stable_diffusion_3", "FlowMatchEulerDiscreteScheduler", {})
    latents = _noise(_latent_shape(pipe, capture))
    _, eager = _graphed(pipe, capture, inputs, latents)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=STEPS, compile={"dynamic": False}, **capture)
    compiled = loop(loop.prepare_latents(latents), **inputs)
    assert _relative(compiled, eager) < 1e-4
    assert isinstance(loop._denoisers[0], torch._dynamo.eval_frame.OptimizedModule)


def test_refusals_name_what_is_missing():
    pipe, kw, capture, inputs = _case("stable_diffusion_3", "FlowMatchEulerDiscreteScheduler", {})
    with pytest.raises(TypeError, match="takes a diffusers pipeline"):
        graph_pipeline(object(), steps=2, height=64, width=64)
    other = builders._assemble(
        diffusers.StableDiffusion3Img2ImgPipeline, transformer=pipe.transformer, scheduler=pipe.scheduler
    )
    with pytest.raises(ValueError, match="StableDiffusion3Img2ImgPipeline is not a family it captures"):
        graph_pipeline(other, steps=2, height=64, width=64)
    with pytest.raises(ValueError, match="multiples of 16"):
        graph_pipeline(pipe, steps=2, height=56, width=64)
    with pytest.raises(TypeError, match="unexpected option\\(s\\) true_cfg_scale for stable-diffusion-3"):
        graph_pipeline(pipe, steps=2, height=64, width=64, true_cfg_scale=2.0)
    with pytest.raises(ValueError, match="num_frames: StableDiffusion3Pipeline makes images"):
        graph_pipeline(pipe, steps=2, height=64, width=64, num_frames=5)
    with pytest.raises(ValueError, match="mode 'reduce-overhead' makes inductor's own CUDA graphs"):
        graph_pipeline(pipe, steps=2, height=64, width=64, compile={"mode": "reduce-overhead"})
    with pytest.raises(ValueError, match="steps must be a positive int"):
        graph_pipeline(pipe, steps=0, height=64, width=64)
    wan, _, _, _ = _case("wan", "UniPCMultistepScheduler", {})
    with pytest.raises(ValueError, match="num_frames must be 4 k \\+ 1"):
        graph_pipeline(wan, steps=2, height=32, width=32, num_frames=6)
    flux = builders._assemble(diffusers.FluxPipeline, scheduler=pipe.scheduler)
    with pytest.raises(ValueError, match="this FluxPipeline lacks a transformer"):
        graph_pipeline(flux, steps=2, height=32, width=32)
    sd, _, _, _ = _case("stable_diffusion", "PNDMScheduler", {})
    sdxl = builders._assemble(diffusers.StableDiffusionXLPipeline, unet=sd.unet, scheduler=sd.scheduler)
    with pytest.raises(ValueError, match="lacks a unet with SDXL's added conditioning"):
        graph_pipeline(sdxl, steps=2, height=64, width=64)
    wan.register_to_config(boundary_ratio=0.5)
    with pytest.raises(ValueError, match="lacks a transformer_2"):
        graph_pipeline(wan, steps=2, height=32, width=32, num_frames=5)
    pipe.scheduler = diffusers.KarrasVeScheduler()
    with pytest.raises(ValueError, match="stock KarrasVeScheduler synchronizes"):
        graph_pipeline(pipe, steps=2, height=64, width=64)


def test_call_errors_name_the_input():
    pipe, kw, capture, inputs = _case("stable_diffusion_xl", "EulerDiscreteScheduler", {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loop = graph_pipeline(pipe, steps=2, **capture)
        unguided = graph_pipeline(pipe, steps=2, **dict(capture, guidance_scale=1.0))
    latents = _noise(loop.latents.shape)
    assert loop.inputs == [
        "prompt_embeds",
        "pooled_prompt_embeds",
        "negative_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ]
    with pytest.raises(ValueError, match="negative_prompt_embeds is required \\(the loop was captured with guidance"):
        loop(latents, inputs["prompt_embeds"], pooled_prompt_embeds=inputs["pooled_prompt_embeds"])
    with pytest.raises(ValueError, match="pooled_prompt_embeds must have shape \\(1, 32\\)"):
        loop(latents, **dict(inputs, pooled_prompt_embeds=inputs["pooled_prompt_embeds"][:, :5]))
    with pytest.raises(TypeError, match="unexpected input\\(s\\) prompt_attention_mask"):
        loop(latents, **inputs, prompt_attention_mask=torch.ones(1, 8))
    with pytest.raises(ValueError, match="negative_prompt_embeds: this loop was captured without guidance"):
        unguided(latents, **inputs)
    with pytest.raises(ValueError, match="latents must have shape \\(1, 4, 8, 8\\)"):
        loop(latents[:, :3], **inputs)

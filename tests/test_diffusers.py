"""diffaccel.integrations.diffusers against stock diffusers: the same 25-step
loop, deterministic non-linear model and noise generator, over the config
matrix of DPMSolverMultistepScheduler."""

import inspect
import random
import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel import benchmarking  # noqa: E402
from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE, RANDOM_SEEDS  # noqa: E402

# diffusers' own numpy-2 deprecation noise (numpy functions on tensors in set_timesteps).
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
              pytest.mark.usefixtures("host_default_device")]


def model(x, t):
    """A deterministic, non-linear stand-in for a network (depends on t)."""
    return torch.tanh(x) * 0.5 + 0.1 * torch.sin(x * (1 + float(t) / 1000))


def _step(scheduler, model_output, t, x, previous, **step_options):
    """One step as a pipeline takes it; returns (x, previous). CogVideoX's
    DPM-Solver is handed the previous step's timestep and data prediction
    (``previous``, None at first), as the CogVideoX pipelines hand them back;
    Wuerstchen's the timestep as a (batch,) tensor, ``t.expand(batch)``, as the
    Wuerstchen and Stable Cascade pipelines hand it; the others take diffusers'
    usual step(model_output, timestep, sample)."""
    if isinstance(scheduler, diffusers.CogVideoXDPMScheduler):
        t_back, old = previous or (None, None)
        x, old = scheduler.step(model_output, old, t, t_back, x, **step_options)
        return x, (t, old)
    t = benchmarking.pipeline_timestep(scheduler, t, len(x))
    return scheduler.step(model_output, t, x, **step_options).prev_sample, None


def _loop(scheduler, steps=25, dtype=torch.float32, shape=(2, 4, 16, 16), model_dtype=None, start=0,
          **step_options):
    """A whole sampling loop from seeded noise of ``dtype`` (the model output in
    ``model_dtype``, by default the same); from the start-th step, as img2img
    runs it (set_begin_index where the scheduler has it, then
    scheduler.timesteps[start * order:])."""
    benchmarking.pipeline_set_timesteps(scheduler, steps, DEVICE)
    begin = start * getattr(scheduler, "order", 1)  # (UnCLIPScheduler has no order)
    if begin and hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    x = torch.randn(shape, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    if "generator" in inspect.signature(scheduler.step).parameters:  # seeded, unless the caller gives one
        step_options = {"generator": torch.Generator(DEVICE).manual_seed(1), **step_options}
    previous = None
    for t in benchmarking.pipeline_timesteps(scheduler)[begin:]:
        scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = model(scaled, t).to(model_dtype or dtype)
        x, previous = _step(scheduler, out, t, x, previous, **step_options)
    return x


def _small_unet():
    """The pipeline tests' network: a small UNet2DModel for 16x16 RGB images,
    randomly initialised from a config with seed 0 (nothing downloaded)."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(16, 32), norm_num_groups=8,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D")).to(DEVICE)


def _relative_error(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


CONFIGS = [
    {},
    {"solver_order": 1},
    {"solver_order": 3},
    {"solver_type": "heun"},
    {"solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
    {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min"},
    {"algorithm_type": "sde-dpmsolver", "final_sigmas_type": "sigma_min", "solver_type": "heun"},
    {"thresholding": True},
    {"thresholding": True, "sample_max_value": 1.5, "dynamic_thresholding_ratio": 0.9, "solver_order": 3},
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_beta_sigmas": True},
    {"use_lu_lambdas": True},
    {"final_sigmas_type": "sigma_min"},
    {"lower_order_final": False},
    {"euler_at_final": True},
    {"prediction_type": "sample"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "v_prediction", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "sample", "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "leading", "steps_offset": 1},
    # These sigma schedules end on sigma_min, and sigma_min is appended again: the last
    # step is between equal sigmas (h = 0), finite in diffusers' tensor arithmetic.
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},
    {"use_exponential_sigmas": True, "final_sigmas_type": "sigma_min", "prediction_type": "v_prediction"},
    {"use_beta_sigmas": True, "final_sigmas_type": "sigma_min", "algorithm_type": "sde-dpmsolver++"},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "algorithm_type": "sde-dpmsolver"},
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_dpm_solver_multistep_matches_diffusers(config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # diffusers' deprecation of the dpmsolver algorithm types
        stock = diffusers.DPMSolverMultistepScheduler(**config)
        ours = accelerated.DPMSolverMultistepScheduler(**config)
    assert not ours.unsupported_options()
    want, got = _loop(stock), _loop(ours)
    # Measured: 1e-7 to 1e-6 (coefficients in float64, one fused expression per step).
    assert _relative_error(got, want) < 1e-5


COGVIDEOX_5B = {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
                "clip_sample": False, "set_alpha_to_one": True, "snr_shift_scale": 1.0}
BF16_CASES = [("DPMSolverMultistepScheduler", {}), ("DPMSolverMultistepScheduler", {"thresholding": True}),
              ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}), ("PNDMScheduler", {}),
              ("PNDMScheduler", {"skip_prk_steps": True}), ("EDMEulerScheduler", {}),
              ("EDMDPMSolverMultistepScheduler", {}), ("CogVideoXDPMScheduler", COGVIDEOX_5B),
              ("CosineDPMSolverMultistepScheduler", {}), ("UnCLIPScheduler", {}), ("DDPMWuerstchenScheduler", {})]


@pytest.mark.parametrize("name,config", BF16_CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_bf16_model_within_bf16_tolerance(name, config):
    """With a bf16 model, within bf16 rounding of stock's bf16 loop and as close
    to the float32 loop as stock is (diffusers' EDM DPM-Solver updates in bf16,
    with no float32 upcast, where the fused step computes in float32: there the
    fused loop is about twice as close)."""
    exact = _loop(getattr(diffusers, name)(**config))
    stock = _loop(getattr(diffusers, name)(**config), dtype=torch.bfloat16)
    got = _loop(getattr(accelerated, name)(**config), dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert _relative_error(got, exact) <= 1.25 * _relative_error(stock, exact)
    assert _relative_error(got, stock) < 3e-2


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)],
                         ids=["float32-sample-bf16-model", "bf16-sample-float32-model"])
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_mixed_dtypes_step_in_diffusers_dtype(name, dtypes):
    """A sample and a model output of different dtypes give diffusers' result
    dtype (their promotion: DPM-Solver++ with float32 latents and a bf16 model
    returned bf16 before, diffusers float32), and a sample close to diffusers'
    or, where diffusers computes in bf16 (the DPM-Solver inverse), to the float32 loop."""
    config = {"noise_sampler_seed": 0} if name == "DPMSolverSDEScheduler" else {}
    def run(module, sample_dtype, model_dtype):
        return _loop(getattr(module, name)(**config), steps=10, dtype=sample_dtype, shape=(2, 4, 8, 8),
                     model_dtype=model_dtype)

    stock, got = run(diffusers, *dtypes), run(accelerated, *dtypes)
    exact = run(diffusers, torch.float32, torch.float32)
    assert got.dtype == stock.dtype
    assert min(_relative_error(got, stock), _relative_error(got, exact)) < 3e-2


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float64), (torch.float32, torch.float64),
                                    (torch.float64, torch.float32)],
                         ids=["float64", "float32-sample-float64-model", "float64-sample-float32-model"])
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_float64_inputs_step_as_diffusers(name, dtypes):
    """A float64 sample or model output: diffusers' arithmetic is then float64
    (also where it upcasts the sample to float32 first), and the fused ops,
    which do not mix float64 with 16/32-bit tensors, take every input in
    float64 (integrations.float64_if_any): diffusers' result dtype and sample
    (measured on the dev VM: within 2.3e-6), the Brownian-tree and renoising
    noise drawn in diffusers' dtype. (Before 2026-11-28 nearly every drop-in
    raised TypeError here, and four drew other noise.)"""
    config = {"noise_sampler_seed": 0} if name == "DPMSolverSDEScheduler" else {}
    stock, got = (_loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), dtype=dtypes[0],
                        model_dtype=dtypes[1]) for module in (diffusers, accelerated))
    assert got.dtype == stock.dtype
    assert _relative_error(got, stock) < 1e-5


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_bf16_loops_are_as_close_to_float32_as_stock(name):
    """A bf16 sample and bf16 model output (a GPU pipeline in bf16): diffusers'
    result dtype, and a sample at least as close to the float32 loop as stock's
    bf16 loop (within 25%). Measured on the dev VM, 10 steps: the drop-in
    0.73e-3 to 1.3e-2 from float32, stock 1.5e-3 to 8.5e-2, never closer than
    the drop-in (the fused step rounds to bf16 once, stock at each tensor op)."""
    config = {"noise_sampler_seed": 0} if name == "DPMSolverSDEScheduler" else {}

    def run(module, dtype):
        return _loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), dtype=dtype, model_dtype=dtype)

    exact, stock, got = run(diffusers, torch.float32), run(diffusers, torch.bfloat16), run(accelerated, torch.bfloat16)
    assert got.dtype == stock.dtype
    assert _relative_error(got, exact) <= 1.25 * _relative_error(stock, exact)


def test_state_api_is_diffusers():
    s = accelerated.DPMSolverMultistepScheduler(solver_order=3)
    s.set_timesteps(10, device=DEVICE)
    s.set_begin_index(2)
    assert s.begin_index == 2
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    t = s.timesteps[2]
    assert torch.equal(s.scale_model_input(x, t), x)
    out = s.step(model(x, t), t, x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    assert s.step_index == 3 and s.lower_order_nums == 1
    assert s.model_outputs[-1] is not None
    noisy = s.add_noise(x, torch.randn_like(x), s.timesteps[:1])
    assert noisy.shape == x.shape


def test_accelerate_swaps_schedulers_and_pipelines():
    stock = diffusers.DPMSolverMultistepScheduler(solver_order=3, use_karras_sigmas=True)
    swapped, changes = accelerated.accelerate(stock)
    assert isinstance(swapped, accelerated.DPMSolverMultistepScheduler)
    assert dict(swapped.config) == dict(stock.config)
    assert changes == ["DPMSolverMultistepScheduler -> diffaccel DPMSolverMultistepScheduler"]

    class Pipeline:  # anything with a .scheduler, as diffusers' pipelines have
        scheduler = diffusers.DPMSolverMultistepScheduler()

    pipe, changes = accelerated.accelerate(Pipeline())
    assert isinstance(pipe.scheduler, accelerated.DPMSolverMultistepScheduler) and len(changes) == 1

    class PriorAndDecoder(diffusers.DiffusionPipeline):  # UnCLIP's pipelines: schedulers, none named `scheduler`
        def __init__(self, prior_scheduler, decoder_scheduler):
            super().__init__()
            self.register_modules(prior_scheduler=prior_scheduler, decoder_scheduler=decoder_scheduler)

    pipe, changes = accelerated.accelerate(PriorAndDecoder(diffusers.UnCLIPScheduler(), diffusers.UnCLIPScheduler()))
    assert isinstance(pipe.prior_scheduler, accelerated.UnCLIPScheduler)
    assert isinstance(pipe.decoder_scheduler, accelerated.UnCLIPScheduler)
    assert changes == ["UnCLIPScheduler -> diffaccel UnCLIPScheduler (prior_scheduler)",
                       "UnCLIPScheduler -> diffaccel UnCLIPScheduler (decoder_scheduler)"]


def test_accelerate_keeps_what_it_cannot_fuse():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        unsupported = diffusers.DPMSolverMultistepScheduler(algorithm_type="dpmsolver", thresholding=True,
                                                            final_sigmas_type="sigma_min")
    with pytest.warns(UserWarning, match="thresholding"):
        kept, changes = accelerated.accelerate(unsupported)
    assert kept is unsupported and changes == []
    with pytest.warns(UserWarning, match=r"solver_order=3 \(diffusers' cosine step has orders 1 and 2 only\)"):
        kept, changes = accelerated.accelerate(diffusers.CosineDPMSolverMultistepScheduler(solver_order=3))
    assert isinstance(kept, diffusers.CosineDPMSolverMultistepScheduler) and changes == []
    with pytest.warns(UserWarning, match="no accelerated IPNDMScheduler"):
        kept, _ = accelerated.accelerate(diffusers.IPNDMScheduler())
    assert isinstance(kept, diffusers.IPNDMScheduler)
    with pytest.warns(UserWarning, match=r"thresholding \(with algorithm_type='noise_prediction'\)"):
        kept, changes = accelerated.accelerate(diffusers.SASolverScheduler(algorithm_type="noise_prediction",
                                                                           thresholding=True))
    assert isinstance(kept, diffusers.SASolverScheduler) and changes == []
    with pytest.raises(TypeError, match="scheduler or pipeline"):
        accelerated.accelerate(42)


DDIM_CASES = [
    ({}, {}),
    ({"clip_sample": False}, {}),
    ({"clip_sample": False}, {"eta": 1.0}),
    ({}, {"eta": 0.5, "use_clipped_model_output": True}),
    ({"thresholding": True, "clip_sample": False}, {}),
    ({"thresholding": True, "sample_max_value": 2.0}, {"eta": 0.3}),
    ({"clip_sample_range": 0.5}, {}),
    ({"prediction_type": "sample"}, {}),
    ({"prediction_type": "v_prediction", "clip_sample": False}, {"eta": 1.0}),
    ({"set_alpha_to_one": False, "timestep_spacing": "trailing"}, {}),
    ({"timestep_spacing": "linspace", "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}),
    ({"steps_offset": 1, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"}, {}),
    # epsilon at a zero terminal SNR: the first x0 is infinite, and clip_sample makes it +-1
    ({"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, {}),
]


@pytest.mark.parametrize("config,step_options", DDIM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ddim_matches_diffusers(config, step_options):
    want = _loop(diffusers.DDIMScheduler(**config), **step_options)
    got = _loop(accelerated.DDIMScheduler(**config), **step_options)
    assert _relative_error(got, want) < 1e-5


def test_ddim_outputs_and_device_timesteps():
    """pred_original_sample is the (clipped) data prediction; device timesteps are counted, not read."""
    stock, ours = diffusers.DDIMScheduler(), accelerated.DDIMScheduler()
    for s in (stock, ours):
        s.set_timesteps(10, device=DEVICE)
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    t = ours.timesteps[0]
    a = stock.step(model(x, t), t, x, return_dict=False)
    b = ours.step(model(x, t), t, x, return_dict=False)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)


def test_device_timesteps_are_found_by_position():
    """A device timestep that is an element of scheduler.timesteps is located by
    its position, not read (meta tensors have nothing to read), also when the
    loop starts part-way as img2img's does (the step counter then says 0)."""
    scheduler = accelerated.DDIMScheduler()
    scheduler.set_timesteps(10)
    host = scheduler.timesteps.tolist()
    scheduler.timesteps = scheduler.timesteps.to("meta")
    for position in (0, 4, 9):
        assert accelerated._host_timestep(scheduler, scheduler.timesteps[position], counter=0) == host[position]
    for position, t in enumerate(scheduler.timesteps[4:], start=4):
        assert accelerated._host_timestep(scheduler, t, counter=position - 4) == host[position]


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_ddim_pipeline_gives_the_same_images():
    """diffusers' DDIMPipeline with a small randomly initialised UNet2DModel (built
    from a config, nothing downloaded): the same images with either scheduler."""
    unet = _small_unet()
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10, eta=0.5,
                    output_type="np").images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.DDIMScheduler) and len(changes) == 1
    fused = images()
    assert abs(fused - stock).max() < 1e-4  # images in [0, 1]


@pytest.fixture(scope="module")
def dit_pipeline_parts():
    """A tiny DiTPipeline's transformer (learned sigma: 8 output channels for 4
    latent ones) and VAE, randomly initialised from configs with seed 0."""
    torch.manual_seed(0)
    transformer = diffusers.Transformer2DModel(
        sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero", norm_elementwise_affine=False).to(DEVICE).eval()
    vae = diffusers.AutoencoderKL(block_out_channels=(16,), norm_num_groups=8, latent_channels=4).to(DEVICE).eval()
    return transformer, vae


# Every class with diffusers' usual step, but the inversion ones (data to noise)
# and the flow-matching ones (no scale_model_input, which DiT's loop calls).
DIT_SCHEDULERS = sorted(set(accelerated.ACCELERATED) - {
    "ScoreSdeVeScheduler", "CogVideoXDPMScheduler", "DDIMInverseScheduler", "DPMSolverMultistepInverseScheduler",
    "FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler",
    "LTXEulerAncestralRFScheduler", "DDPMWuerstchenScheduler",  # (DiT hands a 0-d timestep, which Wuerstchen's step does not take)
    "SCMScheduler"})  # (a TrigFlow model's, whose pipelines step over timesteps[:-1])


@pytest.mark.filterwarnings("ignore")  # diffusers' notices about scheduler options
@pytest.mark.usefixtures("exact_float32_convolutions")
@pytest.mark.parametrize("name", DIT_SCHEDULERS)
def test_dit_pipeline_gives_the_same_images(name, dit_pipeline_parts):
    """diffusers' own DiTPipeline loop (classifier-free guidance on a doubled
    batch, scale_model_input, the learned-sigma half split off as a
    non-contiguous view, timesteps handed out by the pipeline) with the stock
    scheduler, then after ``accelerate(pipe)``: the same images."""
    transformer, vae = dit_pipeline_parts
    config = {"noise_sampler_seed": 0} if name == "DPMSolverSDEScheduler" else {}
    pipe = diffusers.DiTPipeline(transformer=transformer, vae=vae, scheduler=getattr(diffusers, name)(**config),
                                 id2label={i: str(i) for i in range(10)})
    pipe.set_progress_bar_config(disable=True)

    def images():
        torch.manual_seed(5)  # the ancestral schedulers draw from the global generator here
        return pipe(class_labels=[1, 7], guidance_scale=4.0, num_inference_steps=8,
                    generator=torch.Generator(DEVICE).manual_seed(3), output_type="np").images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert type(pipe.scheduler) is getattr(accelerated, name) and len(changes) == 1
    fused = images()
    # Measured on the dev VM: 2e-7 to 2.3e-6 (images in [0, 1]).
    assert abs(fused - stock).max() < 1e-4


EULER_CASES = [
    ("EulerDiscreteScheduler", {}, {}),
    ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("EulerDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {}),
    ("EulerDiscreteScheduler", {"prediction_type": "sample", "final_sigmas_type": "sigma_min"}, {}),
    ("EulerDiscreteScheduler", {}, {"s_churn": 1.0, "s_tmin": 0.5, "s_tmax": 10.0}),
    ("EulerDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
                                "interpolation_type": "log_linear"}, {"s_churn": 0.5, "s_noise": 1.003}),
    ("EulerAncestralDiscreteScheduler", {}, {}),
    ("EulerAncestralDiscreteScheduler", {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}, {}),
    ("EulerAncestralDiscreteScheduler", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}, {}),
    ("FlowMatchEulerDiscreteScheduler", {}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}, {}),
    ("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True, "shift": 3.0}, {}),
    ("FlowMatchLCMScheduler", {}, {}),
    ("FlowMatchLCMScheduler", {"shift": 3.0}, {}),
    ("FlowMatchLCMScheduler", {"use_karras_sigmas": True}, {}),
    ("FlowMatchLCMScheduler", {"invert_sigmas": True}, {}),
    ("FlowMatchHeunDiscreteScheduler", {}, {}),
    ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, {"s_churn": 0.5, "s_tmin": 0.2, "s_tmax": 0.8, "s_noise": 1.003}),
    ("HeunDiscreteScheduler", {}, {}),
    ("HeunDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("HeunDiscreteScheduler", {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8}, {}),
    ("LMSDiscreteScheduler", {}, {}),
    ("LMSDiscreteScheduler", {"use_karras_sigmas": True, "prediction_type": "v_prediction"}, {}),
    ("LMSDiscreteScheduler", {"prediction_type": "sample"}, {"order": 2}),
]


@pytest.mark.parametrize("name,config,step_options", EULER_CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_euler_schedulers_match_diffusers(name, config, step_options):
    want = _loop(getattr(diffusers, name)(**config), **step_options)
    got = _loop(getattr(accelerated, name)(**config), **step_options)
    assert _relative_error(got, want) < 1e-5


def _flow_match_lcm_loop(scheduler, steps, sigmas=None, scale_factors=None):
    """A FlowMatchLCM loop (no scale_model_input, as its pipelines), from its
    schedule or given sigmas, optionally in its scale-wise regime; returns the
    sample and the generator's state."""
    scheduler.set_timesteps(None if sigmas else steps, sigmas=sigmas, device=DEVICE)
    if scale_factors:
        scheduler.set_scale_factors(scale_factors, "bilinear")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x, generator.get_state()


@pytest.mark.parametrize("steps,sigmas,scale_factors", [(1, None, None), (2, None, None), (4, None, None),
                                                        (None, [1.0, 0.75, 0.4], None), (3, None, [1.0, 1.5])],
                         ids=["1-step", "2-steps", "4-steps", "given-sigmas", "scale-wise"])
def test_flow_match_lcm_few_steps(steps, sigmas, scale_factors):
    """FlowMatchLCM's usual few steps, from its schedule and from given sigmas:
    the same samples, and the generators end equal (the last step's noise is
    drawn as in diffusers, though its weight is 0). The scale-wise regime
    (set_scale_factors: the data prediction resized between steps) runs
    diffusers' step: the same sample, larger than the input."""
    (want, want_state), (got, state) = (_flow_match_lcm_loop(module.FlowMatchLCMScheduler(), steps, sigmas,
                                                             scale_factors) for module in (diffusers, accelerated))
    assert got.shape == want.shape and _relative_error(got, want) < 1e-5
    assert torch.equal(state, want_state)
    if scale_factors:
        assert got.shape[-1] > 8


@pytest.mark.parametrize("steps", [3, 1])
@pytest.mark.parametrize("config,step_options", [({}, {}), ({"shift": 3.0}, {"s_churn": 1.0})],
                         ids=["default", "shift=3-s_churn=1"])
def test_flow_match_heun_few_steps(config, step_options, steps):
    """Few steps end on a small sigma_next, where diffusers' second derivative,
    (x - (x - sigma_next v)) / sigma_next, keeps only the bits of v that survive
    the subtraction from x (the fused step uses v itself): 6e-6 to 8e-6 apart
    at 3 steps, measured. Both draw the churn's noise alike: the generators end equal."""
    ends = []
    for module in (diffusers, accelerated):
        generator = torch.Generator().manual_seed(1)
        x = _loop(module.FlowMatchHeunDiscreteScheduler(**config), steps=steps, generator=generator,
                  **step_options)
        ends.append((x, generator.get_state()))
    (want, want_state), (got, state) = ends
    assert _relative_error(got, want) < 3e-5
    assert torch.equal(state, want_state)


# (config, steps): constructing a stock KDPM2 scheduler takes ~0.2 s (its __init__'s
# set_timesteps over all 1000 training steps), so the matrix is kept small.
DPM_SDE_CASES = [({"noise_sampler_seed": 3}, {}), ({"noise_sampler_seed": 3, "use_karras_sigmas": True}, {}),
                 ({"noise_sampler_seed": 5, "prediction_type": "v_prediction"}, {"s_noise": 0.9}),
                 ({"noise_sampler_seed": 1, "timestep_spacing": "trailing", "beta_schedule": "scaled_linear",
                   "beta_start": 0.00085, "beta_end": 0.012}, {})]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's, in diffusers too
@pytest.mark.parametrize("steps", [10, 3])
@pytest.mark.parametrize("config,step_options", DPM_SDE_CASES,
                         ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_dpm_solver_sde_matches_diffusers(config, step_options, steps):
    """Both calls of each step, with the Brownian-tree noise of the same seed
    queried at the same times (the final Euler step to sigma = 0 included)."""
    want = _loop(diffusers.DPMSolverSDEScheduler(**config), steps=steps, **step_options)
    got = _loop(accelerated.DPMSolverSDEScheduler(**config), steps=steps, **step_options)
    assert _relative_error(got, want) < 1e-5


COGVIDEOX_CASES = [
    {},
    # CogVideoX-2b's configuration
    {"prediction_type": "v_prediction", "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
     "clip_sample": False, "set_alpha_to_one": True, "snr_shift_scale": 3.0},
    # CogVideoX-5b's (its alphas_cumprod ends on exactly 0: a half log-SNR of -inf at the first step)
    COGVIDEOX_5B,
    {"prediction_type": "sample", "snr_shift_scale": 1.0},
    {"set_alpha_to_one": False, "timestep_spacing": "linspace", "beta_schedule": "linear"},
    {"steps_offset": 1, "prediction_type": "v_prediction", "beta_schedule": "squaredcos_cap_v2"},
]


@pytest.mark.parametrize("steps", [25, 4])
@pytest.mark.parametrize("config", COGVIDEOX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_cogvideox_ddim_matches_diffusers(config, steps):
    """CogVideoX's DDIM: its SNR-shifted schedule is diffusers' own; the step
    (a_t x + b_t x0, no clipping, eta unused) is one ei_step."""
    want = _loop(diffusers.CogVideoXDDIMScheduler(**config), steps=steps)
    got = _loop(accelerated.CogVideoXDDIMScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5
    # eta and a generator change nothing, as in diffusers
    eta_want = _loop(diffusers.CogVideoXDDIMScheduler(**config), steps=steps, eta=1.0)
    assert torch.equal(_loop(accelerated.CogVideoXDDIMScheduler(**config), steps=steps, eta=1.0), got)
    assert torch.equal(eta_want, want)


@pytest.mark.parametrize("steps", [50, 4, 1])
@pytest.mark.parametrize("config", COGVIDEOX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_cogvideox_dpm_matches_diffusers(config, steps):
    """CogVideoX's SDE-DPM-Solver++(2M), stepped as its pipelines step it
    (_step: the previous timestep and data prediction handed back), with the
    same generator: one ei_step a step, its noise drawn where diffusers draws it."""
    want = _loop(diffusers.CogVideoXDPMScheduler(**config), steps=steps)
    got = _loop(accelerated.CogVideoXDPMScheduler(**config), steps=steps)
    # Measured: 5e-8 to 7e-7.
    assert _relative_error(got, want) < 1e-5


def test_cogvideox_dpm_draws_and_returns_as_diffusers():
    """The generator ends where diffusers leaves it (diffusers draws twice on a
    second-order step and uses the second draw), and step() returns what
    diffusers' returns: a tuple on the first-order steps (the first and the
    last) even with return_dict=True, a DDIMSchedulerOutput on the others."""
    ends = []
    for module in (diffusers, accelerated):
        scheduler = module.CogVideoXDPMScheduler()
        scheduler.set_timesteps(5)
        generator = torch.Generator().manual_seed(3)
        x, old, kinds = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), None, []
        for i, t in enumerate(scheduler.timesteps):
            result = scheduler.step(model(x, t), old, t, scheduler.timesteps[i - 1] if i else None, x,
                                    generator=generator, return_dict=True)
            kinds.append(type(result).__name__)
            x, old = result if isinstance(result, tuple) else (result.prev_sample, result.pred_original_sample)
        ends.append((kinds, generator.get_state(), x))
    (want_kinds, want_state, want), (kinds, state, got) = ends
    assert kinds == want_kinds == ["tuple"] + ["DDIMSchedulerOutput"] * 3 + ["tuple"]
    assert torch.equal(state, want_state)
    assert _relative_error(got, want) < 1e-5


def test_cogvideox_dpm_needs_the_previous_timestep_with_the_previous_prediction():
    scheduler = accelerated.CogVideoXDPMScheduler()
    scheduler.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8)
    t = scheduler.timesteps
    _, old = scheduler.step(model(x, t[0]), None, t[0], None, x)
    with pytest.raises(ValueError, match="timestep_back"):
        scheduler.step(model(x, t[1]), old, t[1], None, x)


DDIM_INVERSE_CASES = [{}, {"clip_sample_range": 0.5}, {"clip_sample": False},
                      {"prediction_type": "v_prediction", "set_alpha_to_one": True},
                      {"prediction_type": "sample", "clip_sample": False, "set_alpha_to_one": False},  # (else 0/0 at t = 0)
                      {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1,
                       "timestep_spacing": "trailing", "clip_sample": False}]


@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize("config", DDIM_INVERSE_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ddim_inverse_matches_diffusers(config, steps):
    want = _loop(diffusers.DDIMInverseScheduler(**config), steps=steps)
    got = _loop(accelerated.DDIMInverseScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


def test_accelerate_swaps_every_scheduler_of_a_pipeline():
    """An inversion pipeline's inverse_scheduler too: from a DiffusionPipeline's
    registered components, or from the two attributes of anything else."""
    class InversionPipe:  # what accelerate() reads of a pipeline that is not a DiffusionPipeline
        scheduler, inverse_scheduler = diffusers.DDIMScheduler(), diffusers.DDIMInverseScheduler()

    pipe, changes = accelerated.accelerate(InversionPipe())
    assert isinstance(pipe.scheduler, accelerated.DDIMScheduler)
    assert isinstance(pipe.inverse_scheduler, accelerated.DDIMInverseScheduler)
    assert changes == ["DDIMScheduler -> diffaccel DDIMScheduler",
                       "DDIMInverseScheduler -> diffaccel DDIMInverseScheduler (inverse_scheduler)"]

    class TwoSchedulerPipeline(diffusers.DiffusionPipeline):  # a registered second scheduler, as prior pipelines have
        def __init__(self, unet, scheduler, prior_scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler, prior_scheduler=prior_scheduler)

    pipe = TwoSchedulerPipeline(_small_unet(), diffusers.EulerDiscreteScheduler(), diffusers.PNDMScheduler())
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.EulerDiscreteScheduler)
    assert isinstance(pipe.prior_scheduler, accelerated.PNDMScheduler) and pipe.components["prior_scheduler"] is pipe.prior_scheduler
    assert sorted(changes) == ["EulerDiscreteScheduler -> diffaccel EulerDiscreteScheduler",
                               "PNDMScheduler -> diffaccel PNDMScheduler (prior_scheduler)"]


KDPM2_CASES = [({}, 10), ({}, 3), ({"prediction_type": "v_prediction"}, 10), ({"use_karras_sigmas": True}, 10),
               ({"use_exponential_sigmas": True}, 3), ({"timestep_spacing": "trailing"}, 10),
               ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "steps_offset": 1}, 10)]


@pytest.mark.parametrize("config,steps", KDPM2_CASES,
                         ids=lambda v: v if isinstance(v, int) else "-".join(f"{k}={w}" for k, w in v.items()) or "default")
@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_kdpm2_schedulers_match_diffusers(name, config, steps):
    """Both calls of each DPM-Solver-2 step (the interpolated sigma's Euler step,
    then the second-order step from the kept sample; with sigma_down and
    sigma_up noise for the ancestral one), every spacing and sigma schedule."""
    want = _loop(getattr(diffusers, name)(**config), steps=steps)
    got = _loop(getattr(accelerated, name)(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("name", ["KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"])
def test_kdpm2_prediction_type_sample_is_refused_as_diffusers_refuses(name):
    scheduler = getattr(accelerated, name)(prediction_type="sample")
    scheduler.set_timesteps(4, device=DEVICE)
    x = torch.randn(1, 4, 8, 8, device=DEVICE)
    with pytest.raises(NotImplementedError, match="prediction_type not implemented yet: sample"):
        scheduler.step(x, scheduler.timesteps[0], x)


DPM_INVERSE_CASES = [{}, {"solver_order": 3}, {"solver_order": 1}, {"solver_type": "heun"},
                     {"prediction_type": "v_prediction", "use_karras_sigmas": True}, {"algorithm_type": "dpmsolver"},
                     {"thresholding": True},
                     # fewer timesteps than sigmas - 1 (duplicates dropped): the last step is len(timesteps) - 1
                     {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True, "lower_order_final": False,
                      "euler_at_final": True}]


@pytest.mark.parametrize("steps", [25, 6])
@pytest.mark.parametrize("config", DPM_INVERSE_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_dpm_solver_multistep_inverse_matches_diffusers(config, steps):
    """DPM-Solver inversion (data to noise); diffusers' inverse step runs in the
    sample's dtype (no upcast), so float32 rounding is larger here: 1e-6, the
    fused step nearer diffusers' own loop run in float64."""
    want = _loop(diffusers.DPMSolverMultistepInverseScheduler(**config), steps=steps)
    got = _loop(accelerated.DPMSolverMultistepInverseScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


EDM_CASES = [
    ("EDMEulerScheduler", {}, {}),
    ("EDMEulerScheduler", {"prediction_type": "v_prediction", "sigma_schedule": "exponential"}, {}),
    ("EDMEulerScheduler", {"final_sigmas_type": "sigma_min"}, {"s_churn": 1.0, "s_tmin": 0.1, "s_tmax": 20.0}),
    ("EDMDPMSolverMultistepScheduler", {}, {}),
    ("EDMDPMSolverMultistepScheduler", {"solver_order": 3, "lower_order_final": False}, {}),
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, {}),
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_type": "heun"}, {}),
    ("EDMDPMSolverMultistepScheduler", {"prediction_type": "v_prediction", "sigma_schedule": "exponential",
                                        "final_sigmas_type": "sigma_min"}, {}),
    ("EDMDPMSolverMultistepScheduler", {"thresholding": True, "sample_max_value": 1.5, "solver_order": 3}, {}),
    ("EDMDPMSolverMultistepScheduler", {"solver_type": "heun", "euler_at_final": True}, {}),
    # The last step goes from the schedule's sigma_min, a float32 rounding below the configured
    # one, to the configured one appended: h = -5e-7 in float64, whose SDE noise was NaN here.
    ("EDMDPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "final_sigmas_type": "sigma_min",
                                        "solver_order": 1, "lower_order_final": False}, {}),
]


@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize("name,config,step_options", EDM_CASES,
                         ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_edm_schedulers_match_diffusers(name, config, step_options, steps):
    want = _loop(getattr(diffusers, name)(**config), steps=steps, **step_options)
    got = _loop(getattr(accelerated, name)(**config), steps=steps, **step_options)
    assert _relative_error(got, want) < 1e-5


# Stable Audio Open's scheduler is the default config. (final_sigmas_type="sigma_min" is left
# out: diffusers' step then asks the Brownian tree for the noise between two equal sigmas, and
# torchsde recurses until Python's limit; the drop-in, using the same sampler, does the same.)
COSINE_CASES = [{}, {"solver_order": 1}, {"solver_type": "heun"}, {"sigma_schedule": "karras"},
                {"prediction_type": "epsilon"}, {"euler_at_final": True, "lower_order_final": False},
                {"sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0, "sigma_schedule": "karras"}]


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")  # torchsde's: the last step queries sigma 0
@pytest.mark.parametrize("steps", [25, 5, 1])
@pytest.mark.parametrize("config", COSINE_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_cosine_dpm_solver_matches_diffusers(config, steps):
    """Each step one ei_step, its noise what diffusers' own Brownian-tree sampler
    gives for the generator's seed at the step's two sigmas."""
    want = _loop(diffusers.CosineDPMSolverMultistepScheduler(**config), steps=steps)
    got = _loop(accelerated.CosineDPMSolverMultistepScheduler(**config), steps=steps)
    # Measured on the dev VM: 0 to 3.8e-7.
    assert _relative_error(got, want) < 1e-5


@pytest.mark.filterwarnings("ignore:Should have:UserWarning")
def test_cosine_dpm_solver_without_a_generator_seeds_its_tree_as_diffusers():
    """With no generator, torchsde seeds the tree from the global generator, in
    the drop-in as in diffusers: the same sample, the global generator left in the same state."""
    ends = []
    for module in (diffusers, accelerated):
        torch.manual_seed(7)
        ends.append((_loop(module.CosineDPMSolverMultistepScheduler(), steps=10, generator=None),
                     torch.get_rng_state()))
    (want, want_state), (got, state) = ends
    assert torch.equal(state, want_state)
    assert _relative_error(got, want) < 1e-5


# LTX's set_timesteps builds its sigmas with a FlowMatchEulerDiscreteScheduler made from its
# config, so a FlowMatch option in that config (shift, as in LTX-Video's) shapes them.
LTX_CASES = [{}, {"eta": 0.5}, {"eta": 0.0}, {"s_noise": 0.9}, {"s_noise": 0.0}, {"shift": 3.0}]
# LTX-2's distilled sigmas, ending on 0 as its pipelines pass them.
LTX2_SIGMAS = [1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875, 0.0]


def _ltx_loop(scheduler, sigmas):
    scheduler.set_timesteps(sigmas=sigmas, device=DEVICE)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x


@pytest.mark.filterwarnings("ignore")  # diffusers' notice that a FlowMatch config gets LTX's eta / s_noise
@pytest.mark.parametrize("steps", [25, 8, 1])
@pytest.mark.parametrize("config", LTX_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ltx_euler_ancestral_rf_matches_diffusers(config, steps):
    want = _loop(diffusers.LTXEulerAncestralRFScheduler.from_config(config), steps=steps)
    got = _loop(accelerated.LTXEulerAncestralRFScheduler.from_config(config), steps=steps)
    # Measured on the dev VM: 0 to 7.6e-7 (with the given LTX-2 sigmas: 4.4e-7, 1.6e-6).
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ltx_euler_ancestral_rf_with_given_sigmas_matches_diffusers(eta):
    want = _ltx_loop(diffusers.LTXEulerAncestralRFScheduler(eta=eta), LTX2_SIGMAS)
    got = _ltx_loop(accelerated.LTXEulerAncestralRFScheduler(eta=eta), LTX2_SIGMAS)
    assert _relative_error(got, want) < 1e-5


def test_ltx_euler_ancestral_rf_edges_are_diffusers():
    """A step past the schedule's end returns the sample itself; an integer
    timestep and a step before set_timesteps get diffusers' errors."""
    scheduler = accelerated.LTXEulerAncestralRFScheduler()
    x = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="Call `set_timesteps` before `step`"):
        scheduler.step(x, torch.tensor(1000.0), x)
    scheduler.set_timesteps(sigmas=[1.0, 0.0])
    with pytest.raises(ValueError, match="integer indices"):
        scheduler.step(x, 3, x)
    t = scheduler.timesteps[0]
    x = scheduler.step(model(x, t), t, x).prev_sample
    assert scheduler.step(model(x, t), t, x).prev_sample is x


UNCLIP_CASES = [{}, {"clip_sample": False}, {"clip_sample_range": 5.0}, {"prediction_type": "sample"}]


def _unclip_loop(scheduler, steps, prev, dtype=torch.float32):
    """A Kandinsky prior's loop: (2, 1280) image embeddings, each step handed the
    next timestep as prev_timestep (None at the last), or, without ``prev``, none
    (diffusers then steps to t - 1). The model's output is float32."""
    scheduler.set_timesteps(steps, device=DEVICE)
    x = torch.randn(2, 1280, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    generator = torch.Generator(DEVICE).manual_seed(1)
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        following = timesteps[i + 1] if prev and i + 1 < len(timesteps) else None
        x = scheduler.step(model(x, t).float(), t, x, prev_timestep=following, generator=generator).prev_sample
    return x


def _float64_tables(scheduler):
    """The stock scheduler whose set_timesteps leaves its tables in float64
    (the schedule itself made as in float32): with a float64 sample diffusers'
    step then computes in float64, the reference where its float32 tables cancel."""
    set_timesteps = scheduler.set_timesteps

    def set_timesteps_then_cast(*args, **kwargs):
        set_timesteps(*args, **kwargs)
        for name in ("alphas_cumprod", "betas", "alphas", "one", "sigmas", "alpha_t", "sigma_t", "lambda_t"):
            table = getattr(scheduler, name, None)
            if isinstance(table, torch.Tensor) and table.is_floating_point():
                setattr(scheduler, name, table.double())

    scheduler.set_timesteps = set_timesteps_then_cast
    return scheduler


@pytest.mark.parametrize("prev", [True, False], ids=["prev_timestep", "t-1"])
@pytest.mark.parametrize("steps", [25, 5])
@pytest.mark.parametrize("config", UNCLIP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_unclip_matches_diffusers(config, steps, prev):
    """Within 3e-4 of stock and at least as close as stock to diffusers' own
    loop in float64: a step to prev_timestep computes alpha = 1 - (1 - a_t / a_prev),
    which float32 rounds badly when the step is long (5 steps: stock 1e-4 from
    the float64 loop, the fused step, whose host arithmetic is float64, 1e-7)."""
    exact = _unclip_loop(_float64_tables(diffusers.UnCLIPScheduler(**config)), steps, prev, dtype=torch.float64)
    want = _unclip_loop(diffusers.UnCLIPScheduler(**config), steps, prev)
    got = _unclip_loop(accelerated.UnCLIPScheduler(**config), steps, prev)
    assert _relative_error(got, want) < 3e-4
    assert _relative_error(got, exact) <= max(_relative_error(want, exact), 1e-6)


def test_unclip_keeps_diffusers_step_where_it_does_not_fuse():
    """learned_range variances keep the stock class; a step before set_timesteps
    (diffusers' default schedule) is diffusers' own."""
    with pytest.warns(UserWarning, match="variance_type='learned_range'"):
        kept, changes = accelerated.accelerate(diffusers.UnCLIPScheduler(variance_type="learned_range"))
    assert type(kept) is diffusers.UnCLIPScheduler and changes == []
    x = torch.randn(2, 1280, generator=torch.Generator().manual_seed(0))
    outputs = [module.UnCLIPScheduler().step(model(x, 999), 999, x, generator=torch.Generator().manual_seed(1))
               for module in (diffusers, accelerated)]
    assert torch.equal(outputs[0].prev_sample, outputs[1].prev_sample)


# Consistency models: one of openai's configs (the default), one with other scalings; a
# pipeline samples in 1 or 2 steps, the schedule allows up to num_train_timesteps.
CM_CASES = [{}, {"clip_denoised": False}, {"s_noise": 0.9},
            {"sigma_data": 1.0, "sigma_max": 14.6, "num_train_timesteps": 18}]


def _cm_loop(scheduler, steps=None, timesteps=None):
    """ConsistencyModelPipeline's loop (scale_model_input, the model, step) from
    noise at init_noise_sigma, with a model whose data prediction reaches past
    [-1, 1], so that clip_denoised clips."""
    scheduler.set_timesteps(steps, timesteps=timesteps, device=DEVICE)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    x = x * scheduler.init_noise_sigma
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps:
        x = scheduler.step(4 * model(scheduler.scale_model_input(x, t), t), t, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("steps", [1, 2, 4, 18])
@pytest.mark.parametrize("config", CM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_consistency_model_scheduler_matches_diffusers(config, steps):
    want = _cm_loop(diffusers.CMStochasticIterativeScheduler(**config), steps)
    got = _cm_loop(accelerated.CMStochasticIterativeScheduler(**config), steps)
    # Measured on the dev VM: 1e-8 to 2.1e-7.
    assert _relative_error(got, want) < 1e-5


def test_consistency_model_scheduler_with_given_timesteps_and_clipping():
    """Given timesteps (the pipelines' ``timesteps=[...]``) match diffusers; and
    the clip is live in these loops (clip_denoised changes the sample)."""
    runs = [_cm_loop(module.CMStochasticIterativeScheduler(), timesteps=[22, 17, 5])
            for module in (diffusers, accelerated)]
    assert _relative_error(runs[1], runs[0]) < 1e-5
    unclipped = _cm_loop(accelerated.CMStochasticIterativeScheduler(clip_denoised=False), timesteps=[22, 17, 5])
    assert _relative_error(unclipped, runs[1]) > 1e-3


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_consistency_model_pipeline_gives_the_same_images():
    """diffusers' ConsistencyModelPipeline with a small random UNet2DModel, 2 steps
    (its multistep sampling): the same images with the accelerated scheduler."""
    pipe = diffusers.ConsistencyModelPipeline(unet=_small_unet(), scheduler=diffusers.CMStochasticIterativeScheduler())
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator(DEVICE).manual_seed(3),
                    output_type="np").images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.CMStochasticIterativeScheduler) and len(changes) == 1
    assert abs(images() - stock).max() < 1e-4  # images in [0, 1]


# SCM (Sana Sprint): one step, the pipeline's default two (with its intermediate angle),
# more, another sigma_data, and given angles.
SCM_CASES = [(1, {}), (2, {}), (2, {"sigma_data": 1.0}), (4, {}), (3, {"timesteps": [1.5, 1.1, 0.6, 0.0]})]


def _sana_sprint_loop(scheduler, steps, timesteps=None, dtype=torch.float32):
    """Sana Sprint's loop around the scheduler: set_timesteps (the intermediate
    angle only with 2 steps, no max angle with given ones), set_begin_index(0),
    latents times sigma_data, then step over timesteps[:-1], each handed
    ``t.expand(batch)``. Returns every step's (prev_sample, denoised), the
    final latents (the last denoised over sigma_data) and the generator's state."""
    scheduler.set_timesteps(steps, timesteps=timesteps, device=DEVICE,
                            max_timesteps=None if timesteps else 1.5708,
                            intermediate_timesteps=1.3 if steps == 2 and not timesteps else None)
    scheduler.set_begin_index(0)
    sigma_data = scheduler.config.sigma_data
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE).to(dtype)
    x = x * sigma_data
    generator = torch.Generator(DEVICE).manual_seed(1)
    outputs = []
    for t in scheduler.timesteps[:-1]:
        flow = model(x / sigma_data, t * 1000).to(dtype) * sigma_data
        x, denoised = scheduler.step(flow, t.expand(len(x)), x, generator=generator, return_dict=False)
        outputs.append((x, denoised))
    return outputs, denoised / sigma_data, generator.get_state()


@pytest.mark.parametrize("steps,options", SCM_CASES, ids=[f"{s}-steps-{o}" for s, o in SCM_CASES])
def test_scm_matches_diffusers_in_sana_sprints_loop(steps, options):
    config = {k: v for k, v in options.items() if k != "timesteps"}
    (want, want_latents, want_state), (got, got_latents, got_state) = (
        _sana_sprint_loop(module.SCMScheduler(**config), steps, options.get("timesteps"))
        for module in (diffusers, accelerated))
    for (x, denoised), (x_want, denoised_want) in zip(got, want):
        assert _relative_error(x, x_want) < 1e-5 and _relative_error(denoised, denoised_want) < 1e-5
    # Measured on the dev VM: 0 (bit for bit) but for the given angles, 1.9e-7.
    assert _relative_error(got_latents, want_latents) < 1e-5
    assert torch.equal(got_state, want_state)  # the same noise drawn, the last step's (t = 0) included


def test_scm_dtypes_and_refusals_are_diffusers():
    """bf16 latents and model: the first step's data prediction stays bf16 and
    its sample is float32 (diffusers' noise is float32), as in diffusers, and
    close to diffusers'; another prediction_type fails at the step, as in diffusers."""
    (want, _, _), (got, _, _) = (_sana_sprint_loop(module.SCMScheduler(), 2, dtype=torch.bfloat16)
                                 for module in (diffusers, accelerated))
    assert (got[0][0].dtype, got[0][1].dtype) == (torch.float32, torch.bfloat16)
    for (x, denoised), (x_want, denoised_want) in zip(got, want):
        assert (x.dtype, denoised.dtype) == (x_want.dtype, denoised_want.dtype)
        assert _relative_error(x, x_want) < 2e-2
    for module in (diffusers, accelerated):
        scheduler = module.SCMScheduler(prediction_type="epsilon")
        with pytest.raises(ValueError, match="Unsupported parameterization: epsilon"):
            _sana_sprint_loop(scheduler, 2)


WUERSTCHEN_CASES = [{}, {"scaler": 2.0}, {"scaler": 0.5}, {"s": 0.02}]


def _wuerstchen_loop(scheduler, steps=None, timesteps=None, timestep_dtype=torch.float32, per_sample=False):
    """Stable Cascade's loop: over timesteps[:-1], each step handed
    ``t.expand(batch).to(dtype)`` (a view of scheduler.timesteps in float32, a
    copy in bf16), or, with ``per_sample``, a different timestep per sample."""
    scheduler.set_timesteps(steps, timesteps=timesteps, device=DEVICE)
    x = torch.randn(2, 16, 12, 12, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
    generator = torch.Generator(DEVICE).manual_seed(1)
    for t in scheduler.timesteps[:-1]:
        ratio = (torch.stack([t, t * 0.97]) if per_sample else t.expand(len(x))).to(timestep_dtype)
        x = scheduler.step(model(x, ratio[0]), ratio, x, generator=generator).prev_sample
    return x


@pytest.mark.parametrize("timestep_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("steps", [20, 4, 1])
@pytest.mark.parametrize("config", WUERSTCHEN_CASES,
                         ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_wuerstchen_matches_diffusers(config, steps, timestep_dtype):
    want = _wuerstchen_loop(diffusers.DDPMWuerstchenScheduler(**config), steps, timestep_dtype=timestep_dtype)
    got = _wuerstchen_loop(accelerated.DDPMWuerstchenScheduler(**config), steps, timestep_dtype=timestep_dtype)
    # Measured on the dev VM: 7e-8 to 3.2e-7.
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("options", [{"timesteps": [1.0, 0.62, 0.0]}, {"steps": 10, "per_sample": True}],
                         ids=["given-timesteps", "per-sample-timesteps"])
def test_wuerstchen_given_and_per_sample_timesteps_match_diffusers(options):
    want = _wuerstchen_loop(diffusers.DDPMWuerstchenScheduler(), **options)
    got = _wuerstchen_loop(accelerated.DDPMWuerstchenScheduler(), **options)
    assert _relative_error(got, want) < 1e-5


def test_edm_euler_takes_a_given_data_prediction():
    """step(pred_original_sample=...) steps from that x0, as diffusers does."""
    results = []
    for cls in (diffusers.EDMEulerScheduler, accelerated.EDMEulerScheduler):
        scheduler = cls()
        scheduler.set_timesteps(6, device=DEVICE)
        x = torch.randn(2, 4, 8, 8, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE) * 80
        for t in scheduler.timesteps:
            scaled = scheduler.scale_model_input(x, t)
            out = scheduler.step(model(scaled, t), t, x, pred_original_sample=torch.tanh(scaled))
            x = out.prev_sample
        results.append((x, out.pred_original_sample))
    (want, want_x0), (got, got_x0) = results
    assert _relative_error(got, want) < 1e-5 and _relative_error(got_x0, want_x0) < 1e-6


DEIS_CASES = [{}, {"solver_order": 1}, {"solver_order": 3}, {"prediction_type": "v_prediction"},
              {"prediction_type": "sample"}, {"use_karras_sigmas": True},
              {"use_flow_sigmas": True, "prediction_type": "flow_prediction"},
              {"solver_order": 3, "lower_order_final": False, "timestep_spacing": "trailing"},
              {"use_exponential_sigmas": True, "solver_order": 3}]


class _Float64Sigmas:
    """Wraps a stock scheduler so that its set_timesteps leaves float64 sigmas:
    with a float64 sample and model, diffusers' whole update runs in float64."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def set_timesteps(self, *args, **kwargs):
        self.scheduler.set_timesteps(*args, **kwargs)
        self.scheduler.sigmas = self.scheduler.sigmas.double()

    def __getattr__(self, name):
        return getattr(self.scheduler, name)


@pytest.mark.parametrize("steps", [25, 6])
@pytest.mark.parametrize("config", DEIS_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_deis_matches_diffusers(config, steps):
    """Within the drop-in bound (1e-4) of stock diffusers, and at least as close
    as stock to diffusers' own loop run in float64: diffusers evaluates DEIS's
    weights in float32, where the third order's cancel (stock is 4e-6 off at 25
    steps, the fused step 3e-7)."""
    exact = _loop(_Float64Sigmas(diffusers.DEISMultistepScheduler(**config)), steps=steps, dtype=torch.float64)
    want = _loop(diffusers.DEISMultistepScheduler(**config), steps=steps)
    got = _loop(accelerated.DEISMultistepScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-4
    assert _relative_error(got, exact) <= max(_relative_error(want, exact), 1e-6)


DDPM_CASES = [
    {},
    {"clip_sample": False},
    {"variance_type": "fixed_large"},
    {"variance_type": "fixed_small_log", "prediction_type": "v_prediction", "clip_sample": False},
    {"thresholding": True, "sample_max_value": 1.5},
    {"prediction_type": "sample", "timestep_spacing": "trailing"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "linspace"},
    {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},  # epsilon, clipped: see DDIM_CASES
]


@pytest.mark.parametrize("config", DDPM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_ddpm_matches_diffusers(config):
    want = _loop(diffusers.DDPMScheduler(**config))
    got = _loop(accelerated.DDPMScheduler(**config))
    assert _relative_error(got, want) < 1e-5


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_ddpm_custom_timesteps_and_pipeline():
    stock, ours = diffusers.DDPMScheduler(), accelerated.DDPMScheduler()
    for sch in (stock, ours):
        sch.set_timesteps(timesteps=[900, 700, 400, 100, 0])
    x = torch.randn(2, 4, 8, 8, device=DEVICE)
    results = []
    for sch in (stock, ours):
        y, g = x, torch.Generator(DEVICE).manual_seed(5)
        for t in sch.timesteps:
            y = sch.step(model(y, t), t, y, generator=g).prev_sample
        results.append(y)
    assert _relative_error(results[1], results[0]) < 1e-5
    unet = _small_unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    stock_images = pipe(batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10,
                        output_type="np").images
    accelerated.accelerate(pipe)
    fused_images = pipe(batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10,
                        output_type="np").images
    assert abs(fused_images - stock_images).max() < 1e-4


PNDM_CASES = [
    {},
    {"skip_prk_steps": True},
    {"prediction_type": "v_prediction"},
    {"skip_prk_steps": True, "prediction_type": "v_prediction", "set_alpha_to_one": True},
    # Stable Diffusion 1.x's scheduler config
    {"skip_prk_steps": True, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
     "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace", "skip_prk_steps": True},
]


@pytest.mark.parametrize("steps", [25, 4])
@pytest.mark.parametrize("config", PNDM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_pndm_matches_diffusers(config, steps):
    """Runge-Kutta warm-up stages (skip_prk_steps=False) and PLMS steps, the
    second PLMS step's repeated timestep included."""
    want = _loop(diffusers.PNDMScheduler(**config), steps=steps)
    got = _loop(accelerated.PNDMScheduler(**config), steps=steps)
    assert _relative_error(got, want) < 1e-5


def test_pndm_plms_before_the_runge_kutta_steps_is_refused_as_diffusers_refuses():
    for cls in (diffusers.PNDMScheduler, accelerated.PNDMScheduler):
        scheduler = cls()
        scheduler.set_timesteps(10)
        x = torch.randn(1, 4, 8, 8, device=DEVICE)
        with pytest.raises(ValueError, match="can only be run AFTER scheduler has been run in 'prk' mode"):
            scheduler.step_plms(x, scheduler.timesteps[0], x)


@pytest.mark.usefixtures("exact_float32_convolutions")
def test_pndm_pipeline_gives_the_same_images():
    unet = _small_unet()
    pipe = diffusers.PNDMPipeline(unet=unet, scheduler=diffusers.PNDMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def images():
        return pipe(batch_size=2, generator=torch.Generator(DEVICE).manual_seed(3), num_inference_steps=10,
                    output_type="np").images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.PNDMScheduler) and len(changes) == 1
    assert abs(images() - stock).max() < 1e-4  # images in [0, 1]


LCM_CASES = [{}, {"prediction_type": "v_prediction"}, {"prediction_type": "sample", "clip_sample": True},
             {"thresholding": True, "sample_max_value": 1.2}, {"timestep_spacing": "trailing", "set_alpha_to_one": False},
             {"rescale_betas_zero_snr": True, "clip_sample": True}]  # (see DDIM_CASES)


def _matches_with_outputs(name, config, steps, field, **step_options):
    """Stock and accelerated ``name`` over the same loop, compared on the final
    sample and on every step's ``field`` output (the consistency schedulers'
    denoised / pred_noised_sample), the noise drawn from the same generator."""
    results = []
    for module in (diffusers, accelerated):
        scheduler = getattr(module, name)(**config)
        scheduler.set_timesteps(steps, device=DEVICE)
        x = torch.randn(2, 4, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE)
        g = torch.Generator(DEVICE).manual_seed(1)
        outputs = []
        for t in scheduler.timesteps:
            out = scheduler.step(model(x, t), t, x, generator=g, **step_options)
            x = out.prev_sample
            outputs.append(getattr(out, field))
        results.append((x, outputs))
    (want, want_outputs), (got, got_outputs) = results
    assert _relative_error(got, want) < 1e-5
    for a, b in zip(got_outputs, want_outputs):
        assert _relative_error(a, b) < 1e-5


@pytest.mark.parametrize("config", LCM_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_lcm_matches_diffusers(config):
    _matches_with_outputs("LCMScheduler", config, 4, "denoised")


TCD_CASES = [({}, {}), ({}, {"eta": 0.0}), ({}, {"eta": 1.0}), ({"prediction_type": "v_prediction"}, {"eta": 0.5}),
             ({"prediction_type": "sample", "timestep_spacing": "trailing"}, {}),
             ({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "set_alpha_to_one": False},
              {"eta": 0.7})]


@pytest.mark.parametrize("steps", [8, 1])
@pytest.mark.parametrize("config,step_options", TCD_CASES,
                         ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_tcd_matches_diffusers(config, step_options, steps):
    """The noise is drawn at the same steps (none at the last step)."""
    _matches_with_outputs("TCDScheduler", config, steps, "pred_noised_sample", **step_options)


def score(x, sigma):
    """A stable, non-linear score of VE-noised data: about -(x - x0) / sigma^2."""
    return -(x - 0.3 * torch.tanh(x)) / (sigma**2 + 1)


@pytest.mark.parametrize("correct_steps", [0, 1, 2])
def test_score_sde_ve_matches_diffusers(correct_steps):
    """The loop of diffusers' ScoreSdeVePipeline: correct_steps Langevin corrections, then a predictor step."""
    results = []
    for cls in (diffusers.ScoreSdeVeScheduler, accelerated.ScoreSdeVeScheduler):
        scheduler = cls(snr=0.16)
        scheduler.set_timesteps(20, device=DEVICE)
        scheduler.set_sigmas(20)
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator(DEVICE).manual_seed(0), device=DEVICE) * 50
        # A host generator: stock step_correct draws on the generator's device without naming one,
        # which diffusers refuses for a CUDA generator.
        g = torch.Generator().manual_seed(1)
        for i, t in enumerate(scheduler.timesteps):
            sigma = float(scheduler.sigmas[i])
            for _ in range(correct_steps):
                x = scheduler.step_correct(score(x, sigma), x, generator=g).prev_sample
            out = scheduler.step_pred(score(x, sigma), t, x, generator=g)
            x = out.prev_sample
        results.append((out.prev_sample_mean, x))
    (want_mean, want), (got_mean, got) = results
    assert _relative_error(got, want) < 1e-5
    assert _relative_error(got_mean, want_mean) < 1e-5


UNIPC_CASES = [
    {},
    {"solver_order": 3},
    # (bh1 and predict_x0=False give NaN in diffusers itself at a zero final sigma: sigma_min there.)
    {"solver_type": "bh1", "final_sigmas_type": "sigma_min"},
    {"solver_order": 3, "solver_type": "bh1", "lower_order_final": False, "final_sigmas_type": "sigma_min"},
    {"disable_corrector": [0, 5, 6]},
    {"thresholding": True, "solver_order": 3},
    {"predict_x0": False, "final_sigmas_type": "sigma_min"},
    {"predict_x0": False, "prediction_type": "v_prediction", "solver_order": 3, "final_sigmas_type": "sigma_min"},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"prediction_type": "sample", "use_exponential_sigmas": True},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("config", UNIPC_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
def test_unipc_matches_diffusers(config):
    want = _loop(diffusers.UniPCMultistepScheduler(**config))
    got = _loop(accelerated.UniPCMultistepScheduler(**config))
    assert _relative_error(got, want) < 1e-5


def _tau_zero(t):  # an ODE sampler (no noise)
    return 0


def _tau_one(t):  # noise at every step
    return 1


SASOLVER_CASES = [
    {},
    {"predictor_order": 1, "corrector_order": 1},
    {"predictor_order": 3, "corrector_order": 3},
    {"predictor_order": 4, "corrector_order": 4},
    {"predictor_order": 2, "corrector_order": 4, "lower_order_final": False},
    {"algorithm_type": "noise_prediction"},
    {"algorithm_type": "noise_prediction", "predictor_order": 3, "corrector_order": 4},
    {"algorithm_type": "noise_prediction", "prediction_type": "v_prediction", "tau_func": _tau_one},
    {"tau_func": _tau_zero},
    {"tau_func": _tau_one, "predictor_order": 3},
    {"thresholding": True, "sample_max_value": 1.5},
    {"prediction_type": "v_prediction", "use_karras_sigmas": True},
    {"prediction_type": "sample", "use_exponential_sigmas": True},
    {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing"},
]


@pytest.mark.parametrize("steps", [25, 8])
@pytest.mark.parametrize("config", SASOLVER_CASES, ids=lambda c: "-".join(
    f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()) or "default")
def test_sasolver_matches_diffusers(config, steps):
    """Stock SA-Solver with its weights from float64 tables within 1e-5 (measured
    on the dev VM: 9.4e-8 to 2e-6), stock itself within 2e-5 up to second order
    (2.5e-7 to 7.6e-6). Stock's third- and fourth-order weights, expanded
    Lagrange polynomials times exponential integrals in float32, cancel: stock
    drifts from its own float64-weight run by 1.6e-5 (order 3) to 1.3e-4 (order
    4) at 25 steps, 1.4e-3 at 50, and the drop-in with it."""
    got = _loop(accelerated.SASolverScheduler(**config), steps=steps)
    assert _relative_error(got, _loop(_float64_tables(diffusers.SASolverScheduler(**config)), steps=steps)) < 1e-5
    higher = max(config.get("predictor_order", 2), config.get("corrector_order", 2)) > 2
    assert _relative_error(got, _loop(diffusers.SASolverScheduler(**config), steps=steps)) < (3e-4 if higher else 2e-5)


SINGLESTEP_CASES = [
    {},
    {"solver_order": 3},
    {"solver_order": 3, "solver_type": "heun"},
    {"solver_type": "heun"},
    {"solver_order": 1},
    {"algorithm_type": "sde-dpmsolver++"},
    {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "heun"},
    {"algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"thresholding": True, "solver_order": 3},
    {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    {"lower_order_final": False, "final_sigmas_type": "sigma_min", "solver_order": 3},
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"},  # a last step between equal sigmas
    {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min", "solver_order": 3},
]


@pytest.mark.parametrize("config", SINGLESTEP_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("steps", [25, 10])
def test_dpm_solver_singlestep_matches_diffusers(config, steps):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stock = diffusers.DPMSolverSinglestepScheduler(**config)
        ours = accelerated.DPMSolverSinglestepScheduler(**config)
    want, got = _loop(stock, steps=steps), _loop(ours, steps=steps)
    # The third-order SDE heun variant drives this toy model's samples to about 1e3 (in
    # diffusers too), which amplifies float32 rounding: 4e-5 there, 1e-7..1e-6 elsewhere.
    diverged = float(want.abs().max()) > 100
    assert _relative_error(got, want) < (1e-4 if diverged else 1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))  # (no step())
def test_steps_do_not_synchronize(name):
    """On CUDA every step, the first included (its step index comes from the
    timestep's position in scheduler.timesteps), runs under
    torch.cuda.set_sync_debug_mode("error"), in a first loop and in a repeat
    (whose coefficients come from the scheduler's ConstantCache). set_timesteps,
    diffusers' own and once per loop, runs outside: it moves its schedule to the
    host itself."""
    scheduler = getattr(accelerated, name)()
    x = torch.randn(2, 4, 16, 16, device="cuda")
    out = model(x, 0)
    for run in range(2):
        benchmarking.pipeline_set_timesteps(scheduler, 10, "cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            previous = None
            for t in benchmarking.pipeline_timesteps(scheduler):
                x, previous = _step(scheduler, out, t, x, previous)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("start", [1, 4])
@pytest.mark.parametrize("name", sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"}))
def test_a_loop_that_starts_part_way_matches_diffusers(name, start):
    """img2img's loop: set_timesteps, set_begin_index where the scheduler has it,
    then scheduler.timesteps[start * order:] only. (The LMS drop-in failed this:
    diffusers pairs its order-4 weights with the fewer derivatives it has at first.
    On a GPU, DIFFACCEL_TEST_DEVICE=cuda, the timesteps are device views whose
    value the DDIM-family steps take from their position.)"""
    config = {"noise_sampler_seed": 0} if name == "DPMSolverSDEScheduler" else {}
    want, got = (_loop(getattr(module, name)(**config), steps=10, shape=(2, 4, 8, 8), start=start)
                 for module in (diffusers, accelerated))
    assert _relative_error(got, want) < 1e-5


# Options some schedulers take and others do not, at values that would change
# any step that read them.
FOREIGN_OPTIONS = {"thresholding": True, "sample_max_value": 0.01, "clip_sample": True, "clip_sample_range": 0.01}
FOREIGN_CASES = [(name, foreign) for name in sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler"})
                 if (foreign := {k: v for k, v in FOREIGN_OPTIONS.items()
                                 if k not in inspect.signature(getattr(diffusers, name).__init__).parameters})]


@pytest.mark.filterwarnings("ignore")  # diffusers' notice that the config has keys the class ignores
@pytest.mark.parametrize("name,foreign", FOREIGN_CASES, ids=[name for name, _ in FOREIGN_CASES])
def test_options_the_scheduler_does_not_take_change_nothing(name, foreign):
    """A config loaded from another scheduler's (a DDPM config into DPM-Solver,
    as ``Scheduler.from_config(pipe.scheduler.config)`` does) keeps the keys
    its class does not take; diffusers' step ignores them, so must the fused one."""
    config = dict(foreign, noise_sampler_seed=0) if name == "DPMSolverSDEScheduler" else foreign
    want, got = (_loop(getattr(module, name).from_config(config), steps=10, shape=(2, 4, 8, 8))
                 for module in (diffusers, accelerated))
    assert _relative_error(got, want) < 1e-5


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "DEISMultistepScheduler",
                                  "EDMDPMSolverMultistepScheduler", "CosineDPMSolverMultistepScheduler",
                                  "DDPMWuerstchenScheduler",
                                  "DPMSolverMultistepInverseScheduler",
                                  "UniPCMultistepScheduler", "LMSDiscreteScheduler"])
def test_one_scheduler_reused_across_loops_matches_fresh_ones(name):
    """The multistep steps keep their coefficient values while set_timesteps
    gives the same sigmas (_step_value): a scheduler run for a whole loop, then
    part way (fewer lower-order steps), then for another length, then whole
    again, gives each time what a fresh scheduler gives."""
    cls = getattr(accelerated, name)
    reused = cls()
    for steps, start in [(10, 0), (10, 3), (12, 0), (10, 0)]:
        got = _loop(reused, steps=steps, shape=(2, 4, 8, 8), start=start)
        assert torch.equal(got, _loop(cls(), steps=steps, shape=(2, 4, 8, 8), start=start))


# Options the random-configuration test draws from (each scheduler takes those its __init__ has).
RANDOM_OPTIONS = {
    "beta_schedule": ["linear", "scaled_linear", "squaredcos_cap_v2"],
    "timestep_spacing": ["linspace", "leading", "trailing"], "prediction_type": ["epsilon", "v_prediction", "sample"],
    "use_karras_sigmas": [True], "use_exponential_sigmas": [True], "use_beta_sigmas": [True],
    "final_sigmas_type": ["zero", "sigma_min"], "steps_offset": [0, 1], "rescale_betas_zero_snr": [True, False],
    "solver_order": [1, 2, 3], "solver_type": ["midpoint", "heun"], "lower_order_final": [True, False],
    "algorithm_type": ["dpmsolver++", "sde-dpmsolver++"], "thresholding": [True, False], "clip_sample": [True, False],
    "set_alpha_to_one": [True, False], "skip_prk_steps": [True, False], "euler_at_final": [True, False],
}


def _random_configurations(count, seed=0):
    rng = random.Random(seed)
    names = sorted(set(accelerated.ACCELERATED) - {"ScoreSdeVeScheduler", "KDPM2DiscreteScheduler",
                                                   "KDPM2AncestralDiscreteScheduler"})  # (slow to build: ~0.2 s)
    while count:
        name = rng.choice(names)
        parameters = inspect.signature(getattr(diffusers, name).__init__).parameters
        config = {k: rng.choice(v) for k, v in RANDOM_OPTIONS.items() if k in parameters and rng.random() < 0.4}
        if sum(k in config for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            continue
        count -= 1
        yield name, config, rng.choice([1, 2, 3, 4, 7, 16])


def _outcome(cls, config, steps):
    try:
        scheduler = cls(**config)
    except Exception:  # noqa: BLE001  (a configuration diffusers refuses)
        return "refused", None
    if getattr(scheduler, "unsupported_options", lambda: [])():
        return "stock", None
    try:
        return "ran", _loop(scheduler, steps=steps, shape=(1, 3, 8, 8))
    except Exception as error:  # noqa: BLE001
        return "raised", error


@pytest.mark.filterwarnings("ignore")  # diffusers' and torchsde's notices about odd configurations
def test_random_configurations_fail_only_where_diffusers_fails():
    """200 random configurations of the accelerated schedulers per seed
    (RANDOM_SEEDS, see conftest): each raises exactly where stock diffusers
    raises, and gives a finite sample wherever diffusers' is finite. (This
    comparison found the ZeroDivisionError of a step between equal sigmas, the
    NaN of an epsilon model at a zero terminal SNR and the NaN of EDM's SDE
    step where sigma rises by a float32 rounding; those cases are in the
    matrices above. 15 seeds, 2943 configurations compared, found nothing
    more on 2026-11-27.)"""
    compared = 0
    for name, config, steps in (run for seed in RANDOM_SEEDS for run in _random_configurations(200, seed)):
        stock, stock_result = _outcome(getattr(diffusers, name), config, steps)
        ours, our_result = _outcome(getattr(accelerated, name), config, steps)
        if "refused" in (stock, ours) or ours == "stock":
            continue
        assert (ours == "raised") == (stock == "raised"), (name, config, steps, stock_result, our_result)
        if stock == "ran" and torch.isfinite(stock_result).all():
            assert torch.isfinite(our_result).all(), (name, config, steps)
        compared += 1
    assert compared >= 150 * len(RANDOM_SEEDS)


# Found by comparing 2000 random configurations' samples: a cosine schedule's last
# sigma is about 6e2, where stock's float32 coefficients lose digits.
FAR_FROM_STOCK = [
    ("DEISMultistepScheduler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                                "use_exponential_sigmas": True}, 2),
    ("DEISMultistepScheduler", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction",
                                "steps_offset": 1, "lower_order_final": False}, 4),
    ("DPMSolverMultistepInverseScheduler", {"beta_schedule": "squaredcos_cap_v2", "use_karras_sigmas": True}, 3),
]


@pytest.mark.parametrize("name,config,steps", FAR_FROM_STOCK, ids=lambda v: v if isinstance(v, str) else None)
def test_where_stock_float32_cancels_the_drop_in_is_closer_to_float64(name, config, steps):
    """Loops 2e-4 to 2e-2 from stock (measured on the dev VM): stock with its
    tables in float64 and a float64 sample is the reference; the drop-in in
    float64 gives it to 1e-11, and in float32 lands 8x to 12x closer to it than
    stock does (bound: 5x)."""
    def run(scheduler, dtype):
        return _loop(scheduler, steps=steps, shape=(1, 3, 8, 8), dtype=dtype)

    reference = run(_float64_tables(getattr(diffusers, name)(**config)), torch.float64)
    assert _relative_error(run(getattr(accelerated, name)(**config), torch.float64), reference) < 1e-10
    ours, stock = (_relative_error(run(getattr(module, name)(**config), torch.float32), reference)
                   for module in (accelerated, diffusers))
    assert stock > 1e-4 and ours < stock / 5


REPEATED = ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
            "UniPCMultistepScheduler"]


@pytest.mark.parametrize("name", REPEATED)
def test_a_repeated_schedule_copies_no_coefficients(name, monkeypatch):
    """Running the same schedule again (a pipeline called again with the same
    steps) takes every coefficient tensor from the scheduler's cache: no copy
    to the device, and the same result bit for bit; another schedule makes its
    own coefficients."""
    from diffaccel import transfer

    copies = []
    original = transfer.to_device
    monkeypatch.setattr(transfer, "to_device", lambda *args: copies.append(args) or original(*args))
    scheduler = getattr(accelerated, name)()
    first = _loop(scheduler, steps=10)
    made = len(copies)
    assert made >= 10
    again = _loop(scheduler, steps=10)
    assert len(copies) == made
    assert torch.equal(again, first)
    other = _loop(scheduler, steps=12)
    assert len(copies) > made
    assert torch.equal(other, _loop(getattr(accelerated, name)(), steps=12))


# What diffusers' set_timesteps(device=...) leaves on the device; every other
# schedule tensor it keeps on the host (`self.sigmas.to("cpu")`).
ON_DEVICE = {"FlowMatchEulerDiscreteScheduler": ("timesteps", "sigmas"),
             "FlowMatchLCMScheduler": ("timesteps", "sigmas"),
             "FlowMatchHeunDiscreteScheduler": ("timesteps", "sigmas"),
             "LTXEulerAncestralRFScheduler": ("timesteps", "sigmas"),
             "KDPM2DiscreteScheduler": ("timesteps", "sigmas_interpol"),
             "KDPM2AncestralDiscreteScheduler": ("timesteps", "sigmas_interpol", "sigmas_up", "sigmas_down")}
NO_READ_CASES = [(name, {}) for name in sorted(accelerated.ACCELERATED)] + [
    ("DPMSolverMultistepScheduler", {"thresholding": True}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}),
    ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True, "solver_type": "heun"}),
    ("DDIMScheduler", {"thresholding": True}),
    ("UniPCMultistepScheduler", {"solver_order": 3}),
]


def _steps_on_meta(cls, config, steps=10):
    """A whole loop of ``cls`` whose device is the meta device: set_timesteps
    on the host, then the tensors diffusers would put on the device moved to
    meta, the sample and model output on meta too."""
    scheduler = cls(**config)
    benchmarking.pipeline_set_timesteps(scheduler, steps, "cpu")
    if cls.__name__ == "ScoreSdeVeScheduler":
        scheduler.set_sigmas(steps)
    for name in ON_DEVICE.get(cls.__name__, ("timesteps",)):
        setattr(scheduler, name, getattr(scheduler, name).to("meta"))
    x = torch.empty(2, 4, 16, 16, device="meta")
    if cls.__name__ in ("DPMSolverSDEScheduler", "CosineDPMSolverMultistepScheduler"):
        # Their Brownian-tree noise is torchsde's, which cannot make meta tensors
        # (it seeds a generator on the tensors' device): noise of the right shape instead.
        scheduler.noise_sampler = lambda sigma, sigma_next: torch.empty_like(x)
    previous = None
    for t in benchmarking.pipeline_timesteps(scheduler):
        if cls.__name__ == "ScoreSdeVeScheduler":
            x = scheduler.step_correct(x, x).prev_sample
            x = scheduler.step_pred(x, t, x).prev_sample
        else:
            scaled = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
            x, previous = _step(scheduler, scaled, t, x, previous)
    return x


@pytest.mark.parametrize("name, config", NO_READ_CASES, ids=lambda v: str(v) if isinstance(v, str) else
                         "-".join(f"{k}={w}" for k, w in v.items()) or "default")
def test_steps_never_read_the_device(name, config):
    """The CPU machines' check of what test_steps_do_not_synchronize checks on a
    GPU: every step, the first included, runs with the sample, the model output
    and scheduler.timesteps on the meta device, which has no data, so any host
    read of them (.item(), bool(), nonzero, .cpu(), .tolist()) would raise. Stock
    diffusers fails this (next test)."""
    x = _steps_on_meta(getattr(accelerated, name), config)
    assert x.device.type == "meta" and x.shape == (2, 4, 16, 16)


@pytest.mark.parametrize("name", sorted(accelerated.ACCELERATED))
def test_stock_steps_read_the_device(name):
    """The check above can fail: each stock scheduler reads the device (the
    first step's nonzero / .item() index lookup, or its step's own reads)."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        _steps_on_meta(getattr(diffusers, name), {})


STEP_INDEXED = sorted(name for name, cls in accelerated.ACCELERATED.items()
                      if issubclass(cls, accelerated._StepIndexWithoutSync))


@pytest.mark.parametrize("name", STEP_INDEXED)
def test_first_step_index_is_diffusers_own(name):
    """The first step's index, found without reading the device, equals stock
    diffusers' for every position (repeated timesteps of Heun included), for
    the timestep given as an element of scheduler.timesteps, a number, or
    another tensor."""
    ours, stock = getattr(accelerated, name)(), getattr(diffusers, name)()
    for scheduler in (ours, stock):
        benchmarking.pipeline_set_timesteps(scheduler, 7, DEVICE)
    for position in range(len(stock.timesteps)):
        for given in (lambda s: s.timesteps[position], lambda s: s.timesteps[position].item(),
                      lambda s: s.timesteps[position].clone()):
            for scheduler in (ours, stock):
                scheduler._step_index = None
                scheduler._init_step_index(given(scheduler))
            assert ours.step_index == stock.step_index, (position, ours.step_index, stock.step_index)


def test_position_of_a_timestep_view():
    schedule = torch.arange(10.0, 0.0, -1.0)
    assert [accelerated._position_in(schedule, t) for t in schedule] == list(range(10))
    assert accelerated._position_in(schedule[2:], schedule[5]) == 3
    assert accelerated._position_in(schedule[::2], schedule[4]) == 2
    assert accelerated._position_in(schedule[::2], schedule[3]) is None
    assert accelerated._position_in(schedule, schedule[3].clone()) is None
    assert accelerated._position_in(schedule, torch.tensor(3.0)) is None

"""diffaccel.integrations.diffusers against stock diffusers: accelerate(pipe) and whole diffusers pipelines."""

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")

from diffaccel.integrations import diffusers as accelerated  # noqa: E402

from conftest import DEVICE  # noqa: E402
from diffusers_helpers import MARKS, _small_unet, base_config  # noqa: E402

pytestmark = MARKS


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
    assert changes == [
        "UnCLIPScheduler -> diffaccel UnCLIPScheduler (prior_scheduler)",
        "UnCLIPScheduler -> diffaccel UnCLIPScheduler (decoder_scheduler)",
    ]


def test_accelerate_keeps_what_it_cannot_fuse():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        unsupported = diffusers.DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver", thresholding=True, final_sigmas_type="sigma_min"
        )
    with pytest.warns(UserWarning, match="thresholding"):
        kept, changes = accelerated.accelerate(unsupported)
    assert kept is unsupported and changes == []
    with pytest.warns(UserWarning, match=r"solver_order=3 \(diffusers' cosine step has orders 1 and 2 only\)"):
        kept, changes = accelerated.accelerate(diffusers.CosineDPMSolverMultistepScheduler(solver_order=3))
    assert isinstance(kept, diffusers.CosineDPMSolverMultistepScheduler) and changes == []
    with pytest.warns(UserWarning, match="no accelerated KarrasVeScheduler"):
        kept, _ = accelerated.accelerate(diffusers.KarrasVeScheduler())
    assert isinstance(kept, diffusers.KarrasVeScheduler)
    with pytest.warns(UserWarning, match=r"thresholding \(with algorithm_type='noise_prediction'\)"):
        kept, changes = accelerated.accelerate(
            diffusers.SASolverScheduler(algorithm_type="noise_prediction", thresholding=True)
        )
    assert isinstance(kept, diffusers.SASolverScheduler) and changes == []
    with pytest.raises(TypeError, match="scheduler or pipeline"):
        accelerated.accelerate(42)


@pytest.fixture(scope="module")
def dit_pipeline_parts():
    """A tiny DiTPipeline's transformer (learned sigma: 8 output channels for 4
    latent ones) and VAE, randomly initialised from configs with seed 0."""
    torch.manual_seed(0)
    transformer = (
        diffusers.Transformer2DModel(
            sample_size=8,
            num_layers=1,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=2,
            in_channels=4,
            out_channels=8,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_zero",
            norm_elementwise_affine=False,
        )
        .to(DEVICE)
        .eval()
    )
    vae = diffusers.AutoencoderKL(block_out_channels=(16,), norm_num_groups=8, latent_channels=4).to(DEVICE).eval()
    return transformer, vae


# Every class with diffusers' usual step, but the inversion ones (data to noise)
# and the flow-matching ones (no scale_model_input, which DiT's loop calls).
DIT_SCHEDULERS = sorted(
    set(accelerated.ACCELERATED)
    - {
        "ScoreSdeVeScheduler",
        "CogVideoXDPMScheduler",
        "DDIMInverseScheduler",
        "DPMSolverMultistepInverseScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
        "FlowMatchLCMScheduler",
        "LTXEulerAncestralRFScheduler",
        "MiniMaxH3Scheduler",
        "HeliosScheduler",  # (staged flow schedules: set_timesteps wants a stage)
        "HeliosDMDScheduler",
        "RFD4ProteinaScheduler",  # (protein coordinates: its step takes an emit mask)
        "RePaintScheduler",  # (its step takes the known image and mask: its own pipeline's loop)
        "PiflowScheduler",  # (its step takes a widened output)
        "DDPMWuerstchenScheduler",  # (DiT hands a 0-d timestep, which Wuerstchen's step does not take)
        "SCMScheduler",
    }
)  # (a TrigFlow model's, whose pipelines step over timesteps[:-1])


@pytest.mark.filterwarnings("ignore")  # diffusers' notices about scheduler options
@pytest.mark.usefixtures("exact_float32_convolutions")
@pytest.mark.parametrize("name", DIT_SCHEDULERS)
def test_dit_pipeline_gives_the_same_images(name, dit_pipeline_parts):
    """diffusers' own DiTPipeline loop (classifier-free guidance on a doubled
    batch, scale_model_input, the learned-sigma half split off as a
    non-contiguous view, timesteps handed out by the pipeline) with the stock
    scheduler, then after ``accelerate(pipe)``: the same images."""
    transformer, vae = dit_pipeline_parts
    config = base_config(name)
    pipe = diffusers.DiTPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=getattr(diffusers, name)(**config),
        id2label={i: str(i) for i in range(10)},
    )
    pipe.set_progress_bar_config(disable=True)

    def images():
        torch.manual_seed(5)  # the ancestral schedulers draw from the global generator here
        return pipe(
            class_labels=[1, 7],
            guidance_scale=4.0,
            num_inference_steps=8,
            generator=torch.Generator(DEVICE).manual_seed(3),
            output_type="np",
        ).images

    stock = images()
    pipe, changes = accelerated.accelerate(pipe)
    assert type(pipe.scheduler) is getattr(accelerated, name) and len(changes) == 1
    fused = images()
    # Measured on the dev VM: 2e-7 to 2.3e-6 (images in [0, 1]).
    assert abs(fused - stock).max() < 1e-4


def test_accelerate_swaps_every_scheduler_of_a_pipeline():
    """An inversion pipeline's inverse_scheduler too: from a DiffusionPipeline's
    registered components, or from the two attributes of anything else."""

    class InversionPipe:  # what accelerate() reads of a pipeline that is not a DiffusionPipeline
        scheduler, inverse_scheduler = diffusers.DDIMScheduler(), diffusers.DDIMInverseScheduler()

    pipe, changes = accelerated.accelerate(InversionPipe())
    assert isinstance(pipe.scheduler, accelerated.DDIMScheduler)
    assert isinstance(pipe.inverse_scheduler, accelerated.DDIMInverseScheduler)
    assert changes == [
        "DDIMScheduler -> diffaccel DDIMScheduler",
        "DDIMInverseScheduler -> diffaccel DDIMInverseScheduler (inverse_scheduler)",
    ]

    class TwoSchedulerPipeline(diffusers.DiffusionPipeline):  # a registered second scheduler, as prior pipelines have
        def __init__(self, unet, scheduler, prior_scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler, prior_scheduler=prior_scheduler)

    pipe = TwoSchedulerPipeline(_small_unet(), diffusers.EulerDiscreteScheduler(), diffusers.PNDMScheduler())
    pipe, changes = accelerated.accelerate(pipe)
    assert isinstance(pipe.scheduler, accelerated.EulerDiscreteScheduler)
    assert (
        isinstance(pipe.prior_scheduler, accelerated.PNDMScheduler)
        and pipe.components["prior_scheduler"] is pipe.prior_scheduler
    )
    assert sorted(changes) == [
        "EulerDiscreteScheduler -> diffaccel EulerDiscreteScheduler",
        "PNDMScheduler -> diffaccel PNDMScheduler (prior_scheduler)",
    ]

"""The pipeline families graph_pipeline captures, one class each: what the
family's own ``__call__`` does around the scheduler step, written out for
fixed shapes so that it can be recorded once as a CUDA graph.

A family knows, for one pipeline and one set of fixed sizes:

- the latents' shape and dtype (as the pipeline's ``prepare_latents`` makes them);
- the text inputs the loop takes, by the names of the pipeline's ``__call__``
  keywords (``prompt_embeds``, ``pooled_prompt_embeds``, ``prompt_attention_mask``;
  the negative prompt's under ``negative_...``) and the shape of each;
- the tensors fixed at capture that the pipeline computes from sizes and
  options (SDXL's time ids, Flux's image and text ids and guidance, ...);
- the schedule: the pipeline's own ``set_timesteps`` call (Flux's custom
  sigmas and dynamic shift, SD3's shift for the size);
- one denoiser call (the keywords that family passes) and what its loop does
  to the output before and after guidance.

The loop itself (guidance, the step, the state) is GraphedPipeline's
(diffaccel/integrations/diffusers/graphed.py), shared by every family.
"""

from __future__ import annotations

import inspect
from typing import Dict, List, NamedTuple, Optional, Tuple

import diffusers as _diffusers
import numpy as np
import torch

from diffaccel.integrations.diffusers.common import _combine


class TextInput(NamedTuple):
    """One conditioning tensor the loop takes from the caller: ``name`` is the
    pipeline's ``__call__`` keyword (the negative prompt's is ``negative_`` +
    name), ``shape`` that of one prompt's batch."""

    name: str
    shape: Tuple[int, ...]
    dtype: torch.dtype


class Family:
    """What one pipeline family's loop does around the scheduler step. A
    subclass sets the class attributes and overrides what differs."""

    name = ""
    pipelines: Tuple[str, ...] = ()  # the diffusers classes (and their subclasses) of this family
    denoiser_name = "transformer"
    batched_guidance = True  # [negative, positive] rows in one denoiser call; else one call each
    scales_model_input = False  # whether its loop calls scheduler.scale_model_input
    scales_initial_latents = False  # whether its prepare_latents multiplies by init_noise_sigma
    options: Dict[str, object] = {}  # the graph_pipeline keywords it takes beyond the common ones, with defaults

    @classmethod
    def missing(cls, pipe) -> Optional[str]:
        """What ``pipe`` lacks for this family's loop, or None."""
        if getattr(pipe, cls.denoiser_name, None) is None:
            return f"a {cls.denoiser_name}"
        return None

    def __init__(self, pipe, *, batch_size, height, width, num_frames, max_sequence_length, guidance_scale, options):
        self.pipe, self.batch = pipe, batch_size
        self.height, self.width, self.num_frames = height, width, num_frames
        self.guidance_scale = guidance_scale
        self.options = dict(type(self).options, **options)
        self.denoiser = getattr(pipe, self.denoiser_name)
        self.device, self.dtype = self.denoiser.device, self.denoiser.dtype
        self.sequence_length = max_sequence_length or self.default_sequence_length()
        self.fixed: Dict[str, torch.Tensor] = {}  # tensors made at capture from sizes and options

    # -- sizes -----------------------------------------------------------------
    def default_sequence_length(self) -> int:
        """The token count of the embeddings when graph_pipeline is not given
        max_sequence_length: the pipeline's own default."""
        default = inspect.signature(type(self.pipe).__call__).parameters.get("max_sequence_length")
        return int(default.default)

    def latent_scale(self) -> int:
        """What height and width must be multiples of."""
        return int(self.pipe.vae_scale_factor)

    def latent_shape(self) -> Tuple[int, ...]:
        scale = self.pipe.vae_scale_factor
        return (self.batch, self.denoiser.config.in_channels, self.height // scale, self.width // scale)

    def latent_dtype(self) -> torch.dtype:
        return self.dtype

    def prepare_latents(self, latents, generator, scheduler) -> torch.Tensor:
        """What the pipeline's prepare_latents makes of ``latents`` (as given to
        ``pipe(latents=...)``), or of fresh noise drawn from ``generator`` as it draws it."""
        from diffusers.utils.torch_utils import randn_tensor

        if latents is None:
            latents = randn_tensor(
                self.latent_shape(), generator=generator, device=self.device, dtype=self.latent_dtype()
            )
        latents = latents.to(device=self.device, dtype=self.latent_dtype())
        return latents * scheduler.init_noise_sigma if self.scales_initial_latents else latents

    def text_inputs(self) -> List[TextInput]:
        raise NotImplementedError

    def encode(self, prompt, negative_prompt, per_prompt: int, **kwargs) -> Dict[str, torch.Tensor]:
        """The pipeline's own encode_prompt on ``prompt`` (and the negative
        prompt when guided), its results by the loop's keyword names."""
        raise NotImplementedError

    @property
    def guided(self) -> bool:
        """Whether the loop runs classifier-free guidance (diffusers' rule for the family)."""
        return self.guidance_scale > 1.0

    def guidance_scales(self) -> List[float]:
        """The guidance scale of each step (Wan 2.2 switches it with its model)."""
        return [self.guidance_scale] * self.steps

    def denoisers(self) -> List[torch.nn.Module]:
        """The denoiser of each step."""
        return [self.denoiser] * self.steps

    # -- schedule ----------------------------------------------------------------
    def set_timesteps(self, scheduler, steps: int) -> None:
        """The pipeline's own set_timesteps call for these sizes."""
        scheduler.set_timesteps(steps, device=self.device)

    def prepare(self, steps: int) -> None:
        """Fills self.fixed (called once, at capture, after set_timesteps);
        ``steps`` is the loop's length, len(scheduler.timesteps) (Heun's is
        twice the step count less one)."""
        self.steps = steps

    # -- one step ----------------------------------------------------------------
    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def call(self, denoiser, model_in: torch.Tensor, t: torch.Tensor, text: Dict[str, torch.Tensor]) -> torch.Tensor:
        """One denoiser call on ``model_in`` (2B rows when guidance is batched)."""
        raise NotImplementedError

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """uncond + g (cond - uncond), as one fused op with weights [1 - g, g]."""
        return _combine([uncond, cond], weights)

    def after_guidance(self, noise_pred: torch.Tensor) -> torch.Tensor:
        return noise_pred


def _named(guided: bool, **pairs) -> Dict[str, torch.Tensor]:
    """{name: positive, negative_name: negative} (the negatives only when guided)."""
    named = {name: positive for name, (positive, _) in pairs.items()}
    if guided:
        named.update({f"negative_{name}": negative for name, (_, negative) in pairs.items()})
    return named


def _learned_sigma(denoiser, noise_pred: torch.Tensor, latent_channels: int) -> torch.Tensor:
    """PixArt's and Sana's loops keep the first half of a learned-variance output."""
    if denoiser.config.out_channels // 2 == latent_channels:
        return noise_pred.chunk(2, dim=1)[0]
    return noise_pred


def _calculate_shift(image_seq_len: int, config, max_shift: float) -> float:
    """diffusers' calculate_shift with the scheduler config's values and the
    pipeline's defaults (``max_shift``: Flux's 1.15, SD3's 1.16)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", max_shift),
    )


class StableDiffusion(Family):
    """StableDiffusionPipeline (SD 1.x / 2.x): a UNet on [negative, positive]
    prompt embeddings; guidance_rescale and LCM-style guidance embeddings
    (``unet.config.time_cond_proj_dim``) as the pipeline does them."""

    name = "stable-diffusion"
    pipelines = ("StableDiffusionPipeline",)
    denoiser_name = "unet"
    scales_model_input = True
    scales_initial_latents = True
    options = {"guidance_rescale": 0.0}

    def default_sequence_length(self) -> int:
        return int(getattr(getattr(self.pipe, "tokenizer", None), "model_max_length", 77))

    def text_inputs(self) -> List[TextInput]:
        width = self.denoiser.config.cross_attention_dim
        return [TextInput("prompt_embeds", (self.batch, self.sequence_length, width), self.dtype)]

    @property
    def guided(self) -> bool:
        return self.guidance_scale > 1.0 and self.denoiser.config.time_cond_proj_dim is None

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        positive, negative = self.pipe.encode_prompt(
            prompt, self.device, per_prompt, self.guided, negative_prompt=negative_prompt, **kwargs
        )
        return _named(self.guided, prompt_embeds=(positive, negative))

    def prepare(self, steps: int) -> None:
        super().prepare(steps)
        dim = self.denoiser.config.time_cond_proj_dim
        if dim is not None:  # a guidance-distilled UNet (LCM) takes w - 1 as an embedding
            scale = torch.tensor(self.guidance_scale - 1).repeat(self.batch)
            embedding = self.pipe.get_guidance_scale_embedding(scale, embedding_dim=dim)
            self.fixed["timestep_cond"] = embedding.to(device=self.device, dtype=self.latent_dtype())

    def added_cond_kwargs(self, text: Dict[str, torch.Tensor]) -> Optional[dict]:
        return None

    def call(self, denoiser, model_in, t, text):
        return denoiser(
            model_in,
            t,
            encoder_hidden_states=text["prompt_embeds"],
            timestep_cond=self.fixed.get("timestep_cond"),
            added_cond_kwargs=self.added_cond_kwargs(text),
            return_dict=False,
        )[0]

    def guide(self, uncond, cond, weights):
        noise_pred = super().guide(uncond, cond, weights)
        rescale = float(self.options["guidance_rescale"])
        if rescale > 0.0:
            from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

            noise_pred = rescale_noise_cfg(noise_pred, cond, guidance_rescale=rescale)
        return noise_pred


class StableDiffusionXL(StableDiffusion):
    """StableDiffusionXLPipeline: the UNet also takes the pooled embeddings
    (``text_embeds``) and the size conditioning (``time_ids``), made at capture
    from original_size, crops_coords_top_left and target_size as the pipeline does."""

    name = "stable-diffusion-xl"
    pipelines = ("StableDiffusionXLPipeline",)
    options = {
        "guidance_rescale": 0.0,
        "original_size": None,
        "crops_coords_top_left": (0, 0),
        "target_size": None,
        "negative_original_size": None,
        "negative_crops_coords_top_left": (0, 0),
        "negative_target_size": None,
    }

    @classmethod
    def missing(cls, pipe):
        if getattr(pipe, "unet", None) is not None and pipe.unet.config.addition_embed_type != "text_time":
            return "a unet with SDXL's added conditioning (addition_embed_type 'text_time')"
        return super().missing(pipe)

    def pooled_width(self) -> int:
        # What the UNet's added embedding takes besides six time ids (the
        # pipeline's text_encoder_projection_dim without a text encoder).
        config = self.denoiser.config
        return int(self.denoiser.add_embedding.linear_1.in_features - 6 * config.addition_time_embed_dim)

    def text_inputs(self):
        return super().text_inputs() + [
            TextInput("pooled_prompt_embeds", (self.batch, self.pooled_width()), self.dtype)
        ]

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        positive, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompt,
            device=self.device,
            num_images_per_prompt=per_prompt,
            do_classifier_free_guidance=self.guided,
            negative_prompt=negative_prompt,
            **kwargs,
        )
        return _named(self.guided, prompt_embeds=(positive, negative), pooled_prompt_embeds=(pooled, negative_pooled))

    def prepare(self, steps):
        super().prepare(steps)
        o = self.options
        size = (self.height, self.width)
        time_ids = self.pipe._get_add_time_ids(
            tuple(o["original_size"] or size),
            tuple(o["crops_coords_top_left"]),
            tuple(o["target_size"] or size),
            dtype=self.dtype,
            text_encoder_projection_dim=self.pooled_width(),
        )
        if o["negative_original_size"] is not None and o["negative_target_size"] is not None:
            negative = self.pipe._get_add_time_ids(
                tuple(o["negative_original_size"]),
                tuple(o["negative_crops_coords_top_left"]),
                tuple(o["negative_target_size"]),
                dtype=self.dtype,
                text_encoder_projection_dim=self.pooled_width(),
            )
        else:
            negative = time_ids
        if self.guided:
            time_ids = torch.cat([negative, time_ids], dim=0)
        # The pipeline's own layout: the (negative, positive) pair repeated per image.
        self.fixed["time_ids"] = time_ids.to(self.device).repeat(self.batch, 1)

    def added_cond_kwargs(self, text):
        return {"text_embeds": text["pooled_prompt_embeds"], "time_ids": self.fixed["time_ids"]}


class StableDiffusion3(Family):
    """StableDiffusion3Pipeline (SD3, SD3.5): an MMDiT on joint (CLIP + T5)
    embeddings and pooled projections; the flow-matching schedule with the
    scheduler's shift, and its dynamic shift for the size where configured."""

    name = "stable-diffusion-3"
    pipelines = ("StableDiffusion3Pipeline",)

    def default_sequence_length(self):
        # The joint embeddings: 77 CLIP tokens, then the T5 ones.
        return 77 + super().default_sequence_length()

    def latent_scale(self):
        return int(self.pipe.vae_scale_factor * self.denoiser.config.patch_size)

    def text_inputs(self):
        config = self.denoiser.config
        return [
            TextInput("prompt_embeds", (self.batch, self.sequence_length, config.joint_attention_dim), self.dtype),
            TextInput("pooled_prompt_embeds", (self.batch, config.pooled_projection_dim), self.dtype),
        ]

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        positive, negative, pooled, negative_pooled = self.pipe.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=per_prompt,
            do_classifier_free_guidance=self.guided,
            negative_prompt=negative_prompt,
            max_sequence_length=self.sequence_length - 77,
            **kwargs,
        )
        return _named(self.guided, prompt_embeds=(positive, negative), pooled_prompt_embeds=(pooled, negative_pooled))

    def set_timesteps(self, scheduler, steps):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import retrieve_timesteps

        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", None):
            _, _, height, width = self.latent_shape()
            patch = self.denoiser.config.patch_size
            kwargs["mu"] = _calculate_shift((height // patch) * (width // patch), scheduler.config, 1.16)
        retrieve_timesteps(scheduler, steps, self.device, **kwargs)

    def call(self, denoiser, model_in, t, text):
        return denoiser(
            hidden_states=model_in,
            timestep=t.expand(model_in.shape[0]),
            encoder_hidden_states=text["prompt_embeds"],
            pooled_projections=text["pooled_prompt_embeds"],
            return_dict=False,
        )[0]


class Flux(Family):
    """FluxPipeline: packed latents with image and text ids, the guidance
    embedding (``guidance_scale``, no second call), and ``true_cfg_scale`` > 1
    with a negative prompt as a second transformer call; Flux's custom sigmas
    and dynamic shift for the image size."""

    name = "flux"
    pipelines = ("FluxPipeline",)
    batched_guidance = False
    options = {"true_cfg_scale": 1.0}

    def latent_scale(self):
        return int(self.pipe.vae_scale_factor * 2)

    def latent_shape(self):
        # prepare_latents' packing: 2x2 patches of the latent image as tokens.
        scale = self.pipe.vae_scale_factor
        height, width = 2 * (self.height // (scale * 2)), 2 * (self.width // (scale * 2))
        return (self.batch, (height // 2) * (width // 2), self.denoiser.config.in_channels)

    def text_inputs(self):
        config = self.denoiser.config
        return [
            TextInput("prompt_embeds", (self.batch, self.sequence_length, config.joint_attention_dim), self.dtype),
            TextInput("pooled_prompt_embeds", (self.batch, config.pooled_projection_dim), self.dtype),
        ]

    def prepare_latents(self, latents, generator, scheduler):
        if latents is None:  # noise drawn unpacked, then packed, as the pipeline does
            channels = self.denoiser.config.in_channels // 4
            args = (self.batch, channels, self.height, self.width, self.dtype, self.device, generator)
            return self.pipe.prepare_latents(*args)[0]
        return latents.to(device=self.device, dtype=self.dtype)

    @property
    def guided(self):
        return float(self.options["true_cfg_scale"]) > 1.0

    def guidance_scales(self):
        return [float(self.options["true_cfg_scale"])] * self.steps

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        def one(text):
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=text,
                device=self.device,
                num_images_per_prompt=per_prompt,
                max_sequence_length=self.sequence_length,
                **kwargs,
            )
            return embeds, pooled

        positive, pooled = one(prompt)
        negative, negative_pooled = one(negative_prompt or "") if self.guided else (None, None)
        return _named(self.guided, prompt_embeds=(positive, negative), pooled_prompt_embeds=(pooled, negative_pooled))

    def set_timesteps(self, scheduler, steps):
        from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

        sigmas = np.linspace(1.0, 1 / steps, steps)
        if getattr(scheduler.config, "use_flow_sigmas", False):
            sigmas = None
        mu = _calculate_shift(self.latent_shape()[1], scheduler.config, 1.15)
        retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)

    def prepare(self, steps):
        super().prepare(steps)
        scale = self.pipe.vae_scale_factor
        height, width = 2 * (self.height // (scale * 2)), 2 * (self.width // (scale * 2))
        self.fixed["img_ids"] = self.pipe._prepare_latent_image_ids(
            self.batch, height // 2, width // 2, self.device, self.dtype
        )
        self.fixed["txt_ids"] = torch.zeros(self.sequence_length, 3, device=self.device, dtype=self.dtype)
        if self.denoiser.config.guidance_embeds:
            guidance = torch.full([1], self.guidance_scale, device=self.device, dtype=torch.float32)
            self.fixed["guidance"] = guidance.expand(self.batch)

    def call(self, denoiser, model_in, t, text):
        timestep = t.expand(model_in.shape[0]).to(model_in.dtype)
        return denoiser(
            hidden_states=model_in,
            timestep=timestep / 1000,
            guidance=self.fixed.get("guidance"),
            pooled_projections=text["pooled_prompt_embeds"],
            encoder_hidden_states=text["prompt_embeds"],
            txt_ids=self.fixed["txt_ids"],
            img_ids=self.fixed["img_ids"],
            return_dict=False,
        )[0]


class PixArtSigma(Family):
    """PixArtSigmaPipeline: a DiT on T5 embeddings with their attention masks
    (no resolution conditioning), the learned-variance half dropped after guidance."""

    name = "pixart-sigma"
    pipelines = ("PixArtSigmaPipeline",)
    scales_model_input = True
    scales_initial_latents = True

    def text_inputs(self):
        width = self.denoiser.config.caption_channels
        return [
            TextInput("prompt_embeds", (self.batch, self.sequence_length, width), self.dtype),
            TextInput("prompt_attention_mask", (self.batch, self.sequence_length), torch.int64),
        ]

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        positive, mask, negative, negative_mask = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=self.guided,
            negative_prompt=negative_prompt or "",
            num_images_per_prompt=per_prompt,
            device=self.device,
            max_sequence_length=self.sequence_length,
            **kwargs,
        )
        return _named(self.guided, prompt_embeds=(positive, negative), prompt_attention_mask=(mask, negative_mask))

    def call(self, denoiser, model_in, t, text):
        return denoiser(
            model_in,
            encoder_hidden_states=text["prompt_embeds"],
            encoder_attention_mask=text["prompt_attention_mask"],
            timestep=t[None].expand(model_in.shape[0]),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]

    def after_guidance(self, noise_pred):
        return _learned_sigma(self.denoiser, noise_pred, self.denoiser.config.in_channels)


class Sana(PixArtSigma):
    """SanaPipeline: float32 latents, the transformer in its own dtype with a
    scaled timestep, its output taken to float32 before guidance."""

    name = "sana"
    pipelines = ("SanaPipeline",)
    scales_model_input = False
    scales_initial_latents = False

    def latent_dtype(self):
        return torch.float32

    def call(self, denoiser, model_in, t, text):
        timestep = t.expand(model_in.shape[0]) * self.denoiser.config.timestep_scale
        return denoiser(
            model_in.to(dtype=self.dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype=self.dtype),
            encoder_attention_mask=text["prompt_attention_mask"],
            timestep=timestep,
            return_dict=False,
        )[0].float()


class Wan(Family):
    """WanPipeline (Wan 2.1 and 2.2 text-to-video): float32 video latents, one
    transformer call per prompt (positive, then negative), and for Wan 2.2 the
    second transformer and guidance_scale_2 below the boundary timestep
    (decided on the host from the schedule, where the pipeline reads the device)."""

    name = "wan"
    pipelines = ("WanPipeline",)
    batched_guidance = False
    options = {"guidance_scale_2": None}

    @classmethod
    def missing(cls, pipe):
        if pipe.config.boundary_ratio is not None and getattr(pipe, "transformer_2", None) is None:
            return "a transformer_2 (Wan 2.2's low-noise model: boundary_ratio is set)"
        return super().missing(pipe)

    def latent_scale(self):
        return int(self.pipe.vae_scale_factor_spatial)

    def latent_shape(self):
        spatial, temporal = self.pipe.vae_scale_factor_spatial, self.pipe.vae_scale_factor_temporal
        frames = (self.num_frames - 1) // temporal + 1
        return (self.batch, self.denoiser.config.in_channels, frames, self.height // spatial, self.width // spatial)

    def latent_dtype(self):
        return torch.float32

    def text_inputs(self):
        width = self.denoiser.config.text_dim
        return [TextInput("prompt_embeds", (self.batch, self.sequence_length, width), self.dtype)]

    def encode(self, prompt, negative_prompt, per_prompt, **kwargs):
        positive, negative = self.pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative_prompt,
            do_classifier_free_guidance=self.guided,
            num_videos_per_prompt=per_prompt,
            max_sequence_length=self.sequence_length,
            device=self.device,
            **kwargs,
        )
        return _named(self.guided, prompt_embeds=(positive, negative))

    def prepare(self, steps):
        super().prepare(steps)
        boundary = self.pipe.config.boundary_ratio
        timesteps = self._host_timesteps
        if boundary is None:
            self._low_noise = [False] * steps
        else:
            cut = boundary * self._num_train_timesteps
            self._low_noise = [not (t >= cut) for t in timesteps]

    def set_timesteps(self, scheduler, steps):
        super().set_timesteps(scheduler, steps)
        self._host_timesteps = scheduler.timesteps.tolist()  # once, at capture
        self._num_train_timesteps = scheduler.config.num_train_timesteps

    def denoisers(self):
        return [self.pipe.transformer_2 if low else self.denoiser for low in self._low_noise]

    def guidance_scales(self):
        second = self.options["guidance_scale_2"]
        second = self.guidance_scale if second is None else float(second)
        return [second if low else self.guidance_scale for low in self._low_noise]

    def model_input(self, latents):
        return latents.to(self.dtype)

    def call(self, denoiser, model_in, t, text):
        if self.pipe.config.expand_timesteps:  # Wan 2.2 TI2V: a timestep per latent token
            frames, height, width = model_in.shape[2:]
            timestep = t.expand(model_in.shape[0], frames * (height // 2) * (width // 2))
        else:
            timestep = t.expand(model_in.shape[0])
        return denoiser(
            hidden_states=model_in, timestep=timestep, encoder_hidden_states=text["prompt_embeds"], return_dict=False
        )[0]


FAMILIES: Tuple[type, ...] = (StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux, PixArtSigma, Sana, Wan)


def family_of(pipe) -> type:
    """The Family class of ``pipe``, or a ValueError/TypeError that names what it lacks."""
    for family in FAMILIES:
        for name in family.pipelines:
            cls = getattr(_diffusers, name, None)
            if cls is not None and isinstance(pipe, cls):
                return family
    names = ", ".join(name for family in FAMILIES for name in family.pipelines)
    if not isinstance(pipe, _diffusers.DiffusionPipeline):
        raise TypeError(f"graph_pipeline() takes a diffusers pipeline ({names}), got {type(pipe).__name__}")
    raise ValueError(
        f"graph_pipeline: {type(pipe).__name__} is not a family it captures ({names}): its denoising loop is not "
        "one of theirs (an image input, a mask, control inputs or its own loop); run it with accelerate(pipe)"
    )

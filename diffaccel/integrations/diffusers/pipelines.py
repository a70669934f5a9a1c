"""The accelerated classes by name (ACCELERATED), accelerate(pipe), which swaps
a pipeline's schedulers for them, and graph_pipeline, which captures a
pipeline's denoising loop as one CUDA graph."""

from __future__ import annotations

import inspect
import warnings
from typing import List, Optional

import diffusers as _diffusers
import torch

from diffaccel.graph import CapturedLoop, Progress, Replayable, check_static, fresh_generator
from diffaccel.integrations.diffusers import (
    common,
    consistency,
    ddim_ddpm,
    dpm_solver,
    euler,
    flow_matching,
    predictor_corrector,
)
from diffaccel.integrations.diffusers.common import _combine
from diffaccel.transfer import DeviceConstants, to_device


# Every accelerated class by the name of the diffusers class it replaces: the
# public _FusedStep subclasses of the family modules.
ACCELERATED = {
    cls.__name__: cls
    for module in (dpm_solver, ddim_ddpm, euler, flow_matching, predictor_corrector, consistency)
    for cls in vars(module).values()
    if isinstance(cls, type)
    and issubclass(cls, common._FusedStep)
    and cls.__module__ == module.__name__
    and not cls.__name__.startswith("_")
}


def accelerate(obj):
    """Swaps diffusers schedulers for their accelerated classes, built from the
    same config. ``obj`` is a scheduler (the accelerated one is returned) or a
    pipeline: every scheduler among its components (``scheduler``, and
    ``inverse_scheduler``, ``prior_scheduler``, ... where it has them) is
    replaced in place and the pipeline returned. Returns ``(result, changes)`` with ``changes`` a list of what was
    swapped. A scheduler without an accelerated class, or with a config option
    the accelerated step does not fuse, is kept, with a warning naming why."""
    changes: List[str] = []

    def swap(scheduler, where: str = ""):
        name = type(scheduler).__name__
        cls = ACCELERATED.get(name)
        if cls is None:
            if not isinstance(scheduler, tuple(ACCELERATED.values())):
                warnings.warn(f"diffaccel: no accelerated {name} yet; keeping the stock scheduler", stacklevel=3)
            return scheduler
        candidate = cls.from_config(scheduler.config)
        bad = candidate.unsupported_options()
        if bad:
            warnings.warn(
                f"diffaccel: {name} option(s) {', '.join(bad)} not accelerated; keeping the stock scheduler",
                stacklevel=3,
            )
            return scheduler
        changes.append(f"{name} -> diffaccel {cls.__name__}{where}")
        return candidate

    if isinstance(obj, _diffusers.SchedulerMixin):
        return swap(obj), changes
    components = getattr(obj, "components", None)  # a DiffusionPipeline's registered modules
    if isinstance(components, dict):
        # (UnCLIP's pipelines have no `scheduler`: prior_, decoder_ and super_res_scheduler)
        names = [name for name, part in components.items() if isinstance(part, _diffusers.SchedulerMixin)]
    elif hasattr(obj, "scheduler"):
        names = [name for name in ("scheduler", "inverse_scheduler") if getattr(obj, name, None) is not None]
    else:
        raise TypeError(f"accelerate() takes a diffusers scheduler or pipeline, got {type(obj).__name__}")
    for name in names:
        setattr(obj, name, swap(getattr(obj, name), "" if name == "scheduler" else f" ({name})"))
    return obj, changes


class GraphedPipeline(Replayable):
    """The denoising loop of a diffusers pipeline (UNet plus accelerated
    scheduler) for fixed shapes, captured as one CUDA graph (on CPU: run
    eagerly); made by :func:`graph_pipeline`. Call it with the initial latents
    (as the pipeline's ``prepare_latents`` returns them: noise times the
    scheduler's ``init_noise_sigma``) and the prompt embeddings; it returns the
    denoised latents, for ``pipe.vae.decode(latents / pipe.vae.config.scaling_factor)``."""

    def __init__(
        self,
        unet,
        scheduler,
        *,
        steps: int,
        latent_shape,
        embed_shape,
        guidance_scale: float,
        warmup: int,
        pool,
        device,
        dtype,
    ):
        self.unet, self.scheduler, self.steps = unet, scheduler, steps
        self.guided = guidance_scale > 1.0  # diffusers' do_classifier_free_guidance
        self.latents = torch.zeros(latent_shape, device=device, dtype=dtype)
        batch = latent_shape[0]
        self.embeds = torch.zeros(
            ((2 if self.guided else 1) * batch,) + tuple(embed_shape[1:]), device=device, dtype=dtype
        )
        self.result = torch.empty_like(self.latents)
        self.generator = fresh_generator(torch.device(device))
        self.weights = to_device([1.0 - guidance_scale, guidance_scale], device)
        scheduler.set_timesteps(steps, device=device)
        if hasattr(scheduler, "set_begin_index"):  # _init_step_index then needs no timestep lookup (a sync)
            scheduler.set_begin_index(0)
        self.timesteps = list(scheduler.timesteps)
        # As diffusers' pipelines do: a generator only for the steps that take one.
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        self._step_kwargs = {"generator": self.generator} if takes_generator else {}
        self._initial_state = self._copy_state(vars(scheduler))
        self._progress = Progress()
        self._constants = DeviceConstants()
        self._loop = CapturedLoop(
            self._run_loop,
            torch.device(device),
            warmup=warmup,
            pool=pool,
            generator=self.generator,
            progress=self._progress,
            constants=self._constants,
            what="the UNet",
        )

    @staticmethod
    def _copy_state(state: dict) -> dict:
        # step() mutates the scheduler's Python state (step index, history lists in
        # place): each run starts from a copy of the state set_timesteps left.
        return {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def _run_loop(self) -> None:
        vars(self.scheduler).clear()
        vars(self.scheduler).update(self._copy_state(self._initial_state))
        latents = self.latents
        for i, t in enumerate(self.timesteps):
            self._progress.model_call(f"UNet call {i + 1} of {len(self.timesteps)}")
            model_in = torch.cat([latents, latents]) if self.guided else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            noise_pred = self.unet(model_in, t, encoder_hidden_states=self.embeds, return_dict=False)[0]
            self._progress.update(f"the scheduler step after UNet call {i + 1}")
            if self.guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = _combine([uncond, cond], self.weights)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False, **self._step_kwargs)[0]
        self.result.copy_(latents)

    def __call__(
        self,
        latents: torch.Tensor,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        *,
        seed: Optional[int] = None,
        out: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``seed`` reseeds the noise of stochastic schedulers (same seed, same
        result). With guidance (guidance_scale > 1) negative_prompt_embeds is
        required: the embeddings of the negative (or empty) prompt."""
        batch = self.latents.shape[0]
        check_static("latents", latents, self.latents)
        check_static("prompt_embeds", prompt_embeds, self.embeds[:batch])
        if self.guided:
            if negative_prompt_embeds is None:
                raise ValueError(
                    "negative_prompt_embeds is required with guidance_scale > 1 (the embeddings of the "
                    "negative or empty prompt, e.g. from pipe.encode_prompt)"
                )
            check_static("negative_prompt_embeds", negative_prompt_embeds, self.embeds[:batch])
            self.embeds[:batch].copy_(negative_prompt_embeds)  # diffusers' order: [negative, positive]
            self.embeds[batch:].copy_(prompt_embeds)
        else:
            if negative_prompt_embeds is not None:
                raise ValueError(
                    "negative_prompt_embeds: this loop was captured without guidance (guidance_scale <= 1)"
                )
            self.embeds.copy_(prompt_embeds)
        if out is not None:
            check_static("out", out, self.result)
        return self._replay(latents, self.latents, self.result, seed, out)


def graph_pipeline(
    pipe,
    *,
    steps: int,
    height: int,
    width: int,
    batch_size: int = 1,
    guidance_scale: float = 7.5,
    warmup: int = 2,
    pool=None,
) -> GraphedPipeline:
    """Captures the denoising loop of a diffusers text-to-image pipeline
    (anything with ``unet`` and ``scheduler``: StableDiffusionPipeline and
    the like) for fixed shapes: ``steps`` steps, images of height x width,
    ``batch_size`` images, classifier-free guidance at ``guidance_scale``
    (none when <= 1, as in diffusers). The scheduler is the accelerated copy of
    ``pipe.scheduler`` (``pipe`` is left unchanged). Prompt embeddings are
    [batch_size, tokenizer.model_max_length (77 without a tokenizer),
    unet.config.cross_attention_dim] in the UNet's dtype."""
    if not hasattr(pipe, "unet") or not hasattr(pipe, "scheduler"):
        raise TypeError(f"graph_pipeline() takes a pipeline with a unet and a scheduler, got {type(pipe).__name__}")
    scheduler = pipe.scheduler
    if not isinstance(scheduler, tuple(ACCELERATED.values())) or scheduler.unsupported_options():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scheduler, changes = accelerate(scheduler)
        if not changes:
            reasons = "; ".join(str(w.message) for w in caught) or "no accelerated class"
            raise ValueError(
                f"graph_pipeline: the stock {type(pipe.scheduler).__name__} synchronizes with the host at "
                f"each step and cannot be captured ({reasons})"
            )
    else:
        scheduler = type(scheduler).from_config(scheduler.config)
    if scheduler.NOT_CAPTURABLE:
        raise ValueError(f"graph_pipeline: {type(scheduler).__name__} cannot be captured: {scheduler.NOT_CAPTURABLE}")
    for name, value in (("steps", steps), ("height", height), ("width", width), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    unet = pipe.unet
    scale = getattr(pipe, "vae_scale_factor", 8)
    if height % scale or width % scale:
        raise ValueError(f"height and width must be multiples of the VAE scale factor {scale}, got {height}x{width}")
    latent_shape = (batch_size, unet.config.in_channels, height // scale, width // scale)
    tokens = getattr(getattr(pipe, "tokenizer", None), "model_max_length", 77)
    embed_shape = (batch_size, tokens, unet.config.cross_attention_dim)
    return GraphedPipeline(
        unet,
        scheduler,
        steps=steps,
        latent_shape=latent_shape,
        embed_shape=embed_shape,
        guidance_scale=float(guidance_scale),
        warmup=warmup,
        pool=pool,
        device=unet.device,
        dtype=unet.dtype,
    )

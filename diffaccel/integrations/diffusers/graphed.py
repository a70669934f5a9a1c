"""graph_pipeline: a diffusers pipeline's denoising loop for fixed sizes,
captured as one CUDA graph (the denoiser calls, the guidance and the
accelerated scheduler steps), for the families of graph_families.py."""

from __future__ import annotations

import inspect
import warnings
from typing import Dict, Optional, Union

import torch

from diffaccel.graph import CapturedLoop, Progress, Replayable, check_static, fresh_generator
from diffaccel.integrations.diffusers.graph_families import Family, family_of
from diffaccel.integrations.diffusers.pipelines import ACCELERATED, accelerate
from diffaccel.transfer import DeviceConstants, to_device


class GraphedPipeline(Replayable):
    """The denoising loop of a diffusers pipeline for fixed sizes, captured as
    one CUDA graph (on CPU: run eagerly); made by :func:`graph_pipeline`.

    Call it with the initial latents (as the pipeline's ``prepare_latents``
    makes them: :meth:`prepare_latents`) and the conditioning by the pipeline's own keyword names
    (``prompt_embeds``, ``negative_prompt_embeds``, ``pooled_prompt_embeds``,
    ``prompt_attention_mask``, ...: ``inputs`` lists them); :meth:`encode`
    makes them with the pipeline's text encoders. It returns what the
    pipeline returns with ``output_type="latent"``. Attributes: ``family``
    (its name), ``scheduler`` (the accelerated copy), ``timesteps``,
    ``inputs``, ``graphed``, ``pool``, ``generator``."""

    def __init__(self, family: Family, scheduler, *, steps: int, warmup: int, pool, compile):
        self._family, self.scheduler = family, scheduler
        self.family = family.name
        device = torch.device(family.device)
        self.guided = family.guided
        family.set_timesteps(scheduler, steps)
        if hasattr(scheduler, "set_begin_index"):  # _init_step_index then needs no timestep lookup (a sync)
            scheduler.set_begin_index(0)
        self.timesteps = list(scheduler.timesteps)
        family.prepare(len(self.timesteps))
        self.latents = torch.zeros(family.latent_shape(), device=device, dtype=family.latent_dtype())
        self.result = torch.empty_like(self.latents)
        # The conditioning at fixed addresses: with batched guidance one buffer of
        # [negative; positive] rows per input (the pipelines' torch.cat order), else
        # one per prompt.
        batched = self.guided and family.batched_guidance
        self._specs = {spec.name: spec for spec in family.text_inputs()}
        self.text = {
            spec.name: torch.zeros(
                ((2 if batched else 1) * spec.shape[0],) + spec.shape[1:], device=device, dtype=spec.dtype
            )
            for spec in self._specs.values()
        }
        self.negative_text = (
            {name: torch.zeros_like(buffer) for name, buffer in self.text.items()}
            if self.guided and not batched
            else {}
        )
        self.inputs = list(self._specs) + ([f"negative_{name}" for name in self._specs] if self.guided else [])
        self.generator = fresh_generator(device)
        # As diffusers' pipelines do: a generator only for the steps that take one.
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        self._step_kwargs = {"generator": self.generator} if takes_generator else {}
        scales = family.guidance_scales()
        weights = {g: to_device([1.0 - g, g], device) for g in sorted(set(scales))}
        self._weights = [weights[g] for g in scales]
        self._denoisers = _compiled(family.denoisers(), compile)
        self._initial_state = self._copy_state(vars(scheduler))
        self._progress = Progress()
        self._constants = DeviceConstants()
        self._loop = CapturedLoop(
            self._run_loop,
            device,
            warmup=warmup,
            pool=pool,
            generator=self.generator,
            progress=self._progress,
            constants=self._constants,
            what=f"the {family.denoiser_name}",
            compiles=compile not in (False, None),
        )

    @staticmethod
    def _copy_state(state: dict) -> dict:
        # step() mutates the scheduler's Python state (step index, history lists in
        # place): each run starts from a copy of the state set_timesteps left.
        return {k: (list(v) if isinstance(v, list) else v) for k, v in state.items()}

    def _run_loop(self) -> None:
        vars(self.scheduler).clear()
        vars(self.scheduler).update(self._copy_state(self._initial_state))
        family, scheduler = self._family, self.scheduler
        latents = self.latents
        for i, t in enumerate(self.timesteps):
            denoiser = self._denoisers[i]
            self._progress.model_call(f"{family.denoiser_name} call {i + 1} of {len(self.timesteps)}")
            if self.guided and family.batched_guidance:
                model_in = torch.cat([latents, latents])
            else:
                model_in = latents
            if family.scales_model_input:
                model_in = scheduler.scale_model_input(model_in, t)
            model_in = family.model_input(model_in)
            noise_pred = family.call(denoiser, model_in, t, self.text)
            if self.guided:
                if family.batched_guidance:
                    uncond, cond = noise_pred.chunk(2)
                else:
                    uncond, cond = family.call(denoiser, model_in, t, self.negative_text), noise_pred
                noise_pred = family.guide(uncond, cond, self._weights[i])
            noise_pred = family.after_guidance(noise_pred)
            self._progress.update(f"the scheduler step after {family.denoiser_name} call {i + 1}")
            latents = scheduler.step(noise_pred, t, latents, return_dict=False, **self._step_kwargs)[0]
        self.result.copy_(latents)

    def prepare_latents(self, latents: Optional[torch.Tensor] = None, *, generator=None) -> torch.Tensor:
        """The loop's starting latents, as the pipeline's prepare_latents makes
        them: from ``latents`` given as to ``pipe(latents=...)`` (SD, SDXL and
        PixArt multiply them by the scheduler's init_noise_sigma), or from fresh
        noise drawn from ``generator`` as the pipeline draws it (the same seed
        gives the pipeline's image)."""
        if latents is not None and tuple(latents.shape) != tuple(self.latents.shape):
            raise ValueError(
                f"latents must have shape {tuple(self.latents.shape)} (fixed at capture), got {tuple(latents.shape)}"
            )
        return self._family.prepare_latents(latents, generator, self.scheduler)

    def encode(self, prompt, negative_prompt=None, **kwargs) -> Dict[str, torch.Tensor]:
        """The conditioning for ``prompt`` (a string, or one per image of the
        batch), by the pipeline's own ``encode_prompt`` and text encoders, as a
        dict for ``loop(latents, **inputs)`` (and for ``pipe(**inputs, ...)``).
        ``negative_prompt`` (default: the pipeline's, usually empty) is encoded
        when the loop was captured with guidance; ``kwargs`` go to encode_prompt."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        batch = self.latents.shape[0]
        if not prompts or batch % len(prompts):
            raise ValueError(f"prompt: give one prompt or {batch} (the captured batch size), got {len(prompts)}")
        per_prompt = batch // len(prompts)
        with torch.no_grad():
            named = self._family.encode(prompt, negative_prompt, per_prompt, **kwargs)
        return {name: named[name] for name in self.inputs}

    def __call__(
        self,
        latents: torch.Tensor,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        *,
        seed: Optional[int] = None,
        out: Optional[torch.Tensor] = None,
        **inputs: torch.Tensor,
    ) -> torch.Tensor:
        """Runs the loop from ``latents`` with the given conditioning (every name
        of ``self.inputs``, the negative ones only with guidance). ``seed``
        reseeds the noise of stochastic schedulers (same seed, same result)."""
        inputs = dict(inputs, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
        unknown = sorted(name for name, value in inputs.items() if value is not None and name not in self.inputs)
        if unknown:
            negatives = [f"negative_{name}" for name in self._specs if f"negative_{name}" in unknown]
            if negatives and not self.guided:
                raise ValueError(f"{negatives[0]}: this loop was captured without guidance (see graph_pipeline)")
            raise TypeError(f"unexpected input(s) {', '.join(unknown)}; this loop takes {', '.join(self.inputs)}")
        missing = [name for name in self.inputs if inputs.get(name) is None]
        if missing:
            why = (
                " (the loop was captured with guidance: give the negative or empty prompt's)"
                if any(name.startswith("negative_") for name in missing)
                else ""
            )
            raise ValueError(f"{missing[0]} is required{why}; encode() makes every input from a prompt")
        batch = self.latents.shape[0]
        check_static("latents", latents, self.latents)
        for name, static in self.text.items():
            rows = static[:batch] if static.shape[0] != batch else static
            check_static(name, inputs[name], rows)
            if self.guided:
                check_static(f"negative_{name}", inputs[f"negative_{name}"], rows)
        if out is not None:
            check_static("out", out, self.result)
        for name, static in self.text.items():
            if self.guided and self._family.batched_guidance:
                static[:batch].copy_(inputs[f"negative_{name}"])  # diffusers' order: [negative, positive]
                static[batch:].copy_(inputs[name])
            else:
                static.copy_(inputs[name])
                if self.guided:
                    self.negative_text[name].copy_(inputs[f"negative_{name}"])
        return self._replay(latents, self.latents, self.result, seed, out)


# torch.compile modes whose compiled code records and replays CUDA graphs of its own.
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def _compiled(denoisers, compile):
    """Each distinct denoiser once through torch.compile (``compile``: True,
    or a dict of torch.compile's keywords), or as it is (False)."""
    if compile is False or compile is None:
        return denoisers
    options = {} if compile is True else dict(compile)
    if options.get("mode") in _CUDAGRAPH_MODES:
        raise ValueError(
            f"compile: mode {options['mode']!r} makes inductor's own CUDA graphs, which cannot be captured inside "
            "the loop's graph (the whole loop is one already); use the default mode or 'max-autotune-no-cudagraphs'"
        )
    done = {}
    for module in denoisers:
        if id(module) not in done:
            done[id(module)] = torch.compile(module, **options)
    return [done[id(module)] for module in denoisers]


def _capturable_scheduler(pipe):
    """An accelerated copy of ``pipe.scheduler`` (the pipeline keeps its own),
    or the reason none can be captured."""
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
    return scheduler


def graph_pipeline(
    pipe,
    *,
    steps: int,
    height: int,
    width: int,
    batch_size: int = 1,
    guidance_scale: Optional[float] = None,
    num_frames: Optional[int] = None,
    max_sequence_length: Optional[int] = None,
    warmup: int = 2,
    pool=None,
    compile: Union[bool, dict] = False,
    **options,
) -> GraphedPipeline:
    """Captures the denoising loop of a diffusers pipeline for fixed sizes:
    ``steps`` steps, images (or videos of ``num_frames`` frames) of height x
    width, ``batch_size`` of them, guidance at ``guidance_scale`` (default:
    the pipeline's own; none when <= 1, as in diffusers). The families:
    StableDiffusionPipeline, StableDiffusionXLPipeline,
    StableDiffusion3Pipeline, FluxPipeline, PixArtSigmaPipeline, SanaPipeline,
    WanPipeline (and their subclasses); any other pipeline is refused with the
    reason. The scheduler is the accelerated copy of ``pipe.scheduler`` with the
    pipeline's own schedule for these sizes (``pipe`` is left unchanged).

    ``max_sequence_length`` is the token count of the prompt embeddings (the
    pipeline's default; SD3's counts its 77 CLIP tokens too). ``options`` are
    the family's own ``__call__`` keywords that shape the loop: SD and SDXL
    ``guidance_rescale``; SDXL ``original_size``, ``crops_coords_top_left``,
    ``target_size`` and their ``negative_`` forms; Flux ``true_cfg_scale``
    (guidance_scale is then its guidance embedding); Wan ``guidance_scale_2``.
    ``compile`` runs each denoiser through torch.compile (True, or a dict of its
    keywords) inside the loop. ``warmup`` and ``pool`` as in diffaccel.graph.capture."""
    family_cls = family_of(pipe)
    lacks = family_cls.missing(pipe)
    if lacks:
        raise ValueError(f"graph_pipeline: this {type(pipe).__name__} lacks {lacks}")
    for name, value in (("steps", steps), ("height", height), ("width", width), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    unknown = sorted(set(options) - set(family_cls.options))
    if unknown:
        takes = ", ".join(family_cls.options) or "none"
        raise TypeError(
            f"graph_pipeline: unexpected option(s) {', '.join(unknown)} for {family_cls.name} (it takes: {takes})"
        )
    call_defaults = inspect.signature(type(pipe).__call__).parameters
    if guidance_scale is None:
        guidance_scale = call_defaults["guidance_scale"].default
    if "num_frames" in call_defaults:
        num_frames = call_defaults["num_frames"].default if num_frames is None else num_frames
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        temporal = pipe.vae_scale_factor_temporal
        if (num_frames - 1) % temporal:
            raise ValueError(
                f"num_frames must be {temporal} k + 1 (the VAE's temporal factor {temporal}), got {num_frames}"
            )
    elif num_frames is not None:
        raise ValueError(f"num_frames: {type(pipe).__name__} makes images, not videos")
    if max_sequence_length is not None and (not isinstance(max_sequence_length, int) or max_sequence_length < 1):
        raise ValueError(f"max_sequence_length must be a positive int, got {max_sequence_length!r}")
    scheduler = _capturable_scheduler(pipe)
    family = family_cls(
        pipe,
        batch_size=batch_size,
        height=height,
        width=width,
        num_frames=num_frames,
        max_sequence_length=max_sequence_length,
        guidance_scale=float(guidance_scale),
        options=options,
    )
    scale = family.latent_scale()
    if height % scale or width % scale:
        raise ValueError(
            f"height and width must be multiples of {scale} (the VAE scale factor times the patch size), "
            f"got {height}x{width}"
        )
    return GraphedPipeline(family, scheduler, steps=steps, warmup=warmup, pool=pool, compile=compile)

"""Drop-in replacements for the sampler APIs people already use:
``diffaccel.integrations.diffusers`` (accelerated diffusers schedulers and
``accelerate(pipe)``) and ``diffaccel.integrations.k_diffusion`` (k-diffusion's
sampling functions). Both need their package only where they compare or
subclass: diffusers for the schedulers, torchsde for k-diffusion's
Brownian-tree noise."""

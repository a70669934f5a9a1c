"""Drop-in replacements for the sampler APIs people already use
(``diffaccel.integrations.k_diffusion``; diffusers' schedulers are to come)."""

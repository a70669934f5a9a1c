"""diffusers' schedulers on the fused ops: subclasses with the same names,
configs and behaviour, whose ``step()`` runs one fused op per model evaluation.

    from diffaccel import diffusers as accelerated
    pipe, changes = accelerated.accelerate(pipe)
    # or: pipe.scheduler = accelerated.DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

``set_timesteps``, the sigmas, ``scale_model_input``, ``add_noise`` and the
public state (step_index, begin_index, model_outputs, lower_order_nums) are
diffusers' own; ``step()`` computes the update's coefficients on the host in
float64 from the scheduler's CPU sigmas and runs one fused op (the data
prediction, its thresholding, the multistep combination and the SDE noise in
one pass), with no host synchronization.

The package is split by scheduler family; every class is importable from here:

- ``common``: the shared step machinery (fused calls in diffusers' dtypes,
  kept step values and device coefficients, the first step index on the host);
- ``dpm_solver``: DPM-Solver multistep (and inverse, EDM, cosine), DEIS,
  DPM-Solver singlestep;
- ``ddim_ddpm``: DDIM (and inverse, CogVideoX's two), DDPM, Wuerstchen, UnCLIP,
  PNDM, score SDE VE;
- ``euler``: Euler, Euler ancestral, EDM Euler, Heun, LMS, DPM++ SDE, KDPM2 pair;
- ``flow_matching``: FlowMatch Euler, LCM and Heun, LTX's Euler ancestral RF,
  FlowMap Euler, MiniMax-H3, pi-Flow;
- ``helios``: Helios (UniPC or Euler on pyramid stages) and Helios DMD;
- ``ipndm``: IPNDM;
- ``parallel``: ParaDiGMS's DDIM and DDPM parallel schedulers;
- ``repaint``: RePaint (inpainting by resampling);
- ``predictor_corrector``: UniPC, SA-Solver;
- ``proteina``: RFD4-Proteína (protein backbones and local latents);
- ``consistency``: LCM, TCD, consistency models, SCM (Sana Sprint);
- ``pipelines``: ``ACCELERATED``, ``accelerate(pipe)``;
- ``graphed``: ``graph_pipeline`` (a pipeline's loop as one CUDA graph), over
  ``graph_families`` (what each pipeline family's loop does around the step).

docs/diffusers.md lists what each class fuses and how close it is to diffusers.
"""

try:
    import diffusers as _diffusers  # noqa: F401  (an optional dependency: say so once, here)
except ImportError as error:
    raise ImportError("diffaccel.integrations.diffusers needs diffusers (pip install diffusers)") from error

from diffaccel.integrations.diffusers.consistency import (
    CMStochasticIterativeScheduler,
    LCMScheduler,
    SCMScheduler,
    TCDScheduler,
)
from diffaccel.integrations.diffusers.ddim_ddpm import (
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
    DDIMInverseScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DDPMWuerstchenScheduler,
    PNDMScheduler,
    ScoreSdeVeScheduler,
    UnCLIPScheduler,
)
from diffaccel.integrations.diffusers.dpm_solver import (
    CosineDPMSolverMultistepScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepInverseScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EDMDPMSolverMultistepScheduler,
)
from diffaccel.integrations.diffusers.euler import (
    DPMSolverSDEScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
)
from diffaccel.integrations.diffusers.flow_matching import (
    FlowMapEulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    FlowMatchLCMScheduler,
    LTXEulerAncestralRFScheduler,
    MiniMaxH3Scheduler,
    PiflowScheduler,
)
from diffaccel.integrations.diffusers.graphed import GraphedPipeline, graph_pipeline
from diffaccel.integrations.diffusers.helios import HeliosDMDScheduler, HeliosScheduler
from diffaccel.integrations.diffusers.ipndm import IPNDMScheduler
from diffaccel.integrations.diffusers.parallel import DDIMParallelScheduler, DDPMParallelScheduler
from diffaccel.integrations.diffusers.pipelines import ACCELERATED, accelerate
from diffaccel.integrations.diffusers.predictor_corrector import SASolverScheduler, UniPCMultistepScheduler
from diffaccel.integrations.diffusers.proteina import RFD4ProteinaScheduler
from diffaccel.integrations.diffusers.repaint import RePaintScheduler

__all__ = [
    "ACCELERATED",
    "GraphedPipeline",
    "accelerate",
    "graph_pipeline",
    "CMStochasticIterativeScheduler",
    "CogVideoXDDIMScheduler",
    "CogVideoXDPMScheduler",
    "CosineDPMSolverMultistepScheduler",
    "DDIMInverseScheduler",
    "DDIMScheduler",
    "DDPMScheduler",
    "DDPMWuerstchenScheduler",
    "DEISMultistepScheduler",
    "DPMSolverMultistepInverseScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSDEScheduler",
    "DPMSolverSinglestepScheduler",
    "EDMDPMSolverMultistepScheduler",
    "EDMEulerScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "FlowMatchEulerDiscreteScheduler",
    "FlowMapEulerDiscreteScheduler",
    "MiniMaxH3Scheduler",
    "PiflowScheduler",
    "RePaintScheduler",
    "IPNDMScheduler",
    "DDIMParallelScheduler",
    "DDPMParallelScheduler",
    "FlowMatchHeunDiscreteScheduler",
    "FlowMatchLCMScheduler",
    "HeliosDMDScheduler",
    "HeliosScheduler",
    "HeunDiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LCMScheduler",
    "LMSDiscreteScheduler",
    "LTXEulerAncestralRFScheduler",
    "PNDMScheduler",
    "RFD4ProteinaScheduler",
    "SASolverScheduler",
    "SCMScheduler",
    "ScoreSdeVeScheduler",
    "TCDScheduler",
    "UnCLIPScheduler",
    "UniPCMultistepScheduler",
]

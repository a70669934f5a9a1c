"""The script tests/test_distributed.py starts under torchrun: a tiny Stable
Diffusion pipeline (tests/pipeline_builders.py), its loop captured with
graph_pipeline, a few images made with diffaccel.distributed.generate (one
seed per image), saved by rank 0. --fail-rank / --hang-rank make one rank
raise or hang in its first image."""

import argparse
import datetime
import os
import sys
import time
import warnings
import zlib

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pipeline_builders  # noqa: E402

from diffaccel import distributed  # noqa: E402
from diffaccel.diffusers import graph_pipeline  # noqa: E402


def embeddings(prompt: str) -> dict:
    """Stand-in for a text encoder: the prompt's embeddings drawn from its hash."""
    generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
    positive, negative = torch.randn(2, 1, 8, 32, generator=generator)
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--hang-rank", type=int, default=-1)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    with distributed.world(timeout=datetime.timedelta(seconds=args.timeout)) as world:
        torch.manual_seed(0)  # the same weights on every rank
        pipe, _ = pipeline_builders.stable_diffusion()
        pipe.scheduler = pipeline_builders.diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        loop = graph_pipeline(pipe, steps=3, height=64, width=64, max_sequence_length=8)
        prompts = [f"prompt {i % 3}" for i in range(args.images)]
        jobs = distributed.jobs(prompts, seeds=[100 + i for i in range(args.images)])

        def make(job):
            if world.rank == args.fail_rank:
                raise RuntimeError("out of memory (simulated)")
            if world.rank == args.hang_rank:
                time.sleep(3600)
            latents = loop.prepare_latents(generator=torch.Generator().manual_seed(job.seed))
            return loop(latents, **embeddings(job.prompt), seed=job.seed)

        results = distributed.generate(world, jobs, make)
        if world.rank == 0:
            results.save(args.out)


if __name__ == "__main__":
    main()

"""Data-parallel generation over GPUs and machines with torch.distributed,
started by ``torchrun``: the images to make are split over the ranks, each
rank captures its loop once and makes its share, one seed per image (so an
image does not depend on how many ranks there are), and rank 0 gathers the
images and a manifest. No cluster layer of its own: torchrun starts the
processes and does the rendezvous, torch.distributed (NCCL on GPUs, gloo on
CPU) carries the results.

    # torchrun --nproc-per-node 8 make_images.py    (one node; docs/distributed.md for several)
    from diffaccel import distributed
    from diffaccel.diffusers import graph_pipeline

    with distributed.world() as world:
        pipe = StableDiffusionXLPipeline.from_pretrained(...).to(world.device)
        loop = graph_pipeline(pipe, steps=30, height=1024, width=1024)
        jobs = distributed.jobs(prompts, seeds=range(len(prompts)))

        def make(job):
            latents = loop.prepare_latents(generator=torch.Generator(world.device).manual_seed(job.seed))
            return loop(latents, **loop.encode(job.prompt), seed=job.seed)

        results = distributed.generate(world, jobs, make)
        if world.rank == 0:
            results.save("out/")        # out/00000.pt ..., out/manifest.json

Without torchrun (no RANK / WORLD_SIZE in the environment) the same script
runs as a world of one process.

A rank whose ``make`` raises is reported by every rank (GenerationFailed names
the rank, the job and the error); a rank that dies or hangs makes the others'
collective call fail after ``timeout`` instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence

import torch
import torch.distributed as dist


class GenerationFailed(RuntimeError):
    """A rank failed while generating (raised on every rank)."""


class Job(NamedTuple):
    """One image to make: its place in the output, its prompt and its seed."""

    index: int
    prompt: Any
    seed: int


@dataclass
class World:
    """This process's place: ``rank`` of ``size`` (``local_rank`` on its node),
    the ``device`` it generates on and the torch.distributed ``backend``
    (None for a world of one process started without torchrun)."""

    rank: int
    size: int
    local_rank: int
    device: torch.device
    backend: Optional[str]


@dataclass
class Results:
    """What rank 0 gathers: the images in job order and one manifest entry per
    image (index, prompt, seed, the rank that made it, seconds it took)."""

    images: List[torch.Tensor]
    manifest: List[Dict[str, Any]]
    world_size: int
    info: Dict[str, Any] = field(default_factory=dict)

    def save(self, directory) -> Path:
        """Writes ``NNNNN.pt`` per image (torch.save) and ``manifest.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for entry, image in zip(self.manifest, self.images):
            torch.save(image, directory / f"{entry['index']:05d}.pt")
        manifest = {"world_size": self.world_size, **self.info, "images": self.manifest}
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n")
        return directory


def jobs(prompts: Sequence[Any], seeds: Optional[Iterable[int]] = None) -> List[Job]:
    """One Job per prompt, in order, with its own seed (default 0, 1, 2, ...).
    Give the same prompt several times for several images of it."""
    prompts = list(prompts)
    seeds = list(range(len(prompts))) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds: one per prompt ({len(prompts)}), got {len(seeds)}")
    return [Job(i, prompt, seed) for i, (prompt, seed) in enumerate(zip(prompts, seeds))]


def shard(all_jobs: Sequence[Job], rank: int, size: int) -> List[Job]:
    """The jobs of ``rank``: every size-th from its rank on, so shares differ by
    at most one job."""
    if not 0 <= rank < size:
        raise ValueError(f"rank must be in [0, {size}), got {rank}")
    return list(all_jobs[rank::size])


@contextlib.contextmanager
def world(
    timeout: datetime.timedelta = datetime.timedelta(minutes=10), backend: Optional[str] = None
) -> Iterator[World]:
    """Joins the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR / MASTER_PORT in the environment): NCCL on GPUs, gloo on CPU
    unless ``backend`` says otherwise; each rank on GPU ``local_rank``.
    ``timeout`` bounds every collective call, so a rank that died or hangs
    makes the others fail instead of wait. Without torchrun: a world of one.
    The group is destroyed on exit."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        yield World(0, 1, 0, device, None)
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} GPU(s); start at most that many "
                "processes per node (torchrun --nproc-per-node), or hide the GPUs (CUDA_VISIBLE_DEVICES=) for CPU"
            )
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    started_here = not dist.is_initialized()
    if started_here:
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    try:
        yield World(rank, size, local_rank, device, backend)
    finally:
        if started_here and dist.is_initialized():
            dist.destroy_process_group()


def generate(world: World, all_jobs: Sequence[Job], make: Callable[[Job], torch.Tensor]) -> Optional[Results]:
    """Runs ``make(job)`` for this rank's share of ``all_jobs`` (shard), then
    gathers every rank's images on rank 0, which gets Results (the others get
    None). If any rank's ``make`` raised, every rank raises GenerationFailed
    naming it; if a rank does not reach the gather within the world's timeout
    (it died or hangs), the others raise GenerationFailed saying so."""
    if world.size == 1:
        records, error = _run(world, all_jobs, make)
        if error:
            raise GenerationFailed(error)
        return _results(world, [records])
    records, error = _run(world, shard(all_jobs, world.rank, world.size), make)
    errors: List[Optional[str]] = [None] * world.size
    _collective("all_gather_object", lambda: dist.all_gather_object(errors, error), world)
    failed = [e for e in errors if e]
    if failed:
        raise GenerationFailed("; ".join(failed))
    gathered: Optional[List] = [None] * world.size if world.rank == 0 else None
    _collective("gather_object", lambda: dist.gather_object(records, gathered, dst=0), world)
    return _results(world, gathered) if world.rank == 0 else None


def _run(world: World, my_jobs: Sequence[Job], make) -> tuple:
    """This rank's images with their manifest entries, and the first error (or None)."""
    records = []
    for job in my_jobs:
        start = time.perf_counter()
        try:
            image = make(job)
            if world.device.type == "cuda":
                torch.cuda.synchronize(world.device)
        except Exception as error:  # noqa: BLE001  (reported to every rank, then raised)
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            return records, f"rank {world.rank}: job {job.index} (seed {job.seed}) raised {detail}"
        entry = {"index": job.index, "prompt": job.prompt, "seed": job.seed, "rank": world.rank}
        entry["seconds"] = round(time.perf_counter() - start, 6)
        records.append((entry, image.detach().cpu()))
    return records, None


def _collective(name: str, call: Callable[[], None], world: World) -> None:
    try:
        call()
    except Exception as error:  # noqa: BLE001  (the backends raise several types for a timeout or a lost peer)
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise GenerationFailed(
            f"rank {world.rank}: {name} failed ({type(error).__name__}: {first_line}); "
            "another rank died or did not finish within the timeout (see its log)"
        ) from error


def _results(world: World, gathered: List[list]) -> Results:
    records = sorted((record for part in gathered for record in part), key=lambda record: record[0]["index"])
    info = {"backend": world.backend, "device": str(world.device)}
    if world.device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(world.device)
    return Results([image for _, image in records], [entry for entry, _ in records], world.size, info)


__all__ = ["GenerationFailed", "Job", "Results", "World", "generate", "jobs", "shard", "world"]

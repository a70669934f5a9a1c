"""diffaccel.distributed under torchrun with gloo on CPU: the images of 2
ranks bit-identical to those of 1 (one seed per image), a rank that raises
reported by every rank, a rank that hangs not hanging the others (the
collective's timeout); and the library part in one process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from diffaccel import distributed

pytest.importorskip("diffusers", reason="diffusers is not installed (make test installs it)")
pytest.importorskip("transformers", reason="diffusers' pipelines import it (make test installs it)")

SCRIPT = Path(__file__).with_name("distributed_job.py")


def _torchrun(ranks: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    # One thread per rank, in both runs: the 1-rank run must not differ by its
    # thread count (torchrun sets OMP_NUM_THREADS=1 only for several ranks).
    # On CPU with gloo wherever the suite runs (a GPU machine's one GPU cannot
    # hold two ranks): the GPUs are hidden from the job.
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    command += [str(SCRIPT), "--out", str(out), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _images(directory: Path):
    manifest = json.loads((directory / "manifest.json").read_text())
    return manifest, [torch.load(directory / f"{e['index']:05d}.pt") for e in manifest["images"]]


def test_two_ranks_make_the_images_one_rank_makes(tmp_path):
    one, two = _torchrun(1, tmp_path / "one"), _torchrun(2, tmp_path / "two")
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    (manifest_1, images_1), (manifest_2, images_2) = _images(tmp_path / "one"), _images(tmp_path / "two")
    assert manifest_1["world_size"] == 1 and manifest_2["world_size"] == 2
    assert manifest_2["backend"] == "gloo"
    assert [e["index"] for e in manifest_2["images"]] == list(range(5))
    assert [e["seed"] for e in manifest_2["images"]] == [100, 101, 102, 103, 104]
    assert [e["rank"] for e in manifest_2["images"]] == [0, 1, 0, 1, 0]
    assert len(images_1) == len(images_2) == 5
    for a, b in zip(images_1, images_2):
        assert a.shape == (1, 4, 8, 8) and torch.equal(a, b)
    assert not torch.equal(images_1[0], images_1[3])  # same prompt, another seed: another image


def test_a_failing_rank_is_reported_by_every_rank(tmp_path):
    run = _torchrun(2, tmp_path / "out", "--fail-rank", "1")
    assert run.returncode != 0
    message = "GenerationFailed: rank 1: job 1 (seed 101) raised RuntimeError: out of memory (simulated)"
    assert run.stderr.count(message) >= 2, run.stderr[-3000:]  # raised on rank 0 and on rank 1
    assert not (tmp_path / "out").exists()


def test_a_hanging_rank_does_not_hang_the_others(tmp_path):
    start = time.monotonic()
    run = _torchrun(2, tmp_path / "out", "--hang-rank", "1", "--timeout", "5")
    assert run.returncode != 0
    assert "GenerationFailed: rank 0: all_gather_object failed" in run.stderr, run.stderr[-3000:]
    assert time.monotonic() - start < 300


def test_one_process_without_torchrun(monkeypatch, tmp_path):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed.world() as world:
        assert (world.rank, world.size, world.backend) == (0, 1, None)
        all_jobs = distributed.jobs(["a", "b", "a"], seeds=[7, 8, 9])
        results = distributed.generate(world, all_jobs, lambda job: torch.full((2,), float(job.seed)))
    assert [image.tolist() for image in results.images] == [[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]
    assert [(e["index"], e["prompt"], e["rank"]) for e in results.manifest] == [(0, "a", 0), (1, "b", 0), (2, "a", 0)]
    saved = json.loads((results.save(tmp_path) / "manifest.json").read_text())
    assert saved["world_size"] == 1 and len(saved["images"]) == 3
    with pytest.raises(distributed.GenerationFailed, match=r"rank 0: job 1 \(seed 8\) raised ValueError: bad"):
        distributed.generate(
            world, all_jobs, lambda job: torch.zeros(1) if job.seed != 8 else _raise(ValueError("bad"))
        )


def _raise(error):
    raise error


def test_jobs_and_shards():
    all_jobs = distributed.jobs(["p"] * 7)
    assert [j.seed for j in all_jobs] == list(range(7))
    shares = [distributed.shard(all_jobs, rank, 3) for rank in range(3)]
    assert sorted(j.index for share in shares for j in share) == list(range(7))
    assert [len(share) for share in shares] == [3, 2, 2]
    with pytest.raises(ValueError, match="seeds: one per prompt \\(2\\), got 1"):
        distributed.jobs(["a", "b"], seeds=[1])
    with pytest.raises(ValueError, match="rank must be in \\[0, 3\\), got 3"):
        distributed.shard(all_jobs, 3, 3)

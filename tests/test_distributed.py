"""Sharded and distributed mining equal one process, exactly; merges are associative."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_deconvviz import MiningResult, mine_topk
from captum_deconvviz.zoo import ZFNetCIFAR, default_sample

LAYERS = ["features.1", "features.4", "features.9"]


def _assert_same(a: MiningResult, b: MiningResult) -> None:
    assert a.layers == b.layers and a.num_images == b.num_images
    for layer in a.layers:
        for c in range(a.channels(layer)):
            assert a.records(layer, c) == b.records(layer, c), f"{layer}[{c}]"
        sa, sb = a.stats(layer), b.stats(layer)
        for name in ("maximum", "mean", "fraction_active", "nan_count"):
            assert torch.equal(getattr(sa, name), getattr(sb, name)), f"{layer} {name}"


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return ZFNetCIFAR((12, 16, 16, 16)).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    sample = default_sample()
    return torch.stack([sample[(i * 7) % 1000][0] for i in range(120)])


@pytest.fixture(scope="module")
def whole(model: torch.nn.Module, images: torch.Tensor) -> MiningResult:
    return mine_topk(model, LAYERS, images, k=5, unique="none", progress=False)


@settings(max_examples=15, deadline=None)
@given(world=st.integers(2, 5), order=st.randoms(use_true_random=False))
def test_merge_of_shards_is_exact_associative_and_commutative(model, images, whole, world: int, order) -> None:
    shards = [
        mine_topk(model, LAYERS, images, k=5, unique="none", progress=False, shard=(r, world)) for r in range(world)
    ]
    shuffled = shards[:]
    order.shuffle(shuffled)
    _assert_same(MiningResult.merge(shuffled), whole)  # commutative: any order
    left = shuffled[0]
    for other in shuffled[1:]:
        left = left | other  # associative: pairwise from the left ...
    right = shuffled[-1]
    for other in reversed(shuffled[:-1]):
        right = other | right  # ... and from the right
    _assert_same(left, whole)
    _assert_same(right, whole)


def test_merge_refuses_mismatched_or_duplicate_shards(model, images) -> None:
    a = mine_topk(model, LAYERS, images, k=5, progress=False, shard=(0, 2))
    b = mine_topk(model, LAYERS, images, k=4, progress=False, shard=(1, 2))
    with pytest.raises(ValueError, match="differ in k"):
        a | b
    with pytest.raises(ValueError, match=r"results holds shard\(s\) \[0\] twice"):
        a | a
    c = mine_topk(model, LAYERS[:2], images, k=5, progress=False, shard=(1, 2))
    with pytest.raises(ValueError, match="differ in layers"):
        a | c
    with pytest.raises(ValueError, match="shard must be"):
        mine_topk(model, LAYERS, images, shard=(2, 2), progress=False)


SCRIPT = textwrap.dedent(
    """
    import os, sys, signal, torch, torch.distributed as dist
    from datetime import timedelta
    from captum_deconvviz import mine_topk
    from captum_deconvviz.zoo import ZFNetCIFAR, default_sample

    rank, world = int(sys.argv[1]), int(sys.argv[2])
    out, checkpoint, mode = sys.argv[3], sys.argv[4], sys.argv[5]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{sys.argv[6]}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    torch.manual_seed(0)
    model = ZFNetCIFAR((12, 16, 16, 16)).eval()
    sample = default_sample()
    images = torch.stack([sample[i][0] for i in range(500)])
    k = 5 if not (mode == "mismatch" and rank == 1) else 6
    if mode == "kill" and rank == 1:
        seen = [0]
        def die(_module, inputs, _output):
            if inputs[0].shape[0] == 40:  # a mining batch (shape inference runs on one image)
                seen[0] += 1
                if seen[0] == 3:
                    os.kill(os.getpid(), signal.SIGKILL)
        model.features[0].register_forward_hook(die)
    try:
        result = mine_topk(model, ["features.1", "features.4", "features.9"], images, k=k, batch_size=40,
                           progress=False, checkpoint=checkpoint, checkpoint_every=0)
    except ValueError as err:
        print("ERROR", err, flush=True)
        # Leave the group before exiting, as a user's script should: a rank that exits with the
        # group alive while its peer still holds it can make gloo abort the peer (SIGABRT).
        dist.destroy_process_group()
        sys.exit(3)
    if rank == 0:
        result.save(out)
    dist.destroy_process_group()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world: int, tmp: Path, mode: str, tag: str) -> list[subprocess.CompletedProcess]:
    script = tmp / "rank.py"
    script.write_text(SCRIPT)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(r),
                str(world),
                str(tmp / f"{tag}.pt"),
                str(tmp / "state.pt"),
                mode,
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.fixture(scope="module")
def single_500() -> MiningResult:
    torch.manual_seed(0)
    model = ZFNetCIFAR((12, 16, 16, 16)).eval()
    sample = default_sample()
    images = torch.stack([sample[i][0] for i in range(500)])
    return mine_topk(model, ["features.1", "features.4", "features.9"], images, k=5, batch_size=40, progress=False)


@pytest.mark.parametrize("world", [2, 3])
def test_gloo_processes_equal_one_process(world: int, tmp_path: Path, single_500: MiningResult) -> None:
    runs = _launch(world, tmp_path, "plain", "dist")
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    _assert_same(MiningResult.load(tmp_path / "dist.pt"), single_500)
    assert sorted(p.name for p in tmp_path.glob("state.rank*")) == [
        f"state.rank{r}-of-{world}.pt" for r in range(world)
    ]


def test_killed_rank_resumes_and_the_result_is_identical(tmp_path: Path, single_500: MiningResult) -> None:
    runs = _launch(2, tmp_path, "kill", "killed")
    assert runs[1].returncode == -9  # rank 1 was killed midway
    assert runs[0].returncode != 0  # rank 0 cannot finish its collectives: an error after the timeout, no hang
    assert (tmp_path / "state.rank1-of-2.pt").exists()
    runs = _launch(2, tmp_path, "plain", "resumed")
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    _assert_same(MiningResult.load(tmp_path / "resumed.pt"), single_500)


def test_mismatched_arguments_give_a_clear_error(tmp_path: Path) -> None:
    runs = _launch(2, tmp_path, "mismatch", "mismatch")
    assert [run.returncode for run in runs] == [3, 3], [run.stderr[-2000:] for run in runs]
    assert all("different mining arguments (k)" in run.stdout for run in runs)


def test_cli_under_torchrun_reports_mismatched_ranks_and_leaves_the_group(tmp_path: Path) -> None:
    # What torchrun sets; rank 1 asks for another k. Both ranks must exit with the CLI's one-line
    # error (status 2), not a SIGABRT from gloo after the other rank left with its group alive.
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}  # fmt: skip
        command = [sys.executable, "-m", "captum_deconvviz.cli", "mine", "--model", "default", "--data",
                   "default-sample", "--limit", "80", "--layers", "features.1", "--k", str(3 + rank),
                   "--out", str(tmp_path / f"r{rank}.pt")]  # fmt: skip
        procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    runs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [2, 2], [err[-2000:] for _, err in runs]
    assert all("different mining arguments (k)" in err for _, err in runs)
    assert not list(tmp_path.glob("*.pt"))

"""Mining throughput with 1, 2 and 4 processes (torch.distributed, gloo on loopback).

Each process mines its shard (every world_size-th image) of the same data with the
default model's architecture, then all processes all-gather and merge their states.
Processes share the machine's cores: each gets cores / processes threads.

Usage:
    python benchmarks/bench_scale.py [--images 4000] [--processes 1 2 4]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

WORKER = textwrap.dedent(
    """
    import sys, time, torch, torch.distributed as dist
    from datetime import timedelta
    from captum_deconvviz import mine_topk
    from captum_deconvviz.data import ZipImages, find_cifar10
    from captum_deconvviz.zoo import ZFNetCIFAR, default_transform
    rank, world, port, count = (int(v) for v in sys.argv[1:5])
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(minutes=10))
    torch.manual_seed(0)
    model = ZFNetCIFAR((64, 128, 256, 256)).eval()
    data = ZipImages(find_cifar10() / "test.zip", transform=default_transform(), limit=count)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    result = mine_topk(model, ["features.1", "features.4", "features.7", "features.9"], data, k=9,
                       batch_size=64, progress=False)
    if rank == 0:
        print(time.perf_counter() - start, result.num_images, flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, images: int, cores: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as handle:
            handle.write(WORKER)
        threads = max(1, cores // world)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        port = free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, script, str(r), str(world), str(port), str(images)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for r in range(world)
        ]
        outputs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise RuntimeError(f"a worker failed with {[p.returncode for p in procs]}")
        seconds, mined = outputs[0].split()
        assert int(mined) == images
        return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"# bench_scale: {args.images} CIFAR-10 images, W1 net (4 layers, k=9), {args.cores} cores\n")
    print("| processes | threads each | seconds (mining + merge) | images/s | speed-up |\n|---|---|---|---|---|")
    base = None
    for world in args.processes:
        seconds = run(world, args.images, args.cores)
        rate = args.images / seconds
        base = base or rate
        print(f"| {world} | {max(1, args.cores // world)} | {seconds:.2f} | {rate:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()

"""CUDA checks and GPU figures, in one short run for a lent GPU machine.

What it checks, each against the CPU computation of the same thing:

1. ``mine_topk`` on the GPU (the default model, the shipped 1,000-image sample) gives the
   same records as on the CPU, and its loop makes no host synchronisation per batch
   (``torch.cuda.set_sync_debug_mode("warn")`` counts them while mining).
2. ``project_units`` and ``MiningResult.projections`` on the GPU equal the CPU's
   (TF32 off, relative tolerance 1e-4).
3. ``ZFDeconvolution`` on VGG16 equals the CPU's; the receptive-field analysis and the
   probe run with the model on the GPU.
4. The paths users call with a GPU model and CPU data (the result's projections and verify,
   diagnose, compare_methods with its table and figure, write_report, write_explorer, and
   ``deconvviz report --device cuda``): each gives "ok" or the error it raised.

Then it times, on the GPU: mining the sample, and mining + projecting random 224 px
batches through VGG16 and ResNet-50, against a plain forward of the same batches.

Usage (on the GPU machine, from the repo root):
    python benchmarks/gpu_check.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from captum_deconvviz import ZFDeconvolution, mine_topk, project_units, receptive_field
from captum_deconvviz.compare import compare_methods
from captum_deconvviz.diagnose import diagnose
from captum_deconvviz.explorer import write_explorer
from captum_deconvviz.report import write_report
from captum_deconvviz.viz import plot_comparison, plot_diagnosis
from captum_deconvviz.zoo import default_sample, load_default_model


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error in the max norm."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def check_default_model(report: dict) -> None:
    sample = default_sample()
    images = torch.stack([sample[i][0] for i in range(len(sample))])
    model = load_default_model().eval()
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    layers = [convs[1], convs[3]]
    cpu = mine_topk(model, layers, images, k=9, progress=False, batch_size=100)
    gpu_model = load_default_model().eval().cuda()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            gpu = mine_topk(gpu_model, layers, images, k=9, progress=False, batch_size=100, device="cuda")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()]
    same = all(
        [(r.index, r.y, r.x) for r in cpu.records(layer, c)] == [(r.index, r.y, r.x) for r in gpu.records(layer, c)]
        for layer in layers
        for c in range(len(cpu.stats(layer).maximum))
    )
    report["mining_records_equal_cpu"] = same
    report["mining_sync_warnings"] = len(syncs)
    report["mining_sync_examples"] = sorted(set(syncs))[:5]
    proj_cpu = cpu.projections(model, images, layers[1], 3).images
    proj_gpu = gpu.projections(gpu_model, images, layers[1], 3).images
    report["projections_rel_err"] = _close(proj_gpu.cpu(), proj_cpu)
    report["mine_sample_gpu_s"] = _timed(
        lambda: mine_topk(gpu_model, layers, images, k=9, progress=False, batch_size=250, device="cuda"), 2
    )


def check_imagenet_models(report: dict) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 224, 224, generator=gen)
    vgg = torchvision.models.vgg16().eval()
    attr_cpu = ZFDeconvolution(vgg).attribute(x[:4], target=3)
    vgg_gpu = torchvision.models.vgg16().eval()
    vgg_gpu.load_state_dict(vgg.state_dict())
    vgg_gpu = vgg_gpu.cuda()
    attr_gpu = ZFDeconvolution(vgg_gpu).attribute(x[:4].cuda(), target=3)
    report["vgg16_zf_rel_err"] = _close(attr_gpu.cpu(), attr_cpu)
    units = torch.tensor([[5, 10, 10], [17, 3, 20], [100, 27, 27], [0, 0, 0]])
    proj_cpu = project_units(vgg, "features.16", x[:4], units)
    proj_gpu = project_units(vgg_gpu, "features.16", x[:4].cuda(), units.cuda())
    report["vgg16_project_units_rel_err"] = _close(proj_gpu.cpu(), proj_cpu)
    rf = receptive_field(vgg_gpu, "features.30", (3, 224, 224), verify=True)
    report["vgg16_pool5_rf_on_gpu"] = [rf.size, rf.stride, rf.offset]
    for name, model in (("vgg16", vgg_gpu), ("resnet50", torchvision.models.resnet50().eval().cuda())):
        layer = "features.23" if name == "vgg16" else "layer3"
        data = x.cuda()

        def forward(model: torch.nn.Module = model, data: torch.Tensor = data) -> None:
            with torch.no_grad():
                for _ in range(4):
                    model(data)

        def mine(model: torch.nn.Module = model, layer: str = layer) -> None:
            mine_topk(model, [layer], x.repeat(4, 1, 1, 1), k=9, progress=False, batch_size=32, device="cuda")

        report[f"{name}_forward_128_s"] = _timed(forward)
        report[f"{name}_mine_128_s"] = _timed(mine)
        report[f"{name}_mining_over_forward"] = report[f"{name}_mine_128_s"] / report[f"{name}_forward_128_s"]


def check_user_paths(report: dict, out: Path, device: str = "cuda") -> None:
    """What users call with a GPU model and CPU data (as datasets yield): each path's error, if any.

    The result's projections, verify, diagnose, compare_methods (maps on the GPU; table and figure),
    write_report and write_explorer, and ``deconvviz report --device cuda`` with and without ``--static``.
    """
    sample = default_sample()
    images = torch.stack([sample[i][0] for i in range(200)])
    model = load_default_model().eval().to(device)
    convs = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    result = mine_topk(model, convs[:2], images, k=4, progress=False, batch_size=100, device=device)
    cpu_model = load_default_model().eval()

    def attempt(name: str, call: Callable[[], object]) -> None:
        try:
            call()
            report[f"path_{name}"] = "ok"
        except Exception as err:  # recorded; the next path still runs
            report[f"path_{name}"] = f"{type(err).__name__}: {err}"[:300]

    def projections_equal_cpu() -> None:
        gpu = result.projections(model, images, convs[1], [0, 1]).images
        cpu = result.projections(cpu_model, images, convs[1], [0, 1]).images
        report["path_projections_rel_err"] = _close(gpu, cpu)

    def comparison() -> None:
        compared = compare_methods(model, images[:4].to(device), target=[0, 1, 2, 3])
        compared.table()
        plot_comparison(compared, use_pyplot=False)

    attempt("projections", projections_equal_cpu)
    attempt("verify", lambda: result.verify(model, images))
    attempt("diagnose", lambda: plot_diagnosis(diagnose(model, images, result=result, progress=False)))
    attempt("compare", comparison)
    attempt("write_report", lambda: write_report(out / "report", model, images, result))
    attempt("write_explorer", lambda: write_explorer(out / "explorer", model, images, result))
    for static in ([], ["--static"]):
        command = ["deconvviz", "report", "--limit", "200", "--k", "4", "--device", device, "--out",
                   str(out / f"cli{'-static' * bool(static)}"), *static]  # fmt: skip
        run = subprocess.run(command, capture_output=True, text=True, check=False)
        report[f"path_cli_report{'_static' * bool(static)}"] = "ok" if run.returncode == 0 else run.stderr[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run this on a GPU machine")
    torch.backends.cuda.matmul.allow_tf32 = False  # compare exact float32 arithmetic with the CPU
    torch.backends.cudnn.allow_tf32 = False
    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    check_default_model(report)
    check_imagenet_models(report)
    with tempfile.TemporaryDirectory() as folder:
        check_user_paths(report, Path(folder))
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()

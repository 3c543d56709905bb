"""The zoo sweep: every torchvision ConvNet and 59 timm CNNs, each operation against an oracle.

For each model (random init, seed 0, eval mode, nothing downloaded) it checks, as
``tests/sweep_checks.py`` describes: ``ZFDeconvolution`` against zennit's DeconvNet;
the receptive field of an early, a middle and the last stage output (and single
channels of a concatenation) against the gradient probe, with global statistics and
gates (``global_via``) open and detached; a verified ``mine_topk`` run with patches and
projections. A model is "supported" when every check passes, "refused" when the package
raised a clear error, "FAILED" on a wrong field, a wrong attribution, or an exception
from inside torch/numpy; "incomplete" when checks were skipped because the installed
package lacks part of issue 12's API. The CI subset is ``tests/test_architecture_sweep.py``.

Profiles: full (160 px; 3 layers, 6 units, 3 channels, 2 mined layers; ~15-40 min on
one core, depending on load), ``--quick`` (64 px, 96 for Inception and NASNet; 4 units,
2 channels, one mined layer; ~8 min), ``--ci`` (the CI profile: quick with 2 layers).

Usage:
    python benchmarks/architecture_sweep.py [--quick | --ci] [--timm-only | --torchvision-only]
        [--models resnet26d,tv/resnet18] [--size 97] [--out sweep.md] [--threads 1] [--timeout 900]

Model names are timm's; torchvision models are prefixed ``tv/`` (``--list`` prints all).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import sweep_checks as sc  # tests/ is put on the path just above


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (0: no limit)."""
    if seconds <= 0 or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(_signum: int, _frame: object) -> None:
        raise TimeoutError(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(spec: sc.ModelSpec, profile: sc.Profile, timeout: int) -> sc.ModelReport:
    """:func:`sweep_checks.run_model` under a time limit (a timeout is a failure)."""
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            return sc.run_model(spec, profile)
    except TimeoutError as err:
        size = profile.input_size(spec)
        report = sc.ModelReport(spec.name, spec.family, spec.source, size, error=f"timeout: {err}")
        report.seconds = time.perf_counter() - start
        return report


def cell(text: str, limit: int = 160) -> str:
    """Markdown-safe table cell, shortened to ``limit`` characters."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


HEADER = (
    "model",
    "family",
    "input",
    "attribution rel. err",
    "RF passed",
    "first RF disagreement",
    "global_via seen",
    "mining",
    "build / fwd s",
    "s",
    "status",
    "notes",
)


def global_reasons(report: sc.ModelReport) -> str:
    """The ``global_via`` reasons seen, grouped by kind: ``"GroupNorm statistics (53: bn1, ...)"``."""
    where: dict[str, list[str]] = {}
    for outcome in report.fields:
        for reason in outcome.global_via or ():
            kind, _, place = reason.partition(" at ")
            if place not in where.setdefault(kind, []):
                where[kind].append(place)
    if not where and any(o.global_via is None for o in report.fields if o.kind == sc.PASS):
        return "n/a (not in the API)"
    return "; ".join(
        f"{kind} ({len(places)}: {', '.join(places[:2])}{', ...' if len(places) > 2 else ''})"
        for kind, places in where.items()
    )


def row(report: sc.ModelReport) -> list[str]:
    """One Markdown table row."""
    attr = report.attribution
    if attr is None:
        attribution = "-"
    elif attr.value is not None:
        attribution = f"{attr.value:.1e}" + ("" if attr.kind == sc.PASS else f" ({attr.kind})")
    else:
        attribution = attr.kind
    passed = sum(o.kind == sc.PASS for o in report.fields)
    bad = next((o for o in report.fields if o.kind != sc.PASS), None)
    reasons = global_reasons(report)
    mining = "-" if report.mining is None else report.mining.kind
    notes = [text for text in (report.not_run, report.error) if text]
    notes += [o.note for o in report.outcomes() if o.note]
    notes += [sc.describe(o) for o in (attr, report.mining) if o is not None and o.kind != sc.PASS]
    return [
        f"`{report.key}`",
        report.family,
        str(report.size),
        attribution,
        f"{passed}/{len(report.fields)}",
        cell(sc.describe(bad)) if bad else "",
        cell(reasons, 200),
        mining,
        f"{report.build_s:.1f} / {report.forward_s:.2f}",
        f"{report.seconds:.0f}",
        report.status,
        cell("; ".join(dict.fromkeys(notes)), 300),
    ]


def table(reports: Sequence[sc.ModelReport]) -> str:
    """The Markdown table of all reports."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in reports]
    return "\n".join(lines)


def summary(reports: Sequence[sc.ModelReport], seconds: float) -> str:
    """Counts: supported fraction, silently wrong fields, failures, attribution results."""
    n = len(reports)
    by_status: dict[str, list[str]] = {}
    for r in reports:
        by_status.setdefault(r.status, []).append(r.key)
    supported = len(by_status.get("supported", []))
    not_run = len(by_status.get("not run", []))
    wrong_models = [r.key for r in reports if r.silently_wrong]
    bound_models = [r.key for r in reports if any(o.bound for o in r.fields)]
    checks = [o for r in reports for o in r.fields]
    attr = [r.attribution for r in reports if r.attribution is not None]
    inside = sum(o.kind == sc.FAILED for r in reports for o in r.outcomes()) + sum(bool(r.error) for r in reports)
    lines = [
        f"- models: {n} ({sum(r.source == 'torchvision' for r in reports)} torchvision, "
        f"{sum(r.source == 'timm' for r in reports)} timm)",
        f"- supported: {supported}/{n} ({100 * supported / max(n, 1):.0f}%)"
        + (f", {supported}/{n - not_run} of the models that run at this size" if not_run else "")
        + "".join(f"; {k}: {len(v)}" for k, v in sorted(by_status.items()) if k != "supported"),
        f"- silently wrong fields: {sum(o.kind == sc.WRONG for o in checks)} checks in {len(wrong_models)} models"
        + (f" ({', '.join(wrong_models)})" if wrong_models else ""),
        f"- receptive-field checks: {sum(o.kind == sc.PASS for o in checks)}/{len(checks)} passed, "
        + ", ".join(f"{sum(o.kind == k for o in checks)} {k}" for k in (sc.WRONG, sc.FAILED, sc.REFUSED, sc.SKIPPED)),
        f"- fields given as a documented bound (checked by containment, not equality): "
        f"{sum(o.bound for o in checks)} checks in {len(bound_models)} models"
        + (f" ({', '.join(bound_models)})" if bound_models else ""),
        f"- exceptions from inside torch/numpy/timm (failures): {inside}",
        f"- attribution vs zennit: {sum(o.kind == sc.PASS for o in attr)}/{len(attr)} within {sc.REL_TOL:g}, "
        f"{sum(o.kind == sc.DIFFERS for o in attr)} documented differences, "
        f"{sum(o.kind == sc.WRONG for o in attr)} wrong, {sum(o.kind in (sc.FAILED, sc.REFUSED) for o in attr)} errors",
        f"- mining: {sum(r.mining is not None and r.mining.kind == sc.PASS for r in reports)}/{n} ok",
        "- issue-12 API present: " + ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in sc.NEW_API.items()),
        f"- wall time: {seconds / 60:.1f} min",
    ]
    for status in ("FAILED", "refused", "incomplete", "not run"):
        for r in reports:
            if r.status == status:
                problem = r.first_problem()
                text = r.not_run or r.error or (sc.describe(problem) if problem else "")
                lines.append(f"  - {status} `{r.key}`: {cell(text, 240)}")
    return "\n".join(lines)


def select(args: argparse.Namespace) -> list[sc.ModelSpec]:
    """The models the arguments ask for, in table order (torchvision first)."""
    specs = [*sc.TORCHVISION, *sc.TIMM]
    if args.timm_only:
        specs = list(sc.TIMM)
    if args.torchvision_only:
        specs = list(sc.TORCHVISION)
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in sc.MODELS]
        if unknown:
            raise SystemExit(f"unknown models {unknown}; see --list")
        chosen = {id(sc.MODELS[m]) for m in wanted}
        specs = [s for s in specs if id(s) in chosen]
    return specs


def main(argv: Sequence[str] | None = None) -> None:
    """Run the sweep and print (and optionally write) the table and its summary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated subset (timm names; tv/NAME for torchvision)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--timm-only", action="store_true")
    group.add_argument("--torchvision-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small inputs, fewer units and channels")
    parser.add_argument("--ci", action="store_true", help="the CI profile (two layers, small inputs)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the CPU is shared)")
    parser.add_argument("--size", type=int, help="input side for every model (odd sizes test borders)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model before it counts as FAILED")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for key, spec in sc.MODELS.items():
            print(f"{key:36s} {spec.family:40s} {spec.size} / {spec.small} px")
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    profile = sc.PROFILES["ci" if args.ci else "quick" if args.quick else "full"]
    if args.size:
        profile = dataclasses.replace(profile, size=args.size)
    specs = select(args)
    start = time.perf_counter()
    reports = []
    for i, spec in enumerate(specs, 1):
        report = run(spec, profile, args.timeout)
        reports.append(report)
        problem = report.first_problem()
        print(
            f"[{i}/{len(specs)}] {report.key}: {report.status} in {report.seconds:.0f} s"
            + (f" ({cell(report.error or sc.describe(problem), 200)})" if problem or report.error else ""),
            file=sys.stderr,
            flush=True,
        )
    seconds = time.perf_counter() - start
    import timm
    import torchvision

    text = "\n".join(
        [
            f"# Architecture sweep ({profile.name} profile), {datetime.date.today()}",
            "",
            f"Command: `python benchmarks/architecture_sweep.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
            f"torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
            f"{torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}",
            "",
            "## Summary",
            "",
            summary(reports, seconds),
            "",
            "## Models",
            "",
            table(reports),
            "",
        ]
    )
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

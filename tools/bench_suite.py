"""Benchmark (not a test): the generalisation suite converted with default options.

The suite (``models/suite/``, written by ``tools/make_suite.py``) holds small
classifiers trained and exported the way independent users would, with recipes
nobody tuned the converter for. The fine-tuning recipe is judged on the suite as
a whole: the mean and the worst loss in points between the original model and
its spiking network, per data set, against issue 12's targets (mean <= 0.5;
worst <= 1.0 on MNIST models, 2000 test images; worst <= 1.5 on digits models,
360 test images).

    python tools/bench_suite.py [--models a,b] [--effort quick|default|thorough]
                                [--seed N] [--json FILE [--append]] [--markdown FILE]
                                [--baseline FILE] [--title TEXT]

Each model is converted in this process through ``api.convert`` with only its
manifest's data and normalisation (so every other option is the default), and
its rows are printed as they finish. ``--json`` writes the rows; ``--markdown``
writes the table and the summary (``docs/suite.md``). ``--baseline`` adds the
columns of an earlier run's JSON (for instance one made by the previous version
of the converter, ``PYTHONPATH=<old checkout> python tools/bench_suite.py``) so
the page shows accuracy and conversion time before and after.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "models" / "suite" / "suite.toml"
# Issue 12's targets, in points of accuracy lost.
MEAN_TARGET = 0.5
WORST_TARGET = {"mnist": 1.0, "digits": 1.5}


def data_family(spec: str) -> str:
    return "mnist" if spec.startswith("mnist") else spec.split(":")[0]


def resolve_data(spec: str, base_dir: Path) -> str:
    """A manifest's data spec with its path made absolute (manifest paths are relative to it)."""
    kind, _, where = spec.partition(":")
    return spec if not where or Path(where).is_absolute() else f"{kind}:{(base_dir / where).resolve()}"


def finetune_overrides(pairs: list[str]) -> dict:
    """``NAME=VALUE`` pairs as FinetuneOptions fields, each value parsed as its default's type."""
    from dataclasses import fields

    from whetstone_onnx.api import FinetuneOptions

    known = {f.name: f.default for f in fields(FinetuneOptions)}
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in known:
            raise SystemExit(f"--set {pair}: no FinetuneOptions field {name!r}")
        default = known[name]
        kind = type(default) if default is not None else (float if "." in value else int)
        overrides[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return overrides


def run_model(model, base_dir: Path, effort: str | None, seed: int, overrides: dict | None = None,
              output: str = "auto", history: bool = False) -> dict:
    """One model's row; a model that does not convert gets its one-line error instead of figures.
    ``history``: the row also holds the fine-tuning history and validation summary (to study how
    the epoch kept is chosen)."""
    from whetstone_onnx import api
    from whetstone_onnx.errors import WhetstoneError

    options = model.options
    finetune = api.FinetuneOptions(effort=effort or "default", seed=seed, **(overrides or {}))
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as out_dir:     # the whole convert, artifacts included
        start = time.perf_counter()
        try:
            result = api.convert(base_dir / model.path, out_dir, data=resolve_data(options["data"], base_dir),
                                 normalize=tuple(options["normalize"]) if options["normalize"] else None,
                                 seed=seed, finetune=finetune, output=output, progress=False)
        except WhetstoneError as exc:
            return {"model": model.name, "data": data_family(options["data"]), "error": exc.message}
        wall = time.perf_counter() - start
    report = result.report
    accuracy = report["accuracy"]
    return {"model": model.name, "data": data_family(options["data"]),
            "original": round(100 * accuracy["original"], 2),
            "sharpness_0": round(100 * accuracy["sharpenable_start"], 2),
            "spiking": round(100 * accuracy["spiking"], 2),
            "loss": round(100 * (accuracy["original"] - accuracy["spiking"]), 2),
            "output": report["output_stage"]["written"], "wall_s": round(wall, 1),
            "passed": report["passed"], **finetune_columns(report, history)}


def finetune_columns(report: dict, history: bool = False) -> dict:
    """A conversion report's fine-tuning figures for a benchmark row: the epochs run, the epoch kept,
    its validation score, the levels (and those tried) and the time; ``history``: the per-epoch history
    and validation summary too."""
    tuned = report["finetune"]
    validation = tuned.get("validation") or {}
    tried = (report.get("levels") or {}).get("tried", [])
    return {"epochs_run": len(tuned.get("history", [])), "kept_epoch": validation.get("kept_epoch"),
            "validation": validation.get("accuracy"), "levels": report["options"]["levels"],
            "levels_tried": {entry["levels"]: entry["validation_accuracy"] for entry in tried},
            "finetune_s": round(report["timings_s"].get("finetune", 0.0), 1),
            **({"history": tuned.get("history"), "validation_summary": validation} if history else {})}


def summarise(rows: list[dict]) -> dict:
    """Mean and worst loss per data set and overall, over the models that converted."""
    summary = {}
    for family in sorted({row["data"] for row in rows}) + ["all"]:
        members = [row for row in rows if family in ("all", row["data"])]
        converted = [row for row in members if "error" not in row]
        losses = [row["loss"] for row in converted]
        summary[family] = {"models": len(members), "failed": len(members) - len(converted),
                           "mean_loss": round(statistics.mean(losses), 2) if losses else None,
                           "worst_loss": round(max(losses), 2) if losses else None,
                           "total_wall_s": round(sum(r["wall_s"] for r in converted), 1)}
    summary["targets_met"] = summary["all"]["failed"] == 0 and summary["all"]["mean_loss"] <= MEAN_TARGET and all(
        summary[f]["worst_loss"] <= WORST_TARGET.get(f, WORST_TARGET["mnist"]) for f in summary if f not in
        ("all", "targets_met"))
    return summary


def points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def markdown(rows: list[dict], summary: dict, baseline: list[dict] | None, title: str, effort: str | None) -> str:
    before = {row["model"]: row for row in baseline or []}
    lines = [f"# {title}", "",
             f"Measured {date.today().isoformat()} on {platform.machine()} ({_cores()} cores), Python "
             f"{platform.python_version()}, with `python tools/bench_suite.py` "
             f"({'default options' if effort is None else f'--effort {effort}'}). "
             "Loss = original - spiking, in points, on the held-out split (digits: 360 images, "
             "MNIST: images 8000-9999). The models and their recipes: `models/suite/README.md`.", "",
             "| model | data | original % | sharpness 0 % | spiking % | loss | output | levels | epochs run (kept) | "
             "time s |" + (" before: spiking % | before: loss | before: time s |" if before else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if before else "")]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | {row['data']} | did not convert: {row['error']} |")
            continue
        kept = "" if row["kept_epoch"] is None else f" ({row['kept_epoch']})"
        cells = [row["model"], row["data"], f"{row['original']:.2f}", f"{row['sharpness_0']:.2f}",
                 f"{row['spiking']:.2f}", f"{row['loss']:+.2f}", row.get("output", "nhot"), _levels(row),
                 f"{row['epochs_run']}{kept}",
                 f"{row['wall_s']:.0f}"]
        if before:
            old = before.get(row["model"])
            cells += ["-", "-", "-"] if old is None or "error" in old else \
                [f"{old['spiking']:.2f}", f"{old['loss']:+.2f}", f"{old['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| data | models | mean loss | worst loss | target (mean / worst) | total time s |"
              + (" before: mean / worst loss | before: total time s |" if before else ""),
              "|---|---|---|---|---|---|" + ("---|---|" if before else "")]
    old_summary = summarise([r for r in baseline if r["model"] in {row["model"] for row in rows}]) if before else {}
    for family, values in summary.items():
        if family == "targets_met":
            continue
        target = f"{MEAN_TARGET} / {WORST_TARGET.get(family, '-')}" if family != "all" else f"{MEAN_TARGET} / -"
        failed = f" ({values['failed']} did not convert)" if values["failed"] else ""
        cells = [family, f"{values['models']}{failed}", points(values['mean_loss']), points(values['worst_loss']), target,
                 f"{values['total_wall_s']:.0f}"]
        if before:
            old = old_summary.get(family)
            cells += ["-", "-"] if old is None else [f"{points(old['mean_loss'])} / {points(old['worst_loss'])}",
                                                     f"{old['total_wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Targets met: {'yes' if summary['targets_met'] else 'no'}.", ""]
    return "\n".join(lines)


def _levels(row: dict) -> str:
    """The levels written, and those tried with their held-out scores when there were several."""
    tried = row.get("levels_tried") or {}
    if len(tried) < 2:
        return str(row.get("levels", 1))
    scores = ", ".join(f"{levels}: {100 * score:.1f}" for levels, score in tried.items())
    return f"{row['levels']} (held-out % {scores})"


def _cores() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=SUITE)
    parser.add_argument("--models", help="comma-separated subset of the manifest's model names")
    parser.add_argument("--effort", choices=("quick", "default", "thorough"),
                        help="FinetuneOptions.effort (default: the converter's defaults, untouched)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a FinetuneOptions field to change, for experiments (repeatable)")
    parser.add_argument("--output", default="auto", help="convert's output stage (auto, nhot, readout)")
    parser.add_argument("--json", type=Path, help="write the rows and the summary here (after every model)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows --json already holds and run only the models it lacks")
    parser.add_argument("--history", action="store_true",
                        help="keep each model's fine-tuning history and validation summary in --json")
    parser.add_argument("--markdown", type=Path, help="write the table here (docs/suite.md)")
    parser.add_argument("--baseline", type=Path, help="an earlier run's --json, shown beside this one")
    parser.add_argument("--title", default="Generalisation suite: default options")
    args = parser.parse_args()
    from whetstone_onnx import zoo

    manifest = zoo.read_manifest(args.manifest)
    models = manifest.models
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - {m.name for m in models})
        if unknown:
            parser.error(f"unknown models: {', '.join(unknown)}")
        models = [m for m in models if m.name in wanted]
    rows = json.loads(args.json.read_text())["rows"] if args.append and args.json and args.json.exists() else []
    models = [m for m in models if m.name not in {row["model"] for row in rows}]
    print(f"{'model':<36}{'data':<8}{'original':>10}{'sharp 0':>9}{'spiking':>9}{'loss':>7}{'output':>9}{'epochs':>8}"
          f"{'time s':>8}", flush=True)
    for model in models:
        row = run_model(model, manifest.base_dir, args.effort, args.seed, finetune_overrides(args.set), args.output,
                        args.history)
        rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "summary": summarise(rows), "effort": args.effort,
                                             "seed": args.seed, "set": args.set, "output": args.output},
                                            indent=2) + "\n")
        if "error" in row:
            print(f"{row['model']:<36}{row['data']:<8}did not convert: {row['error']}", flush=True)
            continue
        print(f"{row['model']:<36}{row['data']:<8}{row['original']:>10.2f}{row['sharpness_0']:>9.2f}"
              f"{row['spiking']:>9.2f}{row['loss']:>+7.2f}{row['output']:>9}{row['epochs_run']:>8}{row['wall_s']:>8.0f}",
              flush=True)
    summary = summarise(rows)
    for family, values in summary.items():
        if family != "targets_met":
            print(f"{family}: {values['models']} models ({values['failed']} did not convert), mean loss {points(values['mean_loss'])}, worst "
                  f"{points(values['worst_loss'])}, {values['total_wall_s']:.0f} s")
    print(f"targets met: {'yes' if summary['targets_met'] else 'no'}")
    if args.markdown:
        baseline = json.loads(args.baseline.read_text())["rows"] if args.baseline else None
        args.markdown.write_text(markdown(rows, summary, baseline, args.title, args.effort))


if __name__ == "__main__":
    main()

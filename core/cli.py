"""Command line: ``python -m core {prepare,list,check,presets,info,serve,train,bench}``.

Errors a user can fix (bad config, data, checkpoint, store) print one clear line and exit 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from core.attacks import ATTACKS
from core.config import ExperimentConfig
from core.data import DataWarning
from core.jobs import USER_ERRORS  # the errors a user can fix: one line, exit 2
from core.store import StoreError, cache_dir, list_stores, open_store, summary_row, validate_id


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one-line errors (no usage block): ``error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m core", description=__doc__.splitlines()[0])
    p.add_argument("--cache", default=str(cache_dir()), help="folder of experiment stores")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("prepare", help="attack a dataset and write an experiment store",
                        epilog=_attacks_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--preset", help="a named config (see `python -m core presets`)")
    src.add_argument("--config", help="a TOML config file")
    pr.add_argument("--out", help="experiment id (default: the preset or config file name)")
    pr.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config value, e.g. --set data.per_class=50 (repeatable)")
    pr.add_argument("--attack", choices=list(ATTACKS), help="the attack method (sets [attack] method; "
                    "its parameters keep the preset's or config's values: change them with --set attack.KEY="
                    "VALUE, listed below)")
    pr.add_argument("--cache", default=argparse.SUPPRESS, help="folder of experiment stores (may also "
                    "come before the command)")
    pr.add_argument("--force", action="store_true", help="replace an existing experiment")
    pr.add_argument("--if-missing", action="store_true",
                    help="do nothing when the experiment already exists (used by `make run`)")
    pr.add_argument("--quiet", action="store_true", help="no progress bars")
    pr.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="shard the attack, features and maps over a Ray cluster (ADDRESS: auto, "
                         "ray://host:10001; none: a local Ray instance); see core/distributed.py")
    pr.add_argument("--ray-workers", type=int, default=None, help="Ray workers (default: one per GPU, "
                    "else one per --ray-cpus-per-worker CPUs)")
    pr.add_argument("--ray-cpus-per-worker", type=int, default=1)

    sub.add_parser("list", help="list experiments in the cache")
    ck = sub.add_parser("check", help="check an experiment store's integrity (exit 0 sound, 1 damaged)")
    ck.add_argument("id", nargs="?", help="the experiment to check")
    ck.add_argument("--all", action="store_true", help="check every experiment in the cache")
    sub.add_parser("presets", help="list the named configs")
    info = sub.add_parser("info", help="show an experiment's manifest")
    info.add_argument("id")
    info.add_argument("--json", action="store_true")
    sv = sub.add_parser("serve", help="open the app on an experiment: check it, print its address, run "
                        "streamlit on app.py (Ctrl-C stops it)")
    sv.add_argument("id", help="the experiment (`python -m core list`)")
    sv.add_argument("--port", type=int, default=8501)
    sv.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine "
                    "only; 0.0.0.0 for every interface, as `make run`)")
    tr = sub.add_parser("train", help="train a preset's model (the shipped demo model, or the cifar10-224 "
                        "linear head)")
    tr.add_argument("--preset", default="demo", choices=["demo", "cifar10-224"])
    tr.add_argument("--epochs", type=int, default=6)
    be = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    be.add_argument("what", choices=["attack", "analytics", "app", "scale"])
    be.add_argument("--images", type=int, default=8200, help="attack: how many CIFAR test images to attack")
    be.add_argument("--experiment", default="cifar10-resnet18",
                    help="analytics: the store to time per-pair analytics and fidelity on; app: the store "
                         "the app walks through")
    be.add_argument("--pairs", type=int, default=3,
                    help="analytics: lossless images for map speed and agreement")
    be.add_argument("--fidelity-pairs", type=int, default=10,
                    help="analytics: store pairs for the stride fidelity")
    be.add_argument("--walks", type=int, default=10,
                    help="app: timed walks of the §6.1.2 case study (plus one uncounted warm-up)")
    be.add_argument("--json", action="store_true")

    args = p.parse_args(argv)
    try:
        with warnings.catch_warnings():  # prepare logs what the data scan noted: no duplicate warnings
            warnings.simplefilter("ignore", DataWarning)
            return _run(args)
    except USER_ERRORS as e:
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)  # one line, whatever the message held
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was published; run the same command again to resume",
              file=sys.stderr)
        return 130


def _attacks_help() -> str:
    """``prepare --help``'s list of the registered attacks and their [attack] keys."""
    import textwrap
    lines = ["attacks (--attack NAME, or --set attack.method=NAME) and their parameters",
             "(--set attack.KEY=VALUE; a config file that leaves a key out gets the attack's default):"]
    for a in ATTACKS.values():
        lines += textwrap.wrap(f"{a.name}: {a.label}. {a.help}", 100, initial_indent="  ",
                               subsequent_indent="    ")
        for p in a.params.values():
            if callable(p.default):  # derived from the other parameters: its note says how
                default = ""
            else:
                default = f" (default {str(p.default).lower() if p.kind is bool else f'{p.default:.4g}'})"
            lines += textwrap.wrap(f"{p.name}{default}: {p.expected}", 100, initial_indent="    ",
                                   subsequent_indent="      ")
    return "\n".join(lines)


def _run(args) -> int:
    from core.presets import PRESETS, apply_override, preset
    cache = Path(args.cache)
    if args.command == "prepare":
        from core.pipeline import prepare
        overrides = ([f"attack.method={json.dumps(args.attack)}"] if args.attack else []) + args.set
        if args.preset:
            cfg = preset(args.preset, overrides)
            name = args.preset
        else:
            cfg = ExperimentConfig.from_toml(args.config)
            if overrides:
                d = cfg.to_dict()
                for item in overrides:
                    apply_override(d, item)
                cfg = ExperimentConfig.from_dict(d)
            name = Path(args.config).stem
        try:
            ident = validate_id(name if args.out is None else args.out)  # before any path is built from it
        except StoreError as e:
            if args.out is not None:
                raise
            raise StoreError(f"{e}; the id comes from the config file's name: choose one with --out ID") \
                from None
        if args.if_missing and (cache / ident / "manifest.json").is_file():
            print(f"experiment {ident!r} is ready in {cache}")
            return 0
        log = lambda s: print(s, file=sys.stderr)  # noqa: E731
        runner = None
        if args.ray is not None:
            from core.distributed import RayRunner
            runner = RayRunner(cfg, args.ray or None, workers=args.ray_workers,
                               cpus_per_worker=args.ray_cpus_per_worker, log=log)
        prepare(cfg, ident, cache_dir=cache, overwrite=args.force, show_bars=not args.quiet, log=log,
                runner=runner)
    elif args.command == "list":
        stores = list_stores(cache)
        if not stores:
            print(f"no experiments in {cache}; try `python -m core prepare --preset demo`")
        for s in stores:
            try:
                shown = _summary(s.manifest) if s.manifest else "unusable: " + s.error
            except Exception:  # noqa: BLE001 -- one odd manifest must not hide the other stores
                shown = f"unusable: `python -m core check {s.id}` says what is wrong"
            print(f"{s.id:24s} {shown}")
    elif args.command == "check":
        return _check(args, cache)
    elif args.command == "presets":
        from core.models import DEFAULT_ARCH
        for name, cfg in PRESETS.items():
            print(f"{name:18s} {cfg.model.arch or DEFAULT_ARCH} on {cfg.data.source} "
                  f"({cfg.attack.method} eps={cfg.attack.eps:.4g})")
    elif args.command == "info":
        m = open_store(args.id, cache).manifest
        if args.json:
            print(json.dumps(m, indent=1))
        else:
            print(f"{args.id}: {_summary(m)}")
            for k in ("dataset", "input_shape", "model", "attack", "timings_s", "versions"):
                print(f"  {k}: {json.dumps(m.get(k))}")
    elif args.command == "serve":
        return _serve(args.id, cache, args.host, args.port)
    elif args.command == "train":
        from core.train import train_demo, train_probe
        if args.preset == "cifar10-224":
            train_probe()
        else:
            train_demo(epochs=args.epochs)
    elif args.command == "bench":
        from core import bench
        if args.what == "attack":
            report = bench.bench_attack(args.images)
        elif args.what == "analytics":
            report = bench.bench_analytics(args.experiment, args.pairs, args.fidelity_pairs, cache_dir=cache)
        elif args.what == "scale":
            report = bench.bench_scale()
        else:
            # The app benchmark drives app.py and its pages through Streamlit, so it lives outside the
            # library (bench/, beside app.py): core never imports the UI layer; imported only when asked.
            try:
                from bench.app import bench_app
            except ModuleNotFoundError as e:
                if e.name != "bench":
                    raise
                print("error: `bench app` runs from a checkout of the repository (it drives app.py and "
                      "pages/): run `python -m core bench app` in its root folder", file=sys.stderr)
                return 2
            report = bench_app(args.experiment, args.walks, cache_dir=cache)
        print(json.dumps(report, indent=1) if args.json else _table(report))
    return 0


# The app's link parameter that opens an experiment (core.ui.state.Selection.experiment: the library may
# not import the UI layer; tests/core/test_notebook_api.py checks that the app reads the link this way).
EXPERIMENT_PARAM = "exp"


def app_url(experiment_id: str, host: str = "localhost", port: int = 8501) -> str:
    """The address of the app opened on ``experiment_id`` when served on ``host:port``."""
    from urllib.parse import urlencode
    shown = "localhost" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?{urlencode({EXPERIMENT_PARAM: experiment_id})}"


def serve_command(experiment_id: str, cache: str | Path | None = None) -> str:
    """The shell command that serves the app on ``experiment_id`` (``cache``: its folder, when not the
    default one)."""
    import shlex
    where = "" if cache is None or Path(cache).resolve() == cache_dir().resolve() \
        else f" --cache {shlex.quote(str(cache))}"
    return f"{shlex.quote(sys.executable)} -m core{where} serve {shlex.quote(experiment_id)}"


def _serve(ident: str, cache: Path, host: str, port: int) -> int:
    """``serve ID``: refuse a missing or damaged experiment, print the app's address on it, and run
    streamlit on app.py (from the repository root, so its .streamlit/config.toml applies) until it stops."""
    import os
    import subprocess

    from core.store import CACHE_ENV, ROOT
    if not 1 <= port <= 65535:
        raise StoreError(f"--port {port} is no port; use a number from 1 to 65535 (e.g. 8501)")
    open_store(ident, cache)  # exists and passes the integrity check, or a StoreError that says why
    app = ROOT / "app.py"
    if not app.is_file():
        print("error: `serve` runs from a checkout of the repository (it starts app.py): run `python -m "
              "core serve` in its root folder", file=sys.stderr)
        return 2
    print(f"experiment {ident!r}: open {app_url(ident, host, port)}"
          + (" (or this machine's address instead of localhost)" if host in ("0.0.0.0", "::") else "")
          + "; Ctrl-C stops the app", flush=True)
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
               "--server.address", host, "--server.headless", "true"]
    with subprocess.Popen(command, cwd=ROOT, env={**os.environ, CACHE_ENV: str(cache.resolve())}) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # the terminal's Ctrl-C reached streamlit too: let it finish
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.terminate()
            return 0


def _check(args, cache: Path) -> int:
    """``check ID`` / ``check --all``: OK with a summary, or what is wrong and whether re-running prepare
    with the same settings repairs it (exit 0 all sound, 1 any damaged, 2 a usage error)."""
    from core.store import check_experiment, config_toml
    if args.all == (args.id is not None):
        raise StoreError("name one experiment (`python -m core check ID`) or use --all")
    if args.all:
        ids = [s.id for s in list_stores(cache)]
        if not ids:
            print(f"no experiments in {cache}")
    else:
        ids = [validate_id(args.id)]
        if not (cache / ids[0]).is_dir():
            raise StoreError(f"no experiment {args.id!r} in {cache}; `python -m core list` shows what is "
                             "there")
    damaged = 0
    for ident in ids:
        r = check_experiment(cache / ident)
        if r.ok:
            print(f"{ident}: OK, {_summary(r.manifest)} ({r.files} files checked)")
        else:
            damaged += 1
            print(f"{ident}: DAMAGED")
            for problem in r.problems:
                print(f"  - {problem}")
        for note in r.notes:
            print(f"  note: {note}")
        if r.ok:
            continue
        if r.repairable and r.manifest:
            print(f"  repair: re-running prepare with the same settings rebuilds it. They are below: save "
                  f"them as {ident}.toml and run\n    python -m core --cache {cache} prepare --config "
                  f"{ident}.toml --out {ident} --force")
            print("    " + config_toml(r.manifest).rstrip("\n").replace("\n", "\n    "))
        elif r.repairable:
            print("  repair: re-running prepare with the same settings (and --force) rebuilds it")
        else:
            print("  repair: re-running prepare with the same settings cannot repair it; delete the folder "
                  "and prepare the experiment again")
    return 1 if damaged else 0


def _summary(m: dict) -> str:
    r = summary_row(m)
    return (f"{r['successful pairs']} pairs | {r['images']} images, clean accuracy "
            f"{r['clean accuracy']:.3f}, attack success {r['attack success']:.3f} | "
            f"{r['model']}, {r['classes']} classes")


def _table(report: dict) -> str:
    """One line per entry; a dict of dicts (e.g. per-interaction timings) gets one indented line each."""
    lines = []
    for k, v in report.items():
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            lines.append(k)
            lines += [f"  {kk:38s} {vv}" for kk, vv in v.items()]
        else:
            lines.append(f"{k:40s} {v}")
    return "\n".join(lines)

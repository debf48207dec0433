"""The ``effnb`` command: list, run, sweep and refresh chapters; build the pages.

Every parameter is validated before a kernel starts; the exit code says what
went wrong (see ``effnb --help``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import runner as _run

EXIT_OK, EXIT_USAGE, EXIT_ENV, EXIT_CELL, EXIT_SWEEP = 0, 2, 3, 4, 5

EPILOG = """\
examples:
  effnb list                                  chapters, parameters, allowed values, presets
  effnb run 01                                chapter 01 with its smoke preset (the notebook's defaults)
  effnb run 01 --preset full -p threads=1     the full preset, one thread
  effnb run 01_measuring -p device=cuda       needs a GPU: exit 3 on a CPU-only machine
  effnb sweep book/grid.yaml --preset full    every run of the grid, skipping unchanged ones
  effnb sweep book/grid.yaml --scheduler local            on a Dask LocalCluster (2 workers)
  effnb sweep book/grid.yaml --scheduler tcp://HOST:8786  on a running Dask scheduler
  effnb refresh 01                            re-execute notebooks/01_*.ipynb in place (nbval reference)
  effnb pages                                 turn book/runs into book pages

runs land in book/runs/<hardware-id>/<stem>__<preset>[__name=value...].ipynb
beside a JSON sidecar of the same name; a failed run keeps <name>.failed.ipynb.

exit codes:
  0  ok
  1  anything else (e.g. effnb.runner.pages missing)
  2  bad usage or validation: unknown chapter, preset or parameter, or a value it does not allow
  3  this machine cannot run it (e.g. device=cuda without a GPU)
  4  a notebook cell failed (the message names the cell and the partial notebook)
  5  a sweep finished, but some runs failed
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code (2) and a hint to --help."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--notebooks-dir", type=Path, default=None, metavar="DIR",
                   help="where the chapter notebooks are (default: notebooks/ of the repository)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effnb", description="Run the chapters of the effnb book and build its pages.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("list", help="chapters with their parameters, allowed values and presets",
                       description="List every chapter: parameters (type, default, allowed values, help) "
                                   "and presets.")
    _common(p)

    p = sub.add_parser("run", help="run one chapter with papermill",
                       description="Run one chapter notebook with papermill and write the executed "
                                   "notebook plus its JSON sidecar.",
                       epilog="example: effnb run 01 --preset full -p threads=1 -p device=cpu\n\n" + EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("chapter", metavar="CHAPTER", help='chapter id ("01") or notebook stem ("01_measuring")')
    p.add_argument("--preset", default="smoke", help="preset from the chapter's YAML (default: smoke = "
                                                     "the notebook's own defaults)")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override one parameter (repeatable); lists as YAML, e.g. -p sizes=[1,2]")
    p.add_argument("--runs-dir", type=Path, default=None, metavar="DIR", help="default: book/runs")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    _common(p)

    p = sub.add_parser("sweep", help="run every job of a grid file (resumable)",
                       description="Run chapters x presets x parameters from a grid YAML file. A job "
                                   "whose sidecar is ok with the same inputs hash is skipped, so a "
                                   "killed sweep resumes; one failed job never stops the others.",
                       epilog=("grid format:\n  runs:\n    - chapter: \"01\"      # id, stem, list or all\n"
                               "      presets: [full]\n      parameters: {threads: [1, 2]}  # lists are crossed\n\n"
                               "Serial (the default) is right for timings. With Dask the workers write "
                               "the outputs themselves: they must share this filesystem (runs dir and "
                               "notebooks at the same paths), and jobs running side by side share cores, "
                               "so their timings are not comparable.\n\n" + EPILOG),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("grid", type=Path, metavar="GRID.yaml")
    p.add_argument("--preset", default=None, help="run every entry with this preset instead of the grid's")
    p.add_argument("--scheduler", default=None, metavar="local|tcp://HOST:PORT",
                   help="run on Dask: 'local' starts a LocalCluster (2 processes x 1 thread); "
                        "tcp://host:port connects to a running scheduler (shared filesystem assumed)")
    p.add_argument("--force", action="store_true", help="run every job, even unchanged ones")
    p.add_argument("--runs-dir", type=Path, default=None, metavar="DIR", help="default: book/runs")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and list the jobs, each with why it would run (missing, failed, or which "
                        "declared input changed: notebook, yaml, package X, kernels Y, core, parameters); run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p)

    p = sub.add_parser("refresh", help="re-execute a committed notebook in place (nbval reference outputs)",
                       description="Re-execute notebooks/CHAPTER in place with its own defaults (nbclient, "
                                   "no injected cell), keeping execution counts, so nbval has reference "
                                   "outputs to compare.")
    p.add_argument("chapter", metavar="CHAPTER")
    _common(p)

    p = sub.add_parser("new", help="scaffold a chapter that passes `make test` as generated (or --remove it)",
                       description="Write notebooks/NN_SLUG.ipynb and .yaml, the technique package effnb/SLUG/, "
                                   "the kernel family kernels/SLUG/, tests/test_SLUG.py, a _toc.yml entry and a "
                                   "book/references.bib stub; build the family and execute the notebook once. "
                                   "--remove deletes all of it again.")
    p.add_argument("number", metavar="NN", help="two-digit chapter number, e.g. 07")
    p.add_argument("slug", metavar="SLUG", help="lower-case name: the package, kernel family and file stem")
    p.add_argument("--title", default=None, help="the chapter's title (default from the slug)")
    p.add_argument("--remove", action="store_true", help="delete a scaffolded chapter and its registrations")

    p = sub.add_parser("pages", help="build the book's chapter pages from book/runs (effnb.runner.pages)",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to effnb.runner.pages")
    return parser


# ------------------------------------------------------------- commands
def cmd_list(args) -> int:
    chapters = _run.discover(args.notebooks_dir)
    if not chapters:
        print(f"no chapters in {args.notebooks_dir or _run.NOTEBOOKS_DIR}")
        return EXIT_OK
    for ch in chapters:
        print(f"{ch.id}  {ch.stem}  {ch.title}")
        rows = [(p.name, p.type, _run._fmt(p.default), p.allowed(), p.help) for p in ch.params.values()]
        rows.insert(0, ("parameter", "type", "default", "allowed", "help"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        for r in rows:
            print("    " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4])
        presets = []
        for name, values in ch.presets.items():
            body = ", ".join(f"{k}={_run._fmt(v)}" for k, v in values.items()) or "the notebook's defaults"
            presets.append(f"{name} ({body})")
        print("    presets: " + "; ".join(presets))
        print()
    return EXIT_OK


def cmd_run(args) -> int:
    ch = _run.find_chapter(args.chapter, args.notebooks_dir)
    overrides = _run.parse_assignments(ch, args.param)
    params = _run.resolve(ch, args.preset, overrides)
    _run.check_environment(params)
    side = _run.run_chapter(ch, args.preset, overrides, runs_dir=args.runs_dir,
                            progress=not args.no_progress)
    run = side["run"]
    print(f"ok: {ch.stem} ({args.preset}) in {run['elapsed_s']:.1f} s -> {run['output']}")
    return EXIT_OK


def cmd_sweep(args) -> int:
    from . import sweep as _sweep
    if args.dry_run:
        steps = _sweep.plan(args.grid, args.preset, args.runs_dir, args.notebooks_dir, args.force)
        width = max((len(s["job"]) for s in steps), default=0)
        for s in steps:
            print(f"{s['action']:4s}  {s['job'].ljust(width)}  {', '.join(s['why']) or 'unchanged'}")
        n = sum(s["action"] == "run" for s in steps)
        print(f"{len(steps)} jobs: {n} would run, {len(steps) - n} unchanged")
        return EXIT_OK
    results = _sweep.sweep(args.grid, preset=args.preset, scheduler=args.scheduler, force=args.force,
                           runs_dir=args.runs_dir, notebooks_dir=args.notebooks_dir,
                           progress=not args.no_progress)
    return EXIT_SWEEP if any(r["status"] == "failed" for r in results) else EXIT_OK


def cmd_refresh(args) -> int:
    path = _run.refresh(args.chapter, args.notebooks_dir)
    print(f"refreshed {path}")
    return EXIT_OK


def cmd_new(args) -> int:
    from . import scaffold
    if args.remove:
        gone = scaffold.remove(args.number, args.slug)
        print(f"removed chapter {args.number}_{args.slug}: {len(gone)} paths, its _toc.yml entry and bibliography stub")
        return EXIT_OK
    made = scaffold.create(args.number, args.slug, args.title)
    print(f"chapter {args.number}_{args.slug}: wrote {len(made)} files, built kernels/{args.slug}, executed "
          f"notebooks/{args.number}_{args.slug}.ipynb; next: write the chapter, then `effnb refresh {args.number}`")
    return EXIT_OK


def cmd_pages(args) -> int:
    try:
        from . import pages
    except ImportError as exc:
        print(f"effnb pages: effnb.runner.pages is not available ({exc}); it builds the pages from book/runs",
              file=sys.stderr)
        return 1
    return pages.main(list(args.args)) or EXIT_OK


COMMANDS = {"list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "refresh": cmd_refresh, "new": cmd_new,
            "pages": cmd_pages}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pages"]:  # everything after `pages` belongs to effnb.runner.pages, --help included
        return cmd_pages(argparse.Namespace(args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except _run.EffnbError as exc:
        print(f"effnb {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("effnb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

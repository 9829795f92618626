"""``pactmerge slurm CONFIG``: write sbatch scripts for the study (and submit them with ``--submit``)."""

from pactmerge.commands._output import show

HELP = "write sbatch scripts: a fine-tune job array, joint and sequential jobs, and a dependent merge-and-evaluate job"


def add_arguments(parser):
    parser.add_argument("config", help="YAML run config")
    parser.add_argument("--out", help="directory for the scripts (default: OUTPUT_DIR/slurm)")
    parser.add_argument("--missing", action="store_true",
                        help="only the fine-tunes the run directory does not hold yet (a resubmission after a failure)")
    parser.add_argument("--submit", action="store_true", help="run the written submit.sh (needs sbatch)")


def run(args):
    import subprocess
    from pathlib import Path

    from pactmerge.errors import StageError
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.context import resolve_tasks
    from pactmerge.pipeline.slurm import stored_entries, write_slurm_scripts

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "slurm"
    done = stored_entries(cfg.output_dir) if args.missing else set()
    paths = write_slurm_scripts(cfg, args.config, [t.key for t in resolve_tasks(cfg)], out, done=done)
    for name, path in paths.items():
        show(f"{name}: {path}")
    if done:
        kept = sorted(n for n in done if n.split("/")[0] in ("finetuned", "joint", "sequential"))
        show(f"kept (already stored): {', '.join(kept) or 'none'}")
    if not args.submit:
        show(f"submit with: bash {paths['submit.sh']}")
        return 0
    res = subprocess.run(["bash", str(paths["submit.sh"])], capture_output=True, text=True)
    show(res.stdout.strip())
    if res.returncode != 0:
        raise StageError(f"{paths['submit.sh']} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}; "
                         "is sbatch on the PATH and the cluster reachable (sinfo)?")
    return 0

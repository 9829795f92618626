"""``pactmerge slurm CONFIG``: write sbatch scripts for the study."""

HELP = "write sbatch scripts: a fine-tune job array, joint and sequential jobs, and a dependent merge-and-evaluate job"


def add_arguments(parser):
    parser.add_argument("config", help="YAML run config")
    parser.add_argument("--out", help="directory for the scripts (default: OUTPUT_DIR/slurm)")


def run(args):
    from pathlib import Path

    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.context import resolve_tasks
    from pactmerge.pipeline.slurm import write_slurm_scripts

    cfg = load_config(args.config)
    out = Path(args.out) if args.out else Path(cfg.output_dir) / "slurm"
    paths = write_slurm_scripts(cfg, args.config, [t.key for t in resolve_tasks(cfg)], out)
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"submit with: bash {paths['submit.sh']}")
    return 0

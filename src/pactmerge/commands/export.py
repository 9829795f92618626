"""``pactmerge export``: a stored or plain-file encoder as an open_clip state dict or a HF checkpoint."""

from __future__ import annotations

from pactmerge.commands._output import show

HELP = "export an encoder (e.g. a merge) as an open_clip state dict (safetensors) or a Hugging Face checkpoint directory"


def add_arguments(parser):
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--store", metavar="RUN_DIR", help="checkpoint store (run directory) to read --name from")
    src.add_argument("--input", metavar="FILE", help="a plain encoder file (open_clip or HF layout) instead of a store")
    parser.add_argument("--name", help="store entry to export: merged/<id>, joint, sequential, finetuned/<task>, pretrained")
    parser.add_argument("--format", required=True, choices=("open_clip", "hf"), help="output format")
    parser.add_argument("--out", required=True, help="*.safetensors file (open_clip) or directory (hf)")
    parser.add_argument("--heads", type=int, help="attention heads for the HF config (default: from the store's "
                        "model config, else width // 64)")
    parser.add_argument("--hidden-act", choices=("quick_gelu", "gelu"),
                        help="MLP activation for the HF config (default: from the store's model config, else quick_gelu)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow pickled torch files for --input")


def run(args) -> int:
    from pactmerge.commands._models import ModelSource
    from pactmerge.errors import ConfigError
    from pactmerge.interop.exporter import export_hf, export_open_clip

    source = ModelSource(args.store, trust_pickle=args.trust_pickle)
    model_config = None
    if args.store:
        if not args.name:
            raise ConfigError("--store needs --name (e.g. --name merged/pact+tsvm)")
        state = source.from_store(args.name)
        model_config = (source.store.manifest.get("identity") or {}).get("model_config")
        meta = {"store": str(args.store), "name": args.name,
                "entry": {k: v for k, v in source.store.entry(args.name).items() if k not in ("file",)}}
    else:
        if args.name:
            raise ConfigError("--name selects a store entry; with --input give the file only")
        state, layout = source.read_file(args.input)
        meta = {"input": str(args.input), "input_layout": layout}
    if args.format == "open_clip":
        paths = export_open_clip(state, args.out, meta=meta)
    else:
        paths = export_hf(state, args.out, model_config=model_config, heads=args.heads,
                          hidden_act=args.hidden_act, meta=meta)
    for p in paths:
        show(p)
    return 0

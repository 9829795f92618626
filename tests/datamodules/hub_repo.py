"""Write a local folder laid out like a Hugging Face dataset repository (card + parquet files).

``datasets.load_dataset(folder, config)`` reads such a folder exactly as it reads the hub id: the
card's ``configs`` map each split to its files. Unreadable splits are written as garbage bytes.
"""

from __future__ import annotations

from pathlib import Path

import yaml

GARBAGE = b"\x00not a parquet file\xff" * 64


def write_repo(root: Path, configs: dict[str, dict[str, object]]) -> Path:
    """``configs``: ``{config name: {split: datasets.Dataset | bytes}}``; bytes are written as the
    split's file as they are (an unreadable split). Files go to ``<config or data>/<split>-00000-of-00001.parquet``."""
    root.mkdir(parents=True, exist_ok=True)
    card = []
    for config, splits in configs.items():
        folder = "data" if config == "default" else config
        (root / folder).mkdir(exist_ok=True)
        files = []
        for split, data in splits.items():
            path = root / folder / f"{split}-00000-of-00001.parquet"
            if isinstance(data, bytes):
                path.write_bytes(data)
            else:
                data.to_parquet(str(path))
            files.append({"split": split, "path": f"{folder}/{split}-*"})
        card.append({"config_name": config, "data_files": files})
    (root / "README.md").write_text("---\n" + yaml.safe_dump({"configs": card}, sort_keys=False) + "---\n")
    return root

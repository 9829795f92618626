"""The real architecture end to end on the CPU: ``pactmerge run configs/smoke_vitb32.yaml``.

open_clip ViT-B-32 with its real key names and shapes (random weights from a fixed seed; no
download), heads from its random text tower through open_clip's zero-shot builder, two offline
tasks upsampled to 224x224, a few steps of individual, joint and sequential fine-tuning, the
SVD merges with and without PACT (exact and randomized), α on a grid, evaluation, report; then
``pactmerge export --format hf`` of a merge, reloaded by ``transformers`` with the outputs of
open_clip's tower. Everything goes through the command line, as a user would run it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pactmerge.cli import main

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "smoke_vitb32.yaml"
EXPORTED = "merged/pact+tsvm"
DISK_NEEDED = 6_500_000_000  # bytes the module writes at its peak (measured: 5.3 GB), with some room


def _config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def _merge_ids(cfg: dict) -> list[str]:
    """The run's merge names: each method alone, with exact PACT and with randomized PACT."""
    suffix = {"none": None, "exact": "", "randomized": "-rsvd"}
    return [m if suffix[v] is None else f"pact+{m}{suffix[v]}" for m in cfg["merge"]["methods"] for v in cfg["merge"]["pact"]]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(run directory, printed output) of one CLI run of the smoke config."""
    root = tmp_path_factory.mktemp("vitb32")
    free = shutil.disk_usage(root).free
    if free < DISK_NEEDED:
        pytest.skip(f"the ViT-B/32 run writes about {DISK_NEEDED / 1e9:.1f} GB (14 encoder states of 351 MB, a "
                    f"fit's checkpoint, an export) and {root} has {free / 1e9:.1f} GB free")
    run = root / "run"
    rc = main(["run", str(CONFIG), "--output-dir", str(run), "--set", f"data.cache_dir={root / 'cache'}"])
    assert rc == 0
    yield run
    shutil.rmtree(root, ignore_errors=True)  # about 5 GB of ViT-B/32 weights: freed once this module ends


@pytest.fixture(scope="module")
def vitb32():
    """The model the config names, loaded here the way the run loads it."""
    from pactmerge.pipeline.config import load_config
    from pactmerge.pipeline.model import load_model

    return load_model(load_config(CONFIG).model)


def test_study_has_every_row_on_the_real_architecture(smoke, vitb32):
    import open_clip

    from pactmerge.checkpoints import CheckpointStore
    from pactmerge.datamodules import get_task
    from pactmerge.pipeline.heads import build_heads

    cfg = _config()
    tasks, merges = cfg["tasks"]["names"], _merge_ids(cfg)
    results = json.loads((smoke / "results.json").read_text())
    names = [r["name"] for r in results["rows"]]
    assert names[:4] == ["zero-shot", "individual", "joint", "sequential"]
    assert sorted(names[4:]) == sorted(merges)
    for row in results["rows"]:
        assert set(row["accuracy"]) == set(tasks), row["name"]
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values()), row
    assert (smoke / "results.md").is_file() and (smoke / "results.csv").is_file()

    store = CheckpointStore(smoke, create=False)
    # open_clip's ViT-B-32 image tower, every key with its real shape, from the fixed seed
    reference = open_clip.create_model("ViT-B-32").visual.state_dict()
    pre = store.load_state("pretrained")
    assert {k: tuple(v.shape) for k, v in pre.items()} == {k: tuple(v.shape) for k, v in reference.items()}
    assert pre["transformer.resblocks.11.mlp.c_fc.weight"].shape == (3072, 768) and pre["proj"].shape == (768, 512)
    assert len([k for k in pre if k.startswith("transformer.resblocks.")]) == 12 * 12
    for k, v in vitb32.encoder_state().items():
        assert torch.equal(pre[k], v), k  # the same random model in another process
    # heads through open_clip's zero-shot builder on the random text tower: 10 unit rows of 512
    for t in tasks:
        head = store.load_head(t)
        assert head.shape == (10, 512)
        torch.testing.assert_close(head, build_heads(vitb32, [get_task(t)])[t])

    grid = [float(a) for a in cfg["merge"]["alpha_grid"]]
    for t in tasks:
        ft = store.load_state(f"finetuned/{t}")
        assert any(not torch.equal(ft[k], pre[k]) for k in pre), t  # it trained
    for m in merges:
        entry = store.entry(f"merged/{m}")
        search, alpha = entry["alpha_search"], float(entry["alpha"])
        assert set(grid) <= {float(a) for a in search["curve"]}, m  # the configured grid was searched
        lo, hi = search["range"]
        assert lo <= alpha <= hi and alpha == float(search["chosen"]), (m, alpha, search["range"])
        assert lo < alpha < hi or search["at_limit"], (m, alpha, search)  # an edge only at the hard bound
        state = store.load_state(f"merged/{m}")
        assert set(state) == set(pre) and all(torch.isfinite(v).all() for v in state.values()), m


def test_hf_export_of_a_merge_reloads_in_transformers(smoke, vitb32, tmp_path):
    """``pactmerge export --format hf``; ``CLIPVisionModel`` gives open_clip's pooled features and
    ``CLIPVisionModelWithProjection`` its projected ones, to 1e-4."""
    transformers = pytest.importorskip("transformers")
    from pactmerge.checkpoints import CheckpointStore

    out = tmp_path / "hf"
    assert main(["export", "--store", str(smoke), "--name", EXPORTED, "--format", "hf", "--out", str(out)]) == 0
    assert json.loads((out / "pactmerge.json").read_text())["name"] == EXPORTED

    tower = copy.deepcopy(vitb32.encoder).eval()
    tower.load_state_dict(CheckpointStore(smoke, create=False).load_state(EXPORTED))
    pooled_tower = copy.deepcopy(tower)
    pooled_tower.proj = None  # open_clip then returns the pooled, layer-normed class token
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))

    hf = transformers.CLIPVisionModel.from_pretrained(out).eval()
    assert (hf.config.num_attention_heads, hf.config.hidden_act, hf.config.num_hidden_layers) == (12, "gelu", 12)
    hf_proj = transformers.CLIPVisionModelWithProjection.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).pooler_output, pooled_tower(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(hf_proj(pixel_values=x).image_embeds, tower(x), atol=1e-4, rtol=1e-4)

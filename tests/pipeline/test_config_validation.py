"""Config values are checked for meaning at load time, before any directory is touched."""

from __future__ import annotations

import pytest

from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import load_config

BAD = [
    ("recipe.lr=.nan", "recipe.lr"),
    ("recipe.lr=.inf", "recipe.lr"),
    ("recipe.batch_size=0", "recipe.batch_size"),
    ("recipe.grad_clip=-1", "recipe.grad_clip"),
    ("recipe.weight_decay=-5", "recipe.weight_decay"),
    ("recipe.precision=fp7", "recipe.precision"),
    ("recipe.ckpt_every_n_steps=0", "recipe.ckpt_every_n_steps"),
    ("merge.methods=[tsvn]", "tsvn"),
    ("merge.params={K: 3}", "'K' is a PACT parameter"),
    ("merge.pact_params={k: 20.5}", "'k'"),
    ("merge.method_params={ties: {k: -3.0}}", "k must be"),
    ("merge.alpha=.nan", "merge.alpha"),
    ("merge.alpha_grid=[.nan]", "merge.alpha_grid[0]"),
    ("merge.alpha_grid=[]", "merge.alpha_grid"),
    ("merge.device=tpu", "merge.device"),
    ("cluster.devices=abc", "cluster.devices"),
    (f"seed={2**70}", "seed"),
    ("recipe.seed=-1", "recipe.seed"),
    ("comparisons.joint_steps=-1", "comparisons.joint_steps"),
    ("comparisons.sequential_order=[digits]", "comparisons.sequential_order"),
    ("comparisons.sequential_order=[mnist, fashion_mnist, digits, nope]", "comparisons.sequential_order"),
    ("output_dir=''", "output_dir"),
    ("data.batch_size=3", "recipe.batch_size"),
    ("data.image_size=32", "model"),
    ("tasks.names=[mnist, MNIST]", "twice"),
]


@pytest.mark.parametrize("override,named", BAD, ids=[b[0] for b in BAD])
def test_bad_value_is_refused_at_load_naming_the_key(override, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert named in str(info.value)
    assert not any(tmp_path.iterdir()), "a refused config must not create anything"


def test_default_config_and_valid_values_load():
    cfg = load_config(None, ["merge.pact_params={K: 4, k: 2}", "merge.method_params={ties: {k: 10.0}}",
                             "cluster.devices='0,1'", "seed=4294967295", "merge.device=cuda:0"])
    assert cfg.seed == 2**32 - 1 and cfg.cluster.devices == "0,1"


def test_task_names_in_other_spellings_validate():
    cfg = load_config(None, ["tasks.names=[MNIST, fashion-mnist]", "comparisons.sequential_order=[Fashion-MNIST, mnist]"])
    assert cfg.tasks.names == ["MNIST", "fashion-mnist"]  # normalised once, by the run context

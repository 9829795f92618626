"""The typed run config: strict keys and types, overrides, identity."""

import pytest

from pactmerge.errors import ConfigError
from pactmerge.pipeline.config import DEFAULT_CONFIG, RunConfig, load_config


def test_embedded_default_loads_and_names_offline_suite():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig)
    assert cfg.tasks.benchmark == "offline"
    assert cfg.model.name == "efficientnet_lite0_clip"
    assert cfg.merge.conv_as_matrix is True
    assert DEFAULT_CONFIG.is_file()


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("recipe:\n  lrr: 0.1\n", "unknown key 'recipe.lrr'"),
        ("recipe:\n  lr: fast\n", "recipe.lr: expects a number"),
        ("merge:\n  methods: tsvm\n", "merge.methods: expects"),
        ("merge:\n  pact: [none, sometimes]\n", "merge.pact[1]: must be one of"),
        ("data:\n  max_train: 1.5\n", "data.max_train: expects"),
        ("nonsense: 1\n", "unknown key 'nonsense'"),
        ("comparisons:\n  joint: 3\n", "comparisons.joint: expects true or false"),
    ],
)
def test_bad_keys_and_types_are_named(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert fragment in str(err.value)
    assert str(path) in str(err.value)


def test_overrides_apply_after_file_and_are_typed():
    cfg = load_config(None, ["recipe.max_steps=7", "merge.methods=[tsvm]", "tasks.names=[digits]",
                             "merge.alpha_grid=[0.5, 1, 3]"])
    assert cfg.recipe.max_steps == 7 and cfg.merge.methods == ["tsvm"] and cfg.tasks.names == ["digits"]
    assert cfg.merge.alpha_grid == [0.5, 1.0, 3.0]
    with pytest.raises(ConfigError, match="recipe.max_steps"):
        load_config(None, ["recipe.max_steps=many"])


def test_identity_ignores_runtime_settings_only():
    a = load_config(None)
    b = load_config(None, ["output_dir=/elsewhere", "cluster.devices=4", "data.num_workers=3"])
    c = load_config(None, ["recipe.lr=0.1"])
    assert a.identity_hash() == b.identity_hash()
    assert a.identity_hash() != c.identity_hash()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_shipped_benchmark_configs_load_and_name_known_tasks():
    from pathlib import Path

    from pactmerge.pipeline.context import resolve_tasks

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("vit*_*tasks.yaml"))
    assert len(files) == 9  # ViT-B/32, B/16, L/14 x 8, 14, 20 tasks
    for path in files:
        cfg = load_config(path)
        assert cfg.model.pretrained == "openai"
        assert len(resolve_tasks(cfg)) == int(cfg.tasks.benchmark)


def test_run_recorded_before_an_option_existed_still_matches(tmp_path):
    import json

    from pactmerge.pipeline.context import RunContext
    from pactmerge.pipeline.rundir import claim

    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", "tasks.names=[digits]"])
    claim(RunContext(cfg))
    info_path = tmp_path / "run" / "run.json"
    info = json.loads(info_path.read_text())
    del info["config"]["merge"]["alpha_grid"]  # as written by a version without the option
    del info["identity"]["merge"]["alpha_grid"]
    info_path.write_text(json.dumps(info))
    claim(RunContext(cfg))  # same config: accepted
    # a finished stage makes the directory worth keeping: another config is refused
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({"format": 1, "identity": None, "entries": {
        "finetuned/digits": {"file": "finetuned/digits.safetensors"}}}))
    with pytest.raises(ConfigError, match=r"differs at: recipe\.lr"):
        claim(RunContext(load_config(None, [f"output_dir={tmp_path / 'run'}", "tasks.names=[digits]", "recipe.lr=0.1"])))

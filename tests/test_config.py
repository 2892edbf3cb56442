"""Config: defaults < YAML file < overrides, type coercion, unknown keys, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgekd.config import TrainConfig, build_config, config_from_dict, config_to_dict, parse_set_options, save_config
from edgekd.errors import ConfigError


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_validate():
    cfg = build_config()
    assert cfg == TrainConfig()
    assert cfg.data == "synthetic" and cfg.method == "ce"


def test_file_then_overrides_precedence(tmp_path):
    f = write_yaml(tmp_path / "run.yaml", {"epochs": 3, "lr": 0.05, "model": "tiny", "kd": {"temperature": 2.5}})
    cfg = build_config(str(f), {"epochs": 7, "lr": None, "kd": {"ce_weight": 0.3}})
    assert cfg.epochs == 7  # override wins
    assert cfg.lr == 0.05  # None overrides are ignored: the file's value stays
    assert cfg.model == "tiny"
    assert cfg.kd.temperature == 2.5 and cfg.kd.ce_weight == 0.3  # nested sections merge


def test_set_options_parse_yaml_scalars_and_dotted_keys():
    nested = parse_set_options(["lsskd.branch=light", "kd.temperature=3", "milestones=0.3,0.6", "dho.alpha=null"])
    assert nested == {"lsskd": {"branch": "light"}, "kd": {"temperature": 3}, "milestones": "0.3,0.6",
                      "dho": {"alpha": None}}
    cfg = build_config(overrides={"lsskd": {"branch": "light", "stages": "0,1"}, "milestones": "0.3,0.6"})
    assert cfg.lsskd.stages == (0, 1) and cfg.milestones == (0.3, 0.6)
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["novalue"])


@pytest.mark.parametrize("updates, match", [
    ({"epoch": 3}, "unknown config key 'epoch'"),
    ({"kd": {"temprature": 3}}, "unknown config key 'kd.temprature'"),
    ({"kd": 3}, "is a section"),
    ({"epochs": "many"}, "expects int"),
    ({"epochs": 2.5}, "expects int"),
    ({"augment": "maybe"}, "expects bool"),
    ({"method": "magic"}, "unknown method"),
    ({"optimizer": "lion"}, "unknown optimizer"),
    ({"device": "tpu"}, "unknown device"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"epochs": 0}, ">= 1"),
])
def test_bad_values_are_config_errors(updates, match):
    with pytest.raises(ConfigError, match=match):
        build_config(overrides=updates)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_config(str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(str(listy))
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert build_config(str(empty)) == TrainConfig()


def test_yaml_does_not_run_code(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("model: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(str(f))


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = build_config(overrides={"model": "resnet8", "milestones": [0.2, 0.9], "lsskd": {"stages": [0, 2]},
                                  "dho": {"labeled_fraction": 0.1}, "threads": 1})
    d = config_to_dict(cfg)
    assert d["milestones"] == [0.2, 0.9] and d["lsskd"]["stages"] == [0, 2]  # plain lists for YAML
    assert config_from_dict(d) == cfg
    save_config(cfg, tmp_path / "config.yaml")
    assert build_config(str(tmp_path / "config.yaml")) == cfg


# ---------------------------------------------------------------- --resume is a config layer


def stored_run(tmp_path: Path, **kw) -> Path:
    """A run directory holding only its resolved config.yaml (what `edgekd train` writes first)."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config(overrides=dict(out=str(run), **kw)), run / "config.yaml")
    return run


def test_resume_layers_defaults_stored_file_cli(tmp_path):
    run = stored_run(tmp_path, epochs=5, lr=0.02, model="tiny", kd={"temperature": 2.0}, batch_size=16)
    f = write_yaml(tmp_path / "more.yaml", {"lr": 0.03, "batch_size": 24})
    # the default value given explicitly (10 is TrainConfig.epochs) still wins over the stored 5
    cfg = build_config(str(f), {"resume": str(run), "epochs": TrainConfig.epochs, "batch_size": None,
                                "out": str(tmp_path / "elsewhere")})
    assert cfg.epochs == TrainConfig.epochs == 10  # command line > everything
    assert cfg.lr == 0.03 and cfg.batch_size == 24  # --config file > stored run config
    assert cfg.model == "tiny" and cfg.kd.temperature == 2.0  # stored run config > defaults
    assert cfg.out == cfg.resume == str(run)  # a resumed run writes to its own directory


def test_resume_without_options_is_the_stored_run(tmp_path):
    run = stored_run(tmp_path, epochs=5, method="pskd", pskd={"alpha_T": 0.5}, milestones=[0.3])
    cfg = build_config(overrides={"resume": str(run)})
    assert cfg == build_config(overrides=dict(epochs=5, method="pskd", pskd={"alpha_T": 0.5}, milestones=[0.3],
                                              out=str(run), resume=str(run)))
    # `resume` may come from the --config file too
    f = write_yaml(tmp_path / "resume.yaml", {"resume": str(run), "epochs": 7})
    assert build_config(str(f)).epochs == 7 and build_config(str(f)).method == "pskd"


def test_resume_of_a_run_without_config_adds_no_layer(tmp_path):
    """The trainer reports the missing checkpoint; on other nodes of a multi-node run the directory may be absent."""
    cfg = build_config(overrides={"resume": str(tmp_path / "absent"), "epochs": 3})
    assert cfg.epochs == 3 and cfg.out == str(tmp_path / "absent") and cfg.model == TrainConfig.model


def test_resume_with_a_bad_stored_config_is_a_config_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(overrides={"resume": str(run)})


def test_cli_resume_epochs_given_on_the_command_line_win(tmp_path):
    """`edgekd train --resume RUN --epochs 10` on a 1-epoch run trains it to 10, although 10 is the default."""
    import json

    from typer.testing import CliRunner

    from edgekd import names
    from edgekd.cli import app

    run = tmp_path / "run"
    first = ["train", "--data", "synthetic:n_train=200,n_test=64", "--model", "tiny", "--epochs", "1",
             "--batch-size", "32", "--lr", "0.05", "--set", "max_steps_per_epoch=2", "--out", str(run),
             "--no-progress"]
    res = CliRunner().invoke(app, first)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["train", "--resume", str(run), "--epochs", "10", "--no-progress"])
    assert res.exit_code == 0, res.output
    epochs = [json.loads(line)["epoch"] for line in (run / names.METRICS_FILE).read_text().splitlines()]
    assert epochs == list(range(1, 11))
    stored = yaml.safe_load((run / names.CONFIG_FILE).read_text())
    assert stored["epochs"] == 10 and stored["lr"] == 0.05 and stored["model"] == "tiny"

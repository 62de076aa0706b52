"""The score-inbox flow, its CLI and its deployment."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import InputError
from pipeline.inbox.manifest import Manifest
from tests.flows.test_bad_inputs_cli import cli_within
from tests.pipeline.inbox.test_inbox import _bad_inbox_entries, _old

ROOT = Path(__file__).resolve().parents[2]


def test_score_inbox_flow_scores_new_files_once_and_quarantines_a_bad_one(
    registered_model, prefect_harness, test_table, box
):
    from flows.config import InboxConfig
    from flows.inbox import InboxFailed, score_inbox

    df, _ = test_table
    df.head(50).to_csv(box["inbox"] / "good.csv", index=False)
    (box["inbox"] / "nested").mkdir()
    df.head(20).to_parquet(box["inbox"] / "nested" / "good2.parquet")
    df.drop(columns=["a"]).head(10).to_csv(box["inbox"] / "bad.csv", index=False)
    for p in box["inbox"].rglob("*.*"):
        _old(p)
    config = InboxConfig(
        inbox=box["inbox"], outbox=box["outbox"], model="models:/test-model@champion", max_attempts=1, min_age_s=1
    )
    with pytest.raises(InboxFailed, match=r"bad\.csv: quarantined") as failed:
        score_inbox(config)
    outcomes = {o["path"]: o for o in failed.value.outcomes}
    assert {k: o["status"] for k, o in outcomes.items()} == {
        "bad.csv": "quarantined",
        "good.csv": "done",
        "nested/good2.parquet": "done",
    }
    report = pd.read_csv(box["outbox"] / "nested" / "good2.anomalies.csv", dtype={"id": str})
    assert report["id"].tolist() == df["id"].head(20).tolist()
    assert (box["outbox"] / "good.summary.json").is_file()
    assert "missing column(s) ['a']" in (box["quarantine"] / "bad.csv.reason.txt").read_text()
    entries = {e.path: e for e in Manifest(config.manifest_path()).entries()}
    assert entries["good.csv"].model_version == registered_model["version"]
    run_id = entries["good.csv"].run_id  # the flow run's id, the same for every file it scored
    assert uuid.UUID(run_id) and entries["nested/good2.parquet"].run_id == entries["bad.csv"].run_id == run_id
    assert score_inbox(config) == []  # nothing new: not scored twice


def test_inbox_config_and_cli_refuse_contradictions(tmp_path):
    from flows.config import InboxConfig
    from flows.inbox import build_parser, schedule_of

    with pytest.raises(ValueError, match="must be separate folders"):
        InboxConfig(inbox=tmp_path, outbox=tmp_path / "out")
    with pytest.raises(ValueError, match="extra"):
        InboxConfig(inbox=tmp_path / "i", outbox=tmp_path / "o", interval=5)
    parse = build_parser().parse_args
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o"])) is None
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o", "--interval", "30"])) == {"interval": 30.0}
    assert schedule_of(parse(["--inbox", "i", "--outbox", "o", "--serve", "--cron", "*/5 * * * *"])) == {
        "cron": "*/5 * * * *"
    }
    for argv, message in [
        (["--serve"], "--serve needs a schedule"),
        (["--once", "--interval", "5"], "--once cannot"),
        (["--interval", "5", "--cron", "* * * * *"], "not both"),
        (["--interval", "0"], "> 0"),
    ]:
        with pytest.raises(InputError, match=message):
            schedule_of(parse(["--inbox", "i", "--outbox", "o", *argv]))


def test_prefect_yaml_deploys_score_inbox_with_parameters_the_flow_accepts(tmp_path, monkeypatch):
    import yaml
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.templating import apply_values

    from flows.config import InboxConfig

    [dep] = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    with pytest.raises(ValueError, match=r"inbox must name a folder, got ''"):  # the variable was not exported
        InboxConfig(**apply_values(dep["parameters"], {})["config"])
    monkeypatch.setenv("VAE_ANOMALY_INBOX", str(tmp_path / "in"))
    monkeypatch.setenv("VAE_ANOMALY_OUTBOX", str(tmp_path / "out"))
    params = apply_values(dep["parameters"], {})  # what `prefect deploy` does with {{ $VAR }}
    assert InboxConfig(**params["config"]).inbox == tmp_path / "in"
    assert InboxConfig(**params["config"]).model == "models:/vae-anomaly@champion"  # VAE_ANOMALY_MODEL unset
    monkeypatch.setenv("VAE_ANOMALY_MODEL", "models:/fraud@prod")
    params = apply_values(dep["parameters"], {})
    assert InboxConfig(**params["config"]).model == "models:/fraud@prod"
    path, name = dep["entrypoint"].split(":")
    loaded = load_flow_from_entrypoint(f"{ROOT / path}:{name}")  # how a worker's flow run loads it
    assert loaded.name == "score-inbox"
    assert isinstance(loaded.validate_parameters(params)["config"], InboxConfig)
    assert CronSchedule(cron=dep["schedules"][0]["cron"]).cron == "*/5 * * * *"


def test_serve_without_a_prefect_server_is_a_one_line_error(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.config import InboxConfig
    from flows.inbox import serve

    config = InboxConfig(inbox=tmp_path / "i", outbox=tmp_path / "o")
    with (
        temporary_settings(restore_defaults={PREFECT_API_URL}),
        pytest.raises(InputError, match="--serve needs a running Prefect server: start one with"),
    ):
        serve(config, {"interval": 60}, "score-inbox")


def test_inbox_cli_once_prints_outcomes_and_exits_2_for_a_quarantined_file(
    registered_model, prefect_harness, test_table, box, capsys
):
    from flows.inbox import main

    df, _ = test_table
    df.head(30).to_csv(box["inbox"] / "ok.csv", index=False)
    (box["inbox"] / "broken.parquet").write_bytes(b"PAR1 not really")
    argv = [
        "--inbox",
        str(box["inbox"]),
        "--outbox",
        str(box["outbox"]),
        "--model",
        "models:/test-model@champion",
        "--min-age",
        "0",
        "--max-attempts",
        "1",
        "--once",
    ]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert f"{box['inbox'].resolve()}: " in out and "1 done" in out and "1 quarantined" in out
    [line] = [x for x in err.splitlines() if x.startswith("python -m flows.inbox: error:")]
    assert "broken.parquet: quarantined" in line and "not a readable Parquet file" in line
    assert main(argv) == 0 and "no new files" in capsys.readouterr().out


def test_inbox_cli_quarantines_a_non_utf8_name_a_symlink_loop_and_a_fifo_in_one_line_each(
    registered_model, session_home, test_table, box, tmp_path
):
    _bad_inbox_entries(box["inbox"])
    test_table[0].head(30).to_csv(box["inbox"] / "ok.csv", index=False)
    _old(box["inbox"] / "ok.csv")
    argv = ["--inbox", str(box["inbox"]), "--outbox", str(box["outbox"]), "--min-age", "1", "--max-attempts", "1"]
    argv += ["--model", "models:/test-model@champion", "--once"]
    r = cli_within(["-m", "flows.inbox", *argv], session_home, tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    assert "3 quarantined, 1 done" in r.stdout
    errors = [x for x in r.stderr.splitlines() if x.startswith("python -m flows.inbox: error:")]
    assert len(errors) == 3 and all(": quarantined: refused: " in x for x in errors), r.stderr
    names = [x.removeprefix("python -m flows.inbox: error: ").split(": quarantined")[0] for x in errors]
    assert names == ["bad\ufffd.csv", "loop.csv", "pipe.csv"]
    assert (box["outbox"] / "ok.anomalies.csv").is_file()

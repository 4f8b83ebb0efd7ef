"""The code location loads and its asset graph matches the contract."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from batchinfer_assets.definitions import build_definitions
from batchinfer_assets.partitions import daily_partitions
from batchinfer_assets.settings import Settings

CONTRACT_DAILY = {
    "raw_transactions",
    "transaction_features",
    "input_snapshot",
    "predictions",
    "drift_metrics",
    "published_predictions",
    "prediction_performance",
}
EXPECTED_DEPS = {
    "raw_transactions": set(),
    "transaction_features": {"raw_transactions"},
    "quarantined_transactions": {"raw_transactions"},
    "input_snapshot": {"transaction_features"},
    "predictions": {"input_snapshot", "scoring_model"},
    # The model version behind the day's scores is an input of what is computed from them.
    "drift_metrics": {"input_snapshot", "predictions", "scoring_model"},
    "published_predictions": {"predictions", "raw_transactions", "scoring_model"},
    # The version is a column of the predictions, and each version is judged against its own hold-out metric.
    "prediction_performance": {"predictions"},
}


@pytest.fixture(scope="module")
def defs(tmp_path_factory) -> dg.Definitions:
    return build_definitions(Settings.from_env({}, cwd=tmp_path_factory.mktemp("defs")))


def test_module_level_defs_load():
    from batchinfer_assets.definitions import defs as module_defs

    assert isinstance(module_defs, dg.Definitions)
    module_defs.get_repository_def().load_all_definitions()


def test_asset_graph_matches_contract(defs):
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    # delivery_deadline: external (never materialized), it carries the on-time checks that no launch may include.
    assert keys == CONTRACT_DAILY | {"scoring_model", "quarantined_transactions", "delivery_deadline"}

    for key, deps in EXPECTED_DEPS.items():
        node = graph.get(dg.AssetKey(key))
        assert {p.to_user_string() for p in node.parent_keys} == deps, key
        assert node.partitions_def == daily_partitions, key
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), key

    scoring_model = graph.get(dg.AssetKey("scoring_model"))
    assert scoring_model.is_observable and not scoring_model.is_materializable
    assert scoring_model.partitions_def is None


def test_partitions_are_utc_days_from_2025():
    assert daily_partitions.timezone == "UTC"
    assert daily_partitions.start == dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    assert daily_partitions.get_partition_keys_in_range(dg.PartitionKeyRange("2025-01-01", "2025-01-03")) == [
        "2025-01-01",
        "2025-01-02",
        "2025-01-03",
    ]


def test_quarantine_check_is_blocking(defs):
    graph = defs.resolve_asset_graph()
    check = dg.AssetCheckKey(dg.AssetKey("transaction_features"), "invalid_share_within_limit")
    assert check in graph.asset_check_keys
    assert graph.get(check).blocking


def test_schedule_requests_yesterday(defs):
    schedule = defs.get_schedule_def("daily_scoring_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=dt.datetime(2025, 3, 5, 2, 0, tzinfo=dt.timezone.utc))
    requests = list(schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == ["2025-03-04"]
    assert schedule.job_name == "daily_scoring_job"


def test_scoring_runs_in_the_single_slot_scoring_pool(defs):
    from dagster._core.instance.config import dagster_instance_config

    from batchinfer_assets.sensors import PREDICTIONS

    graph = defs.resolve_asset_graph()
    assert graph.assets_def_for_key(PREDICTIONS).op.pool == "scoring"
    config, _ = dagster_instance_config(str(Path(__file__).resolve().parents[1]))
    assert config["concurrency"]["pools"]["default_limit"] == 1


def test_the_scoring_job_leaves_freshness_to_its_sensor(defs):
    """Freshness checks judge yesterday's partition at the deadline; inside a run they would judge the run's days."""
    job = defs.resolve_job_def("daily_scoring_job")
    checks = {key.name for key in job.asset_layer.asset_graph.asset_check_keys}
    assert checks == {"invalid_share_within_limit", "matches_model_signature", "drift_check", "performance_within_floor"}


def test_any_selection_of_the_pipeline_can_run(defs):
    """Every asset of the pipeline can be selected alone or with any neighbours (no subsetting errors)."""
    graph = defs.resolve_asset_graph()
    pipeline = graph.assets_def_for_key(dg.AssetKey("predictions"))
    assert pipeline.can_subset
    for key in pipeline.keys:
        assert pipeline.subset_for({key}, selected_asset_check_keys=None).keys == {key}


def test_the_pipeline_checks_declare_no_partitions(defs):
    """The UI sums a partitioned check as failed while any day ever failed yet shows its latest verdict elsewhere: one
    check read Failed and Passed at once. Unpartitioned, every summary is the latest verdict (which names its day)."""
    graph = defs.resolve_asset_graph()
    pipeline = graph.assets_def_for_key(dg.AssetKey("predictions"))
    assert {spec.key.name: spec.partitions_def for spec in pipeline.check_specs} == dict.fromkeys(
        ["invalid_share_within_limit", "matches_model_signature", "drift_check", "performance_within_floor"]
    )


def test_the_ui_descriptions_read_as_plain_text(defs):
    """The UI shows descriptions as they are (backticks stay literal); every schedule and sensor says what it does."""
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    automation = {f"sensor {s.name}": s.description for s in repo.sensor_defs}
    automation |= {f"schedule {s.name}": s.description for s in repo.schedule_defs}
    assert [name for name, text in automation.items() if not text] == []
    shown = dict(automation)
    shown |= {f"job {j.name}": j.description for j in repo.get_all_jobs()}
    shown |= {f"asset {k.to_user_string()}": graph.get(k).description for k in graph.get_all_asset_keys()}
    shown |= {f"check {k.name}": graph.get_check_spec(k).description for k in graph.asset_check_keys}
    for name, resource in defs.resources.items():
        fields = getattr(type(resource), "model_fields", {})
        shown |= {f"resource {name}.{field}": info.description for field, info in fields.items()}
    assert [name for name, text in shown.items() if text and "`" in text] == []
    # The freshness sensor records verdicts itself: no target for the UI to print as a selection's repr.
    assert repo.get_sensor_def("freshness_checks_sensor").asset_selection is None


def test_loading_the_code_location_leaves_the_heavy_libraries_to_the_runs():
    """Every process that loads the code location (the webserver's code server, the daemon, each run) pays for what
    its modules import: scipy (0.8 s, drift only), torch, MLflow, scikit-learn and Ray load when a run needs them."""
    import subprocess
    import sys

    heavy = ("scipy", "torch", "mlflow", "sklearn", "ray")
    code = f"import sys, batchinfer_assets.definitions; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stdout

"""Lineage on a real instance and registry: staleness follows the version that scored each day, read back
through Dagster's own stale status, with the alias move observed by the model-version sensor."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG, StaleStatus
from dagster._utils.test.data_versions import get_stale_status_resolver

from batchinfer_assets.definitions import build_definitions, build_resources
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.model_observations import last_observed_model_version
from batchinfer_assets.sensors import model_version_sensor
from batchinfer_assets.tags import MODEL_VERSION_TAG
from batchinfer_assets_tests.assets.test_predictions import _register_version_two
from batchinfer_assets_tests.support import materialize_pipeline, materializations

DAY_A, DAY_B = "2025-01-02", "2025-01-03"
SCORED = ("predictions", "drift_metrics", "published_predictions")
EVERY_DAILY_ASSET = ["raw_transactions", "transaction_features", "quarantined_transactions", "input_snapshot", *SCORED]


@pytest.fixture
def own_registry(pipeline_settings, demo_training, tmp_path):
    """Pipeline settings with a private MLflow store holding the demo model as version 1 (alias champion)."""
    from batchinfer_assets.lib.demo_model import register_demo_model

    settings = dataclasses.replace(pipeline_settings, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    register_demo_model(tracking_uri=settings.tracking_uri, artifact_location=settings.artifact_location, training=demo_training)
    return settings


def _tick(settings, instance) -> dg.SensorResult | dg.SkipReason:
    """One evaluation of the sensor, its events recorded as the sensor daemon records them."""
    defs = build_definitions(settings)
    context = dg.build_sensor_context(instance=instance, resources={"model_registry": build_resources(settings)["model_registry"]})
    result = model_version_sensor(context)
    if isinstance(result, dg.SensorResult):
        for event in result.asset_events:
            instance.report_runless_asset_event(event)
    assert defs.get_sensor_def("model_version_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    return result


def _statuses(settings, instance, day: str) -> dict[str, StaleStatus]:
    resolver = get_stale_status_resolver(instance, list(build_definitions(settings).assets))
    return {asset: resolver.get_status(dg.AssetKey(asset), day) for asset in SCORED}


def test_a_day_is_stale_exactly_when_the_version_that_scored_it_is_no_longer_the_one_the_uri_resolves_to(
    own_registry, demo_training
):
    from batchinfer_assets.lib.model_loading import make_client

    settings = own_registry
    resources = build_resources(settings)
    fresh = dict.fromkeys(SCORED, StaleStatus.FRESH)
    stale = dict.fromkeys(SCORED, StaleStatus.STALE)
    with dg.instance_for_test() as instance:
        # Nothing observed the model yet (no daemon, as after `scripts/run_week.sh`): the run records the version
        # it resolved before scoring, so its day is fresh at once, and the sensor has nothing to add.
        assert last_observed_model_version(instance) is None
        materialize_pipeline(resources, EVERY_DAILY_ASSET, partition_key=DAY_A, instance=instance)
        assert last_observed_model_version(instance) == "1"
        assert _statuses(settings, instance, DAY_A) == fresh
        assert isinstance(_tick(settings, instance), dg.SkipReason), "the run observed version 1 already"

        # The alias moves and a run scores before the sensor's next tick: the run records the move itself.
        _register_version_two(settings, demo_training)
        materialize_pipeline(resources, EVERY_DAILY_ASSET, partition_key=DAY_B, instance=instance)
        assert last_observed_model_version(instance) == "2"
        assert _statuses(settings, instance, DAY_B) == fresh
        # The v1 day is stale, and so is everything computed from its predictions (the served rows included).
        assert _statuses(settings, instance, DAY_A) == stale
        resolver = get_stale_status_resolver(instance, list(build_definitions(settings).assets))
        causes = resolver.get_stale_root_causes(dg.AssetKey("published_predictions"), DAY_A)
        assert {c.key.asset_key for c in causes} == {dg.AssetKey("scoring_model")}, causes
        assert isinstance(_tick(settings, instance), dg.SkipReason), "the run observed version 2 already"

        # The alias moves with no run: the sensor observes it, and each day follows the version that scored it.
        client = make_client(settings.tracking_uri)
        client.set_registered_model_alias("fraud-detector", "champion", "1")
        observed = _tick(settings, instance)
        assert isinstance(observed, dg.SensorResult)
        assert observed.asset_events[0].tags[DATA_VERSION_TAG] == "1"
        assert _statuses(settings, instance, DAY_A) == fresh
        assert _statuses(settings, instance, DAY_B) == stale
        client.set_registered_model_alias("fraud-detector", "champion", "2")
        assert _tick(settings, instance).asset_events[0].tags[DATA_VERSION_TAG] == "2"
        assert _statuses(settings, instance, DAY_A) == stale

        # A pinned reproduction of the v1 day is what it is: scored with v1 while the URI says v2, not fresh.
        pinned = materialize_pipeline(resources, SCORED, partition_key=DAY_A, instance=instance, tags={MODEL_VERSION_TAG: "1"})
        meta = materializations(pinned, "predictions")[DAY_A].metadata
        assert meta["model_version"].value == "1"
        assert meta["lineage"].value == "pinned to version 1 by run tag batchinfer/model_version (the URI resolves to 2 now)"
        assert _statuses(settings, instance, DAY_A) == stale

        # Re-scoring it with what the URI resolves to makes it fresh again, downstream included.
        materialize_pipeline(resources, SCORED, partition_key=DAY_A, instance=instance)
        assert _statuses(settings, instance, DAY_A) == fresh


README_LINEAGE_QUERY = """
SELECT p.transaction_id, p.score, s.pinned_model_uri, s.artifact_checksum, s.input_snapshot_hash,
       s.code_version, s.engine, s.device, s.dagster_run_id
FROM predictions p JOIN scoring_runs s ON s.id = p.scoring_run_id
WHERE p.transaction_id = :transaction_id
"""


def test_which_model_and_input_scored_a_transaction_is_one_sql_join(pipeline_settings):
    import sqlalchemy as sa

    from batchinfer_assets.assets.pipeline import code_versions
    from batchinfer_assets.domain import load_domain

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert " ".join(README_LINEAGE_QUERY.split()) in " ".join(readme.split()), "the README documents this query"
    resources = build_resources(pipeline_settings)
    with dg.instance_for_test() as instance:
        result = materialize_pipeline(resources, EVERY_DAILY_ASSET, partition_key=DAY_A, instance=instance)
    scored = materializations(result, "predictions")[DAY_A]
    snapshot = materializations(result, "input_snapshot")[DAY_A]
    ids = PartitionedParquetStore(pipeline_settings.storage_uri).read_partition("predictions", DAY_A, columns=["transaction_id"])
    some_id = ids.column("transaction_id")[7].as_py()

    engine = sa.create_engine(pipeline_settings.predictions_db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text(README_LINEAGE_QUERY), {"transaction_id": some_id}).one()
    finally:
        engine.dispose()
    assert row.pinned_model_uri == "models:/fraud-detector/1"
    assert row.artifact_checksum == scored.metadata["model_artifact_checksum"].value
    assert row.input_snapshot_hash == snapshot.tags[DATA_VERSION_TAG] == scored.metadata["input_snapshot_hash"].value
    assert (row.code_version, row.engine, row.device) == (code_versions(load_domain(None))["predictions"], "local", "cpu")
    assert row.dagster_run_id == result.run_id


def _land(landing: Path, day: str, frame) -> None:
    folder = landing / f"dt={day}"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    frame.to_parquet(folder / "part-0.parquet", index=False)


def _published(settings, day: str) -> list[dict]:
    import sqlalchemy as sa

    engine = sa.create_engine(settings.predictions_db_url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT * FROM predictions WHERE dt = :dt ORDER BY transaction_id")
            return [dict(r) for r in conn.execute(query, {"dt": day}).mappings()]
    finally:
        engine.dispose()


def test_a_relanded_day_is_reproduced_from_its_archived_snapshot_byte_for_byte_in_its_own_folder(own_registry, demo_training, tmp_path):
    import datetime as dt

    from batchinfer_assets.domains.card_transactions.synthetic import LABEL_COLUMN, generate_day
    from batchinfer_assets.reproduce import IDENTICAL, reproduce_day
    from batchinfer_assets.sensors import publish_predictions_sensor

    landing = tmp_path / "landing"
    settings = dataclasses.replace(own_registry, landing_uri=str(landing), batch_size=500)
    first_landing = generate_day(dt.date.fromisoformat(DAY_A), rows=1500).drop(columns=[LABEL_COLUMN])
    _land(landing, DAY_A, first_landing)
    predictions = Path(settings.storage_uri) / "predictions" / f"dt={DAY_A}"
    with dg.instance_for_test() as instance:
        first = materialize_pipeline(build_resources(settings), EVERY_DAILY_ASSET, partition_key=DAY_A, instance=instance)
        original_bytes = {p.name: p.read_bytes() for p in predictions.glob("*.parquet")}
        original_hash = materializations(first, "predictions")[DAY_A].metadata["input_snapshot_hash"].value
        assert original_hash.startswith("sha256:")
        assert (Path(settings.storage_uri) / "input_snapshot_archive" / f"sha256={original_hash[7:]}").is_dir()

        # The alias moves and the day is re-landed (late corrections), then scored again with other settings and published.
        _register_version_two(settings, demo_training)
        _land(landing, DAY_A, first_landing.assign(amount=first_landing["amount"] * 1.1))
        rescored_settings = dataclasses.replace(settings, batch_size=64)
        again = materialize_pipeline(build_resources(rescored_settings), EVERY_DAILY_ASSET, partition_key=DAY_A, instance=instance)
        assert materializations(again, "predictions")[DAY_A].metadata["input_snapshot_hash"].value != original_hash
        live_bytes = {p.name: p.read_bytes() for p in predictions.glob("*.parquet")}
        assert live_bytes != original_bytes
        live_rows = _published(settings, DAY_A)
        assert len(live_rows) == 1500 and {row["model_version"] for row in live_rows} == {"2"}
        latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("predictions")), limit=1).records[0]

        # The reproduction: version 1, the archived input and batch size 500, from what the first run recorded.
        status, verdict, result = reproduce_day(build_definitions(rescored_settings), instance, DAY_A)
        assert result.success and status == IDENTICAL, verdict
        assert verdict.startswith(f"identical to the original scoring (run {first.run_id})"), verdict
        own = Path(settings.storage_uri) / "reproductions" / result.run_id / "predictions" / f"dt={DAY_A}"
        assert {p.name: p.read_bytes() for p in own.glob("*.parquet")} == original_bytes
        # What users read is untouched: the live files, the database, the day's latest materialization.
        assert {p.name: p.read_bytes() for p in predictions.glob("*.parquet")} == live_bytes
        assert _published(settings, DAY_A) == live_rows
        now = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("predictions")), limit=1).records[0]
        assert now.storage_id == latest.storage_id
        assert result.get_asset_materialization_events() == [] and result.get_asset_observation_events() == []
        assert instance.get_run_by_id(result.run_id).tags["batchinfer/reproduces"] == first.run_id
        context = dg.build_sensor_context(instance=instance, repository_def=build_definitions(settings).get_repository_def())
        outcome = publish_predictions_sensor(context)
        assert not getattr(outcome, "run_requests", None), outcome


def test_a_reproduction_whose_archived_input_was_pruned_is_refused_and_writes_nothing(own_registry, tmp_path):
    import shutil

    from batchinfer_assets.reproduce import CANNOT, reproduce_day

    settings = own_registry
    with dg.instance_for_test() as instance:
        first = materialize_pipeline(build_resources(settings), EVERY_DAILY_ASSET, partition_key=DAY_A, instance=instance)
        snapshot_hash = materializations(first, "predictions")[DAY_A].metadata["input_snapshot_hash"].value
        shutil.rmtree(Path(settings.storage_uri) / "input_snapshot_archive" / f"sha256={snapshot_hash[7:]}")
        live = {p.name: p.read_bytes() for p in (Path(settings.storage_uri) / "predictions" / f"dt={DAY_A}").glob("*.parquet")}
        status, reason, result = reproduce_day(build_definitions(settings), instance, DAY_A)
    assert status == CANNOT and not result.success
    assert reason.startswith(f"cannot reproduce {DAY_A}: no archived input snapshot {snapshot_hash}"), reason
    assert "nothing was written" in reason
    assert not (Path(settings.storage_uri) / "reproductions").exists()
    assert {p.name: p.read_bytes() for p in (Path(settings.storage_uri) / "predictions" / f"dt={DAY_A}").glob("*.parquet")} == live


def test_an_archived_snapshot_is_pruned_after_its_retention_unless_a_published_day_uses_it(tmp_path):
    import time

    import pyarrow as pa

    from batchinfer_assets.lib.snapshot_archive import SnapshotArchive

    store = PartitionedParquetStore(tmp_path)
    archive = SnapshotArchive(store)
    for day, content_hash in (("2025-01-01", "sha256:" + "a" * 64), ("2025-01-02", "sha256:" + "b" * 64), ("2025-01-03", "sha256:" + "c" * 64)):
        store.write_partition("input_snapshot", day, pa.table({"transaction_id": [day], "x": [1.0]}))
        assert archive.keep(day, content_hash) is True
        assert archive.keep(day, content_hash) is False, "kept once per hash"
        # Locally the archive holds the scored files themselves (hard links): no bytes copied, same layout.
        original = store.partition_files("input_snapshot", day)[0]
        archived = tmp_path / "input_snapshot_archive" / f"sha256={content_hash[7:]}" / original.name
        assert archived.stat().st_ino == original.stat().st_ino
    ten_days_later = time.time() + 10 * 86_400
    assert archive.prune({"sha256:" + "b" * 64}, retention_days=30, now=ten_days_later) == []
    assert archive.prune({"sha256:" + "b" * 64}, retention_days=5, now=ten_days_later) == ["sha256:" + "a" * 64, "sha256:" + "c" * 64]
    assert archive.has("sha256:" + "b" * 64) and not archive.has("sha256:" + "a" * 64)
    with pytest.raises(LookupError, match=f"no archived input snapshot sha256:{'a' * 64}"):
        archive.require("sha256:" + "a" * 64)

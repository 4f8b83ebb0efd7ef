"""A domain's vocabulary and features as they change: values outside a vocabulary are counted, and a model that reads a
feature older snapshots lack gets one message naming every affected day and the backfill that fixes them."""

from __future__ import annotations

import dataclasses
import datetime as dt

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from batchinfer_assets.assets.pipeline import build_daily_pipeline
from batchinfer_assets.assets.predictions import scoring_model
from batchinfer_assets.domains.card_transactions import domain as CARD
from batchinfer_assets.lib.model_loading import ensure_experiment, log_torch_model, make_client, mlflow_uris
from batchinfer_assets.project import build_resources
from batchinfer_assets.settings import Settings

DAY = "2025-01-04"


def run(settings: Settings, domain, selection, *, day: str | None = DAY, days: tuple[str, str] | None = None, instance=None):
    tags = {} if days is None else {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[1]}
    return dg.materialize(
        [scoring_model, build_daily_pipeline(domain)],
        resources=build_resources(settings),
        partition_key=None if days else day,
        selection=selection,
        tags=tags,
        instance=instance,
        raise_on_error=False,
    )


def test_values_outside_a_vocabulary_are_counted_per_day_and_warned_about(tmp_path, demo_model_store):
    settings = dataclasses.replace(
        demo_model_store, home=tmp_path, storage_uri=str(tmp_path / "storage"), landing_uri=str(tmp_path / "landing"),
        predictions_db_url=f"sqlite:///{tmp_path / 'predictions.db'}",
    )  # fmt: skip
    frame = CARD.synthetic.generate_day(dt.date.fromisoformat(DAY), 1000, 20250101)
    # Four categories the card features do not know, on every other row.
    frame.loc[::2, "merchant_category"] = np.resize(["pet_shops", "florists", "bookshops", "toys"], len(frame.loc[::2]))
    (tmp_path / "landing" / f"dt={DAY}").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "landing" / f"dt={DAY}" / "part-0.parquet")

    with dg.instance_for_test() as instance:
        result = run(settings, CARD, ["raw_transactions", "transaction_features", "quarantined_transactions"], instance=instance)
        logs = [e.user_message for e in instance.all_logs(result.run_id) if e.level >= 30]

    assert result.success
    (features,) = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "transaction_features"]
    assert features.metadata["outside_vocabulary"].value == {"merchant_category": 500}
    assert any("500 of 1,000 transactions (50.0%) have a merchant_category outside the domain's vocabulary" in line for line in logs)


def extended_features(rows: pd.DataFrame) -> pd.DataFrame:
    return CARD.features(rows).assign(amount_is_round=(rows["amount"] % 1 == 0).astype(np.float32).to_numpy())


def test_a_model_reading_a_feature_older_snapshots_lack_names_every_affected_day_and_the_backfill(tmp_path, pipeline_settings):
    with dg.instance_for_test() as instance:
        scored = run(pipeline_settings, CARD, dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"), days=("2025-01-01", "2025-01-03"), instance=instance)
        assert scored.success

        # The domain gains a feature and a model that reads it is registered as the one to score with.
        extended = dataclasses.replace(
            CARD,
            features=extended_features,
            feature_descriptions={**CARD.feature_descriptions, "amount_is_round": "1 when the amount has no cents"},
        )
        columns = extended.feature_columns
        linear = torch.nn.Sequential(torch.nn.Linear(len(columns), 1), torch.nn.Sigmoid()).eval()
        client = make_client(pipeline_settings.tracking_uri)
        experiment = ensure_experiment(client, "evolution", str(tmp_path / "artifacts"))
        import mlflow

        with mlflow_uris(pipeline_settings.tracking_uri), mlflow.start_run(experiment_id=experiment):
            example = np.random.default_rng(0).normal(size=(4, len(columns))).astype(np.float32)
            log_torch_model(linear, input_columns=columns, example=example, serialization_format="pickle", registered_model_name="with-round-amounts")
        client.set_registered_model_alias("with-round-amounts", "champion", "1")
        settings = dataclasses.replace(pipeline_settings, model_uri="models:/with-round-amounts@champion")

        later = run(settings, extended, dg.AssetSelection.all() - dg.AssetSelection.assets("scoring_model"), instance=instance)
        warnings = [e.user_message for e in instance.all_logs(later.run_id) if e.level >= 30]

    # The day is scored, judged and published with the new feature; the older days are named once, with the fix.
    assert later.success
    (warning,) = [w for w in warnings if "trailing reference" in w]
    assert "snapshots of 3 day(s) (2025-01-01, 2025-01-02, 2025-01-03) lack column(s) ['amount_is_round']" in warning
    assert "dg launch --assets 'transaction_features+' --partition-range 2025-01-01...2025-01-03" in warning
    (drift,) = [e.materialization for e in later.get_asset_materialization_events() if e.asset_key.to_user_string() == "drift_metrics"]
    assert drift.metadata["trailing_days"].value == 0 and "lack column(s) ['amount_is_round']" in drift.metadata["notes"].value

"""Whether the model is still right: each scored day's predictions against the labels known so far.

Labels arrive days to weeks after a row's day, so a day is evaluated again whenever new labels land
(`prediction_performance_sensor`). Until they do, the unlabelled share is judged by an estimate from the
scores alone (CBPE, see `lib/performance.py`), which holds only for a calibrated model. The day's model
version comes from its predictions, never from the run's model: this stage loads no model, and a day scored
by an older version is judged against that version's own hold-out figure. Predictions and labels are joined on the
domain's id column; the label is the domain's label column. A day of more predictions than `day_chunk_rows` is streamed,
joined batch by batch and spilled into buckets of score ranges, evaluated from the highest range down: the same figures
as the whole day's, in the memory of one bucket. A day of more labels than `day_chunk_rows` is read piece by piece into
id-range buckets on disk (`lib/label_buckets.py`); the predictions are split at the same ids, each range joined to its
own labels, and the joined rows evaluated by score range in the day's row order: the same figures, counts and labels
hash, in the memory of one bucket of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from batchinfer_assets.assets._run import DayState, PipelineRun
from batchinfer_assets.assets.stage import Stage
from batchinfer_assets.domain import Domain
from batchinfer_assets.lib import labels as labels_lib
from batchinfer_assets.lib import performance as performance_lib
from batchinfer_assets.lib.hashing import ContentHasher, table_content_hash
from batchinfer_assets.lib.label_buckets import IdSample, SpilledLabels
from batchinfer_assets.lib.labels import DayLabels, labels_schema, labels_table
from batchinfer_assets.lib.model_loading import ModelNotFoundError
from batchinfer_assets.lib.parquet_store import PartitionedParquetStore
from batchinfer_assets.lib.performance import ECE_BINS, ESTIMATED, PERFORMANCE_COLUMNS, REALIZED, VersionPerformance
from batchinfer_assets.lib.spill import DayBuckets, bucket_count
from batchinfer_assets.tables import PERFORMANCE_CHECK, PREDICTION_PERFORMANCE, PREDICTIONS

PERFORMANCE_SCHEMA = pa.schema(
    [
        ("model_version", pa.string()),
        ("kind", pa.string()),
        ("n_predictions", pa.int64()),
        ("n_labelled", pa.int64()),
        ("label_coverage", pa.float64()),
        *((name, pa.float64()) for name in PERFORMANCE_COLUMNS[5:]),
    ]
)
# A day's predictions as its metrics need them: version (a code in order of appearance), score, flagged, label or -1.
_ENCODED = pa.schema([("version", pa.int32()), ("score", pa.float64()), ("flagged", pa.int8()), ("y", pa.int8())])
# The same with each row's number in the day, for rows joined out of order (by id range) and put back in it.
_ENCODED_ROWS = _ENCODED.append(pa.field("row", pa.int64()))
# A day's predictions split by id range before their join: id (as text, as labels hold ids), the encoding but y, row.
_BY_ID = pa.schema([("id", pa.string()), *(_ENCODED.field(c) for c in ("version", "score", "flagged")), ("row", pa.int64())])
# Rows read from storage at a time when a day is evaluated in score ranges.
_READ_ROWS = 1 << 20
# The labels the evaluation saw, as the re-evaluation sensor compares them.
LABELS_FINGERPRINT_KEY = "labels_fingerprint"
# How many labels were read, positive, and set aside by kind (unknown ids, duplicates, contradictory, misdated).
LABEL_COUNTS_KEY = "label_counts"
# What `performance_within_floor` compared (the judged ROC AUC, the floor and what it came from, the estimate's gap).
JUDGEMENT_KEY = "judgement"

PREDICTION_PERFORMANCE_SPEC = dg.AssetSpec(
    PREDICTION_PERFORMANCE,
    deps=[PREDICTIONS],
    description=(
        "Realized performance of the day's predictions from the labels known so far, and an estimate for the "
        "unlabelled share, per model version."
    ),
    kinds={"numpy", "parquet"},
)

PERFORMANCE_CHECK_SPEC = dg.AssetCheckSpec(
    PERFORMANCE_CHECK,
    asset=PREDICTION_PERFORMANCE,
    blocking=False,
    description=(
        "Warns when a day's ROC AUC (realized, or estimated while too few positives are labelled) is below the model's "
        "hold-out ROC AUC minus the tolerance."
    ),
)


@dataclass(frozen=True)
class Judgement:
    """One model version's day against its floor."""

    model_version: str
    auc: float | None
    basis: str
    floor: float | None
    holdout: float | None
    estimate_gap: float | None

    @property
    def below(self) -> bool:
        return self.auc is not None and self.floor is not None and self.auc < self.floor

    def sentence(self) -> str:
        if self.auc is None:
            return f"version {self.model_version}: no ROC AUC to judge ({self.basis})"
        if self.floor is None:
            return f"version {self.model_version}: {self.basis} ROC AUC {self.auc:.3f}, no hold-out metric to compare against"
        against = f"hold-out {self.holdout:.3f}" if self.holdout is not None else "the configured absolute floor"
        relation = "BELOW" if self.below else "at or above"
        sentence = f"version {self.model_version}: {self.basis} ROC AUC {self.auc:.3f} {relation} floor {self.floor:.3f} ({against})"
        if self.basis.startswith(ESTIMATED) and self.estimate_gap is not None:
            # What the estimate is worth for this model, measured on the few rows already labelled.
            sentence += f"; on the rows labelled so far the estimate was off by {self.estimate_gap:+.3f}"
        return sentence


def performance_day(run: PipelineRun, state: DayState) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """Join the day's predictions with its known labels, store the metrics per model version, and judge them."""
    day, domain = state.day, run.domain
    rows_scored = run.store.row_count(PREDICTIONS, day)
    # Taken before the read: a file landing meanwhile changes the fingerprint, and the sensor evaluates the day again.
    fingerprint = run.labels.label_files_fingerprint(state.date, domain)
    labels = run.labels.labels_within(state.date, domain, run.day_chunk_rows, run.spill_dir)
    recorded_version = run.latest_version(PREDICTIONS, day, state)
    tally = _Tally(domain, hash_predictions=recorded_version is None)
    if isinstance(labels, SpilledLabels):
        with labels:
            known = _feed_by_id_range(run, day, tally, labels, rows_scored)
    else:
        tally.know(labels)
        if rows_scored <= run.day_chunk_rows:
            tally.feed(tally.encode(run.store.read_partition(PREDICTIONS, day, columns=tally.columns)))
        else:
            _feed_by_score_range(run, day, tally, rows_scored)
        known = _LabelsSeen.of(labels, tally.unknown_ids)

    versions = sorted(tally.versions)
    # The run of the registration that scored the day, as recorded: its version number may name another model now.
    scored = run.recorded_metadata(PREDICTIONS, state)
    scored_run = {str(scored["model_version"]): scored.get("model_run_id") or None} if "model_version" in scored else {}
    rows: list[dict] = []
    judgements: list[Judgement] = []
    for version in versions:
        performance = tally.versions[version]
        realized, estimated = performance.rows()
        rows += [realized, estimated]
        judgements.append(_judge(run, tally.names[version], scored_run.get(version), performance, realized, estimated))
    table = pa.Table.from_pylist(rows, schema=PERFORMANCE_SCHEMA)
    uri = run.store.write_partition(PREDICTION_PERFORMANCE, day, table)
    n_predictions = sum(p.realized.rows + p.estimated.rows for p in tally.versions.values())
    n_labelled = sum(p.realized.rows for p in tally.versions.values())
    positives = round(sum(p.realized.positives for p in tally.versions.values()))

    below = [j for j in judgements if j.below]
    if not judgements:
        verdict = "no predictions to judge"
    else:
        verdict = ("PERFORMANCE BELOW FLOOR: " if below else "performance within floor: ") + "; ".join(j.sentence() for j in judgements)
    latest = known.latest_labelled_at
    run.context.log.info(
        f"{day}: {n_labelled} of {n_predictions} scored {domain.rows_name} labelled ({domain.label_column}), latest label {latest.isoformat() if latest is not None else 'none yet'}; {verdict}"
    )
    if below:
        run.context.log.warning(f"{day}: {verdict}")
    # The day's headline figures for the version that scored most rows; only they are numbers (see `_headline`).
    main = max(range(len(judgements)), key=lambda k: rows[2 * k]["n_predictions"], default=None)
    headline = _headline(rows[2 * main], judgements[main], run.performance_policy.tolerance) if main is not None else {}
    metadata: dict[str, object] = {
        **headline,
        # One entry, not nine numbers: the Plots tab draws every number, and these are flat or zero on a good day.
        LABEL_COUNTS_KEY: dg.MetadataValue.json(
            {
                "predictions": n_predictions,
                "labelled": n_labelled,
                "read": known.rows_read,
                "positives": positives,
                "unknown_ids": known.unknown_ids,
                "duplicates": known.duplicates,
                "contradictory": known.contradictory,
                "in_future": known.future,
                "before_day": known.before_day,
            }
        ),
        "latest_labelled_at": latest.isoformat() if latest is not None else "none yet",
        "labels_source": run.labels.location(state.date),
        LABELS_FINGERPRINT_KEY: fingerprint,
        "verdict": verdict,
        "method": calibration_note(domain),
        "model_versions": dg.MetadataValue.json(versions),
        "performance": dg.MetadataValue.md(performance_markdown(rows)),
        "uri": dg.MetadataValue.path(uri),
    }
    if known.unknown_ids:
        run.context.log.warning(
            f"{day}: {known.unknown_ids} label(s) name {domain.rows_name} that were not scored ({domain.id_column} not in the "
            "day's predictions); counted, not joined"
        )
    if known.future or known.before_day:
        run.context.log.warning(
            f"{day}: ignored {known.future} label(s) dated in the future and {known.before_day} dated before the "
            f"day of their {domain.rows_name} in {run.labels.location(state.date)}: their labelled_at is wrong; fix the "
            "labelling export"
        )
    # Re-landed labels change the content hash, so the day gets a new data version even with the same predictions.
    predictions_version = recorded_version or tally.predictions_hash()
    yield run.materialization(
        PREDICTION_PERFORMANCE,
        state,
        metadata,
        inputs=(PREDICTIONS,),
        data_version=performance_version(
            run.code_versions[PREDICTION_PERFORMANCE], predictions_version, known.content_hash
        ),
    )
    judged = headline[JUDGEMENT_KEY].value if headline else {}
    yield run.check(
        PREDICTION_PERFORMANCE,
        PERFORMANCE_CHECK,
        state,
        passed=not below,
        blocking=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict,
        metadata={
            # Numbers are drawn as the check's plots, sorted by key: the judged figure first, the flat floor in `judgement`.
            **{k: v for k, v in judged.items() if k == "judged_roc_auc"},
            **{k: v for k, v in headline.items() if k in ("label_coverage", JUDGEMENT_KEY)},
            "judged_on": dg.MetadataValue.json({j.model_version: j.basis for j in judgements}),
        },
    )


@dataclass(frozen=True)
class _LabelsSeen:
    """What the evaluation saw of the day's labels: the counts and content hash its metadata and data version record."""

    rows_read: int
    duplicates: int
    contradictory: int
    future: int
    before_day: int
    unknown_ids: int
    latest_labelled_at: pd.Timestamp | None
    content_hash: str

    @classmethod
    def of(cls, known: DayLabels, unknown_ids: int) -> _LabelsSeen:
        return cls(
            rows_read=known.rows_read,
            duplicates=known.duplicates,
            contradictory=known.contradictory,
            future=known.future,
            before_day=known.before_day,
            unknown_ids=unknown_ids,
            latest_labelled_at=known.latest_labelled_at,
            content_hash=table_content_hash(labels_table(known)),
        )


class _Tally:
    """The day's predictions joined to its known labels piece by piece, and their metrics per model version."""

    def __init__(self, domain: Domain, hash_predictions: bool) -> None:
        self.columns = [domain.id_column, "score", "label", "model_name", "model_version"]
        self.versions: dict[str, VersionPerformance] = {}
        self.names: dict[str, str] = {}
        self._known: DayLabels | None = None
        self._label_ids: pa.Array | None = None
        self._codes: dict[str, int] = {}
        self._hasher = ContentHasher() if hash_predictions else None

    def know(self, known: DayLabels) -> None:
        """The day's labels, held whole, for `encode` to join."""
        self._known = known
        self._truth = known.labels[known.label_column].to_numpy(dtype=np.int8)
        self._matched = np.zeros(len(self._truth), dtype=bool)

    def code(self, predictions: pa.Table | pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A piece of the day's predictions (in `columns`, in the day's order) as (version code, score, flagged)."""
        # Versions coded in Arrow: turning a million-row string column into numpy strings took 0.6 s a column.
        versions = predictions.column("model_version")
        present = pc.unique(versions)
        local = pc.index_in(versions, value_set=present).to_numpy(zero_copy_only=False)
        codes = np.empty(len(present), dtype=np.int32)
        for k, value in enumerate(present.to_pylist()):
            version = str(value)
            if version not in self._codes:
                self._codes[version] = len(self._codes)
                self.versions[version] = VersionPerformance(version)
                self.names[version] = predictions.column("model_name")[int(np.argmax(local == k))].as_py() or ""
            codes[k] = self._codes[version]
        if self._hasher is not None:
            self._hasher.update(predictions)
        return (
            codes[local],
            predictions.column("score").to_numpy(zero_copy_only=False).astype(np.float64),
            predictions.column("label").to_numpy(zero_copy_only=False).astype(np.int8),
        )

    def encode(self, predictions: pa.Table | pa.RecordBatch) -> pa.Table:
        """A piece of the day's predictions as (version code, score, flagged, label or -1), joined to the labels held."""
        assert self._known is not None, "encode joins the labels held whole: call know() first"
        ids = predictions.column(self.columns[0])
        if self._label_ids is None:
            self._label_ids = pa.array(self._known.labels[self._known.id_column]).cast(ids.type)
        y = _join(ids, self._label_ids, self._truth, self._matched)
        codes, scores, flagged = self.code(predictions)
        return pa.table([pa.array(codes), pa.array(scores), pa.array(flagged), pa.array(y)], schema=_ENCODED)

    def feed(self, piece: pa.Table) -> None:
        """Encoded rows to their versions' metrics; each piece scored at or below every earlier one."""
        codes, scores, flagged, y = (piece.column(c).to_numpy() for c in _ENCODED.names)
        versions, present = list(self._codes), np.unique(codes)
        if len(present) == 1:
            # The usual day: one version, no copies.
            self.versions[versions[present[0]]].add(scores, flagged, y)
            return
        for code in present:
            mine = codes == code
            self.versions[versions[code]].add(scores[mine], flagged[mine], y[mine])

    @property
    def unknown_ids(self) -> int:
        """Labels that name ids that were not scored."""
        return int(len(self._matched) - self._matched.sum())

    def predictions_hash(self) -> str:
        """The content hash of the predictions' columns read, for a day whose predictions have no recorded version."""
        assert self._hasher is not None
        return self._hasher.hexdigest()


def _join(ids: pa.Array | pa.ChunkedArray, label_ids: pa.Array, truth: np.ndarray, matched: np.ndarray) -> np.ndarray:
    """Each id's label (-1 where none is known yet), marking in `matched` the labels (one per id) that name a scored id."""
    y = np.full(len(ids), -1, dtype=np.int8)
    # The smaller side is hashed: a batch of a big day has fewer ids than the day has labels (hashing the labels
    # again for each of a 10M-row day's batches made the day in batches 60% slower than whole). Only for ids
    # that are each there once, as the pipeline writes them: a repeated id gets its label at every occurrence.
    if len(ids) < len(label_ids) and pc.count_distinct(ids, mode="all").as_py() == len(ids):
        row = pc.index_in(label_ids, value_set=ids)
        found = row.is_valid().to_numpy(zero_copy_only=False)
        y[row.drop_null().to_numpy()] = truth[found]
        matched |= found
        return y
    position = pc.index_in(ids, value_set=label_ids)
    hit = position.drop_null().to_numpy()
    y[position.is_valid().to_numpy(zero_copy_only=False)] = truth[hit]
    matched[hit] = True
    return y


def _feed_by_score_range(run: PipelineRun, day: str, tally: _Tally, rows: int) -> None:
    """A day of more than `day_chunk_rows` predictions to the tally in buckets of score ranges spilled to local disk,
    from the highest range down: tied scores always share a bucket, so the metrics are those of the whole day."""
    cuts = _score_cuts(run.store, day, bucket_count(rows, run.day_chunk_rows))
    run.context.log.info(
        f"{day}: {rows:,} predictions, over day_chunk_rows={run.day_chunk_rows:,}: evaluated in {len(cuts) + 1} score ranges"
    )
    with DayBuckets(len(cuts) + 1, _ENCODED, run.spill_dir) as buckets:
        batches = run.store.iter_batches(PREDICTIONS, day, batch_size=min(run.day_chunk_rows, _READ_ROWS), columns=tally.columns)
        for batch in batches:
            piece = tally.encode(batch)
            # Bucket 0 holds the highest scores: buckets are read back in their order.
            buckets.add(piece, len(cuts) - np.searchsorted(cuts, piece.column("score").to_numpy(), side="right"))
        for part in buckets:
            tally.feed(part)


def _feed_by_id_range(run: PipelineRun, day: str, tally: _Tally, labels: SpilledLabels, rows: int) -> _LabelsSeen:
    """Labels past `day_chunk_rows`: the predictions split at the labels' id cuts into buckets on local disk, each id
    range joined to its own labels alone, and the joined rows evaluated by score range, from the highest down, each
    range in the day's row order (so the figures are those of the day in memory)."""
    chunk = run.day_chunk_rows
    ids = IdSample()
    cuts = _score_cuts(run.store, day, bucket_count(rows, chunk), ids=(tally.columns[0], ids))
    labels.split(bucket_count(labels.kept + rows, chunk), with_samples=[ids])
    run.context.log.info(
        f"{day}: {labels.kept:,} labels and {rows:,} predictions, over day_chunk_rows={chunk:,}: joined in {labels.count} id "
        f"ranges, evaluated in {len(cuts) + 1} score ranges"
    )
    hasher, duplicates, contradictory, unknown, latest = ContentHasher(), 0, 0, 0, None
    with DayBuckets(labels.count, _BY_ID, run.spill_dir) as by_id, DayBuckets(len(cuts) + 1, _ENCODED_ROWS, run.spill_dir) as by_score:
        row = 0
        for batch in run.store.iter_batches(PREDICTIONS, day, batch_size=min(chunk, _READ_ROWS), columns=tally.columns):
            codes, scores, flagged = tally.code(batch)
            id_text = pc.cast(batch.column(tally.columns[0]), pa.string())
            numbers = np.arange(row, row + batch.num_rows, dtype=np.int64)
            row += batch.num_rows
            piece = pa.table([id_text, pa.array(codes), pa.array(scores), pa.array(flagged), pa.array(numbers)], schema=_BY_ID)
            by_id.add(piece, labels.bucket_of(id_text))
        for k in range(labels.count):
            known, part = labels.bucket(k), by_id.take(k)
            hasher.update(labels_table(known))
            duplicates, contradictory = duplicates + known.duplicates, contradictory + known.contradictory
            if known.latest_labelled_at is not None and (latest is None or known.latest_labelled_at > latest):
                latest = known.latest_labelled_at
            truth = known.labels[known.label_column].to_numpy(dtype=np.int8)
            matched = np.zeros(len(truth), dtype=bool)
            label_ids = pa.array(known.labels[known.id_column], pa.string())
            y = _join(part.column("id"), label_ids, truth, matched)
            unknown += int(len(matched) - matched.sum())
            scores = part.column("score").to_numpy()
            joined = pa.table([*part.select(["version", "score", "flagged"]).columns, pa.array(y), part.column("row")], schema=_ENCODED_ROWS)
            by_score.add(joined, len(cuts) - np.searchsorted(cuts, scores, side="right"))
        for part in by_score:
            in_day_order = part.take(pa.array(np.argsort(part.column("row").to_numpy(), kind="stable")))
            tally.feed(in_day_order.drop_columns(["row"]))
    return _LabelsSeen(
        rows_read=labels.rows_read,
        duplicates=duplicates,
        contradictory=contradictory,
        future=labels.future,
        before_day=labels.before_day,
        unknown_ids=unknown,
        latest_labelled_at=latest,
        content_hash=hasher.hexdigest(labels_schema(labels.id_column, labels.label_column)),
    )


def _score_cuts(store: PartitionedParquetStore, day: str, parts: int, ids: tuple[str, IdSample] | None = None) -> np.ndarray:
    """Scores that split the day's scores into about `parts` ranges of equal size: quantiles of every `parts`-th score.
    With `ids` (a column and a sample), the same read samples the day's ids."""
    sample, seen = [], 0
    columns = ["score"] if ids is None else ["score", ids[0]]
    for batch in store.iter_batches(PREDICTIONS, day, batch_size=_READ_ROWS, columns=columns):
        scores = batch.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        sample.append(scores[(-seen) % parts :: parts])
        seen += len(scores)
        if ids is not None:
            ids[1].add(pc.cast(batch.column(ids[0]), pa.string()))
    if parts <= 1 or not sample:
        return np.empty(0, dtype=np.float64)
    return np.unique(np.quantile(np.concatenate(sample), np.arange(1, parts) / parts))


def performance_version(code_version: str, predictions_version: str, labels_hash: str) -> str:
    """The data version of a day's performance: what decides its rows (code, predictions, labels known)."""
    return hashlib.sha256("\0".join((code_version, predictions_version, labels_hash)).encode()).hexdigest()[:24]


def _judge(
    run: PipelineRun, name: str, model_run_id: str | None, performance: VersionPerformance, realized: dict, estimated: dict
) -> Judgement:
    """Realized ROC AUC when enough positive and negative rows are labelled, else the estimate, against the floor."""
    policy = run.performance_policy
    try:
        holdout = run.model_registry.version_metric(
            name, performance.model_version, policy.holdout_metric, run_id=model_run_id
        )
    except ModelNotFoundError as error:
        # The metrics need only the predictions and the labels: a deleted version loses its hold-out figure, not its day.
        run.context.log.warning(f"{error}: no hold-out {policy.holdout_metric} to judge against; the day's metrics are still computed")
        holdout = None
    floor = holdout - policy.tolerance if holdout is not None else policy.absolute_floor
    version, gap = performance.model_version, performance.estimate_gap()
    positives, negatives = int(performance.realized.positives), int(performance.realized.negatives)
    if min(positives, negatives) >= policy.min_labelled_positives and realized["roc_auc"] is not None:
        return Judgement(version, realized["roc_auc"], REALIZED, floor, holdout, gap)
    basis = estimate_basis(run.domain, positives, negatives, policy.min_labelled_positives)
    return Judgement(version, estimated["roc_auc"], basis, floor, holdout, gap)


def estimate_basis(domain: Domain, positives: int, negatives: int, needed: int) -> str:
    """Why a day is judged on the estimate: too few labelled positives (or negatives) to trust its realized ROC AUC."""
    counts = ((positives, "positives", 1), (negatives, "negatives", 0))
    short = [f"{count} labelled {kind} ({domain.label_column}={value})" for count, kind, value in counts if count < needed]
    return f"{ESTIMATED} (only {' and '.join(short)}, {needed} needed)"


def calibration_note(domain: Domain) -> str:
    """How the day's figures are computed, for the materialization's metadata."""
    return (
        f"estimated = CBPE on the unlabelled rows (each score taken as P({domain.label_column}=1)): valid only if the "
        f"model is calibrated; ece over {ECE_BINS} equal-width score bins; 95% ROC AUC interval by Hanley-McNeil"
    )


def _headline(realized: dict, judgement: Judgement, tolerance: float) -> dict[str, object]:
    """The figures to follow over days as the only numbers, so the Plots tab (which draws every number, sorted by key)
    opens on `label_coverage` beside `roc_auc`; what the check compared, in one `judgement` entry.

    The other figures of every version's realized and estimated rows are in the `performance` table. A figure the
    day cannot define (e.g. no labels yet) is left out, not zero.
    """
    plotted = {name: realized[name] for name in ("roc_auc", "roc_auc_low", "roc_auc_high")}
    judged = {
        "judged_roc_auc": judgement.auc,
        "floor": judgement.floor,
        "holdout_roc_auc": judgement.holdout,
        "tolerance": tolerance,
        "estimate_gap": judgement.estimate_gap,
    }
    out: dict[str, object] = {"label_coverage": float(realized["label_coverage"])}
    out.update({k: round(float(v), 6) for k, v in plotted.items() if v is not None})
    out["model_version"] = judgement.model_version
    out[JUDGEMENT_KEY] = dg.MetadataValue.json({k: round(float(v), 6) for k, v in judged.items() if v is not None})
    return out


def performance_markdown(rows: list[dict]) -> str:
    """The day's rows as a small table for the materialization page."""
    def cell(value: object) -> str:
        return "" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    columns = ["model_version", "kind", "n_labelled", "label_coverage", "roc_auc", "roc_auc_low", "roc_auc_high", "pr_auc", "precision", "recall", "ece"]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


STAGE = Stage(
    assets=(PREDICTION_PERFORMANCE,),
    day=performance_day,
    specs=lambda domain: [PREDICTION_PERFORMANCE_SPEC],
    checks=(PERFORMANCE_CHECK_SPEC,),
    reads=(PREDICTIONS,),
    code=(performance_lib, labels_lib),
    domain_declaration=True,
)

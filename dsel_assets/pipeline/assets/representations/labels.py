"""Labels for MIG (docs/methods/mig.md): provided tags where the data has them (a `tags` list in
a record), otherwise derived as k-means clusters of the sentence embeddings. The label
vocabulary stores how each label was made and its embedding."""

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from dsel_assets.core.labels import cluster_labels, provided_labels
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import POOL, REPRESENTATIONS, SENTENCE_EMBEDDINGS
from dsel_assets.pipeline.stored import load_vectors
from resources.lance_store import LanceStore
from resources.models import SentenceEmbedder, SentenceEmbeddingSettings
from resources.store import StateStore
from resources.tracking import MlflowTracker


class LabelConfig(dg.Config):
    n_clusters: int = Field(default=50, description="Derived labels: k-means clusters (capped at N / 5)")
    seed: int = Field(default=0, description="k-means seed")


@dg.asset(
    deps=[POOL, SENTENCE_EMBEDDINGS],
    group_name=REPRESENTATIONS,
    code_version="labels-1",
    kinds={"duckdb"},
    description="Per-example label sets and label embeddings for MIG: provided `tags`, else embedding clusters.",
)
def labels(
    context: dg.AssetExecutionContext,
    config: LabelConfig,
    store: StateStore,
    lance: LanceStore,
    embedder: SentenceEmbedder,
    sentence_embedding_settings: SentenceEmbeddingSettings,
    tracker: MlflowTracker,
) -> dg.MaterializeResult:

    with store.session() as db:
        rows = db.split_rows("pool", ("pool_id",))
        tags = db.meta_field("pool", "tags")
        version, _ = db.pool_version()
    labelled = provided_labels([tags[p] for p in rows["pool_id"]])
    if labelled is not None:
        label_vectors = embedder.encode(labelled.names)
    else:
        vectors, _ = load_vectors(lance, sentence_embedding_settings.dataset, rows["pool_id"].to_list())
        labelled, label_vectors = cluster_labels(vectors, config.n_clusters, config.seed)
    names, members, how = labelled.names, labelled.members, labelled.how
    pairs = pl.DataFrame(
        {
            "pool_id": [p for p, m in zip(rows["pool_id"], members, strict=True) for _ in m],
            "label": [label for m in members for label in m],
        },
        schema={"pool_id": pl.String, "label": pl.Int64},
    )
    vocab = pl.DataFrame(
        {
            "label": list(range(len(names))),
            "name": names,
            "embedding": [np.asarray(v, dtype=np.float64).tolist() for v in label_vectors],
            "how": [how] * len(names),
        }
    )
    with store.session() as db, db.transaction():
        db.replace_table("labels", pairs)
        db.replace_table("label_vocab", vocab)
    with tracker.run(context, params={"how": how, "pool_version": version}) as run:
        run.log_metrics({"labels": len(names), "pairs": pairs.height})
    sizes = pairs.group_by("label").len().sort("len", descending=True).head(10).rows()
    return dg.MaterializeResult(
        metadata={
            "how": how,
            "labels": len(names),
            "largest": dg.MetadataValue.md(markdown_table(["label", "rows"], sizes)),
            **run.metadata(),
        },
        data_version=dg.DataVersion(f"{version}-{len(names)}"),
    )

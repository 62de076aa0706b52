"""One validated config per flow, built the same way by the CLIs and by deployments."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flows.model_uri import parse_model_uri
from pipeline.rules import FlagRule

# Upper bounds of sizes a user sets: past them a run would exhaust memory (or never end) instead of failing
# with a message naming the field.
TABLE_BATCH_MAX = 65_536  # rows a step: 16x the largest batch timed in BENCHMARKS.md (4,096)
IMAGE_BATCH_MAX = 4_096  # images a step: the conv activations of a batch grow with it (and the image size)
DASK_WORKERS_MAX = 64  # LocalCluster worker processes, each with its own torch and model (~0.5 GB): use a cluster
# A registered name that models:/NAME@ALIAS can load back (flows/model_uri.py): no '/' or '@', not only dots.
MODEL_NAME = r"^[^/@]*[^/@.][^/@]*$"
SEED_MAX = 2**31 - 1  # numpy seeds are 0..2**32 - 1: room for an ensemble's seed, seed + 1, ...


class TrainConfig(BaseModel):
    """Parameters of the ``train`` flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Field(description="training table: CSV or Parquet (normal rows, or labelled with label_column)")
    model_name: str = Field("vae-anomaly", pattern=MODEL_NAME, description="registered model name")
    alias: str = Field("champion", min_length=1, description="alias set on the new model version")
    experiment: str = Field("vae-anomaly", min_length=1, description="MLflow experiment name")
    id_columns: list[str] = Field(default_factory=list, description="columns passed through to reports")
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) used only for evaluation")
    categorical_columns: list[str] = Field(default_factory=list, description="force these columns categorical")
    segment_column: str | None = Field(
        None, min_length=1, description="categorical column whose values each get their own threshold"
    )
    alpha: float = Field(0.01, gt=0, lt=1, description="target false-positive rate of the threshold")
    max_epochs: int | None = Field(None, ge=1, le=100_000, description="cap on epochs (None: the trainer's budget)")
    trim_fraction: float = Field(0.0, ge=0, lt=0.5, description="share of worst-fitting rows per batch left out")
    batch_size: int | None = Field(None, ge=1, le=TABLE_BATCH_MAX)
    latent_dim: int | None = Field(None, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v.isdigit() or v.lower() == "latest":
            raise ValueError(f"alias must not be a number or 'latest', got {v!r}")
        return v


class DaskOptions(BaseModel):
    """Where a flow's per-file tasks run: an existing Dask cluster, a LocalCluster of N workers, or in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dask_address: str | None = Field(
        None,
        pattern=r"^([a-z]+://\S+|[\w.\-]+:\d+)$",
        description="scheduler address of an existing Dask cluster, e.g. tcp://10.0.0.5:8786",
    )
    dask_workers: int | None = Field(
        None, ge=1, le=DASK_WORKERS_MAX, description="start a LocalCluster with this many workers"
    )
    dask_processes: bool = Field(True, description="LocalCluster workers are processes (False: threads of this one)")

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskOptions:
        if self.dask_address is not None and self.dask_workers is not None:
            raise ValueError(
                f"give dask_address ({self.dask_address!r}) or dask_workers ({self.dask_workers!r}), not both"
            )
        return self

    def parallel(self) -> bool:
        """Whether the per-file tasks run on Dask."""
        return self.dask_address is not None or self.dask_workers is not None


class FlagRuleOptions(BaseModel):
    """The flag rule of a scoring flow (tables and images): at most one of ``fdr`` and ``alpha`` /
    ``conditional``; none gives the model's own alpha."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float | None = Field(None, gt=0, lt=1, description="flag p <= alpha (default: the model's alpha)")
    fdr: float | None = Field(None, gt=0, lt=1, description="Benjamini-Hochberg over the batch at this level")
    conditional: float | None = Field(
        None, gt=0, lt=1, description="delta: calibration-conditional guarantee with probability >= 1 - delta"
    )

    @model_validator(mode="after")
    def _one_rule(self) -> FlagRuleOptions:
        if self.fdr is not None and (self.alpha is not None or self.conditional is not None):
            raise ValueError("fdr cannot be combined with alpha or conditional: choose one flag rule")
        return self

    def rule_kind(self) -> str:
        return "fdr" if self.fdr is not None else "conditional" if self.conditional is not None else "alpha"

    def flag_rule(self, model_alpha: float) -> FlagRule:
        """The rule these options give; the model's alpha where none is given."""
        if self.fdr is not None:
            return FlagRule("fdr", float(self.fdr))
        return FlagRule(self.rule_kind(), self.alpha or model_alpha, self.conditional)


class ScoreConfig(DaskOptions, FlagRuleOptions):
    """Parameters of the ``score`` flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[Path] = Field(min_length=1, description="tables to score: CSV or Parquet")
    model: str = Field("models:/vae-anomaly@champion", description="MLflow model URI")
    out: Path = Field(Path("reports"), description="folder for <stem>.anomalies.csv reports")
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) for precision/recall/AUROC")
    f1_optimal: bool = Field(False, description="with labelled anomalies, flag at the F1-optimal threshold")
    experiment: str = Field("vae-anomaly-scoring", min_length=1, description="MLflow experiment for batch health")

    @model_validator(mode="after")
    def _f1_needs_labels(self) -> ScoreConfig:
        if self.f1_optimal and self.label_column is None:
            raise ValueError("f1_optimal needs label_column")
        return self

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str) -> str:
        parse_model_uri(v)  # a ModelError (exit 3), not a validation error: the URI names no registry model
        return v


class InboxConfig(DaskOptions):
    """Parameters of the ``score-inbox`` flow: score each new file of ``inbox`` once, into ``outbox``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inbox: Path = Field(description="folder watched for new tables (CSV, Parquet), searched recursively")
    outbox: Path = Field(description="reports go here, mirroring the inbox's folders")
    model: str = Field("models:/vae-anomaly@champion", description="MLflow model URI")
    kinds: list[str] = Field(default_factory=lambda: ["table"], min_length=1, description="item kinds to score")
    quarantine: Path | None = Field(None, description="where failed files go (default: <outbox>/quarantine)")
    manifest: Path | None = Field(None, description="SQLite manifest (default: <outbox>/manifest.sqlite3)")
    min_age_s: float = Field(10.0, ge=0, le=86_400, description="a file is picked up once unmodified this long")
    max_attempts: int = Field(3, ge=1, le=100, description="attempts before a failing file is quarantined")
    retry_backoff_s: float = Field(60.0, ge=0, le=86_400, description="wait before a retry; doubles each time")
    lease_s: float = Field(600.0, gt=0, le=86_400, description="a claim whose holder stopped renewing it is stale")
    alpha: float | None = Field(None, gt=0, lt=1, description="flag p <= alpha (default: the model's alpha)")
    fdr: float | None = Field(None, gt=0, lt=1, description="Benjamini-Hochberg over each file at this level")
    experiment: str = Field("vae-anomaly-scoring", min_length=1, description="MLflow experiment for batch health")

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str) -> str:
        return ScoreConfig._model_uri(v)

    @field_validator("inbox", "outbox", mode="before")
    @classmethod
    def _named(cls, v: object, info: ValidationInfo) -> object:
        if isinstance(v, str) and not v.strip():  # e.g. an unset {{ $VAR }} in prefect.yaml
            raise ValueError(f"{info.field_name} must name a folder, got {v!r}")
        return v

    @model_validator(mode="after")
    def _folders(self) -> InboxConfig:
        if self.fdr is not None and self.alpha is not None:
            raise ValueError("fdr cannot be combined with alpha: choose one flag rule")
        inbox, outbox = self.inbox.resolve(), self.outbox.resolve()
        if inbox == outbox or outbox.is_relative_to(inbox) or inbox.is_relative_to(outbox):
            raise ValueError(
                f"inbox {str(self.inbox)!r} and outbox {str(self.outbox)!r} must be separate folders, "
                "neither inside the other (reports would be scored as new files)"
            )
        return self

    def quarantine_dir(self) -> Path:
        return self.quarantine if self.quarantine is not None else self.outbox / "quarantine"

    def manifest_path(self) -> Path:
        return self.manifest if self.manifest is not None else self.outbox / "manifest.sqlite3"


class ImageTrainConfig(BaseModel):
    """Parameters of the ``train_images`` flow (``python -m flows.train --kind image ...``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: list[str] = Field(min_length=1, description="normal images: a folder, image files or globs, an IDX or .npz")
    normal_label: int | None = Field(None, description="with a labelled IDX/.npz file: train on this label only")
    model_name: str = Field("vae-anomaly-images", pattern=MODEL_NAME, description="registered model name")
    alias: str = Field("champion", min_length=1, description="alias set on the new model version")
    experiment: str = Field("vae-anomaly", min_length=1, description="MLflow experiment name")
    alpha: float = Field(0.01, gt=0, lt=1, description="target false-positive rate of the threshold")
    max_epochs: int | None = Field(None, ge=1, le=100_000, description="cap on epochs (None: the trainer's 20)")
    batch_size: int | None = Field(None, ge=1, le=IMAGE_BATCH_MAX)
    latent_dim: int = Field(16, ge=1, le=1024)
    likelihood: str = Field("gaussian", pattern="^(gaussian|bernoulli|cbernoulli)$")
    score_method: str = Field("recon", pattern="^(recon|elbo|iwae)$")
    n_models: int = Field(1, ge=1, le=20, description="ensemble size")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        return TrainConfig._alias(v)


class ImageScoreConfig(FlagRuleOptions):
    """Parameters of the ``score_images`` flow (``python -m flows.score --kind image ...``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[str] = Field(
        min_length=1,
        description="image batches: folders, IDX/.npz files; loose image files and globs together form one batch",
    )
    model: str = Field("models:/vae-anomaly-images@champion", description="MLflow model URI")
    out: Path = Field(Path("reports"), description="folder for <name>.anomalies.csv and contact sheets")
    top_k: int = Field(16, ge=0, le=1000, description="images on the contact sheet")
    experiment: str = Field("vae-anomaly-scoring", min_length=1, description="MLflow experiment for batch health")

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str) -> str:
        return ScoreConfig._model_uri(v)


class RetrainConfig(TrainConfig):
    """Parameters of the ``retrain`` flow: a challenger trained on new data, compared with the champion.

    The training fields are :class:`TrainConfig`'s (``data`` is the new table); ``alias`` is the challenger's.
    The promotion rule is documented in ``pipeline/compare.py``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alias: str = Field("challenger", min_length=1, description="alias set on the challenger's version")
    champion_alias: str = Field("champion", min_length=1, description="alias of the champion, moved on promotion")
    holdout_fraction: float = Field(
        0.2,
        gt=0,
        lt=0.9,
        description="share of the new normal rows held out to compare the models (labelled anomalies are all held out)",
    )
    margin: float = Field(0.01, ge=0, lt=1, description="AUROC gain that counts as better, with labels")
    level: float = Field(
        0.01, gt=0, lt=1, description="test level (beta-binomial): a threshold flags more normal rows than its alpha"
    )
    decision_experiment: str = Field(
        "vae-anomaly-retrain", min_length=1, description="MLflow experiment of the decision runs"
    )

    @field_validator("champion_alias")
    @classmethod
    def _champion_alias(cls, v: str) -> str:
        return TrainConfig._alias(v)

    @model_validator(mode="after")
    def _two_aliases(self) -> RetrainConfig:
        if self.alias == self.champion_alias:
            raise ValueError(f"the challenger's alias must differ from the champion's, both are {self.alias!r}")
        return self

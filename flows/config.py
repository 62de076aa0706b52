"""One validated config per flow, built the same way by the CLIs and by deployments."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from flows.kinds import DEFAULT_MODEL_NAME, check_model_kind, input_kind
from flows.model_uri import parse_model_uri
from pipeline.calibrate.rules import FlagRule

# Upper bounds of sizes a user sets: past them a run would exhaust memory (or never end) instead of failing
# with a message naming the field.
TABLE_BATCH_MAX = 65_536  # rows a step: 16x the largest batch timed in BENCHMARKS.md (4,096)
IMAGE_BATCH_MAX = 4_096  # images a step: the conv activations of a batch grow with it (and the image size)
DASK_WORKERS_MAX = 64  # LocalCluster worker processes, each with its own torch and model (~0.5 GB): use a cluster
# A registered name that models:/NAME@ALIAS can load back (flows/model_uri.py): no '/' or '@', not only dots.
MODEL_NAME = r"^[^/@]*[^/@.][^/@]*$"
SEED_MAX = 2**31 - 1  # numpy seeds are 0..2**32 - 1: room for an ensemble's seed, seed + 1, ...


def _paths(v: object) -> object:
    """One path or a list of paths, as a list of strings (the configs' ``data`` and ``inputs``)."""
    if isinstance(v, str | Path):
        v = [v]
    return [str(x) for x in v] if isinstance(v, list | tuple) else v


class KindOptions(BaseModel):
    """A config for tables or images: ``kind`` "auto" is decided by the first input (:func:`input_kind`), and
    an option of the other kind is refused, naming the option."""

    kind: Literal["auto", "table", "image"] = Field("auto", description="table, image, or auto (from the input)")
    table_options: ClassVar[tuple[str, ...]] = ()
    image_options: ClassVar[tuple[str, ...]] = ()
    verb: ClassVar[str] = "uses"  # what the run does with its inputs, for the message

    def settle_kind(self, first_input: str) -> str:
        """Sets and returns the kind of the run's data.

        Raises:
            ValueError: an option of the other kind is given (an empty value counts as not given).
        """
        kind = input_kind(first_input) if self.kind == "auto" else self.kind
        object.__setattr__(self, "kind", kind)
        for name in self.other_options():
            if name in self.model_fields_set and getattr(self, name) not in (None, [], 0.0, False):
                raise ValueError(
                    f"{name} is an option for {'images' if kind == 'table' else 'tables'}; "
                    f"this run {self.verb} {kind}s ({first_input})"
                )
        return kind

    def other_options(self) -> tuple[str, ...]:
        return self.image_options if self.kind == "table" else self.table_options


class TrainConfig(KindOptions):
    """Parameters of the ``train`` flow, for a table or for images (``kind``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table_options = ("id_columns", "label_column", "categorical_columns", "segment_column", "trim_fraction")
    image_options = ("normal_label", "likelihood", "score_method", "n_models")
    verb = "trains on"

    data: list[str] = Field(
        min_length=1,
        description="a training table (CSV or Parquet), or normal images: folders, image files, globs, an IDX or .npz",
    )
    model_name: str | None = Field(
        None, pattern=MODEL_NAME, description="registered model name (default: vae-anomaly, vae-anomaly-images)"
    )
    alias: str = Field("champion", min_length=1, description="alias set on the new model version")
    experiment: str = Field("vae-anomaly", min_length=1, description="MLflow experiment name")
    alpha: float = Field(0.01, gt=0, lt=1, description="target false-positive rate of the threshold")
    max_epochs: int | None = Field(None, ge=1, le=100_000, description="cap on epochs (None: the trainer's budget)")
    batch_size: int | None = Field(None, ge=1, description="rows or images a step (at most 65,536 and 4,096)")
    latent_dim: int | None = Field(None, ge=1, le=1024)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")
    # tables only
    id_columns: list[str] = Field(default_factory=list, description="columns passed through to reports")
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) used only for evaluation")
    categorical_columns: list[str] = Field(default_factory=list, description="force these columns categorical")
    segment_column: str | None = Field(
        None, min_length=1, description="categorical column whose values each get their own threshold"
    )
    trim_fraction: float = Field(0.0, ge=0, lt=0.5, description="share of worst-fitting rows per batch left out")
    # images only
    normal_label: int | None = Field(None, description="with a labelled IDX/.npz file: train on this label only")
    likelihood: str | None = Field(None, pattern="^(gaussian|bernoulli|cbernoulli)$")
    score_method: str | None = Field(None, pattern="^(recon|elbo|iwae)$")
    n_models: int | None = Field(None, ge=1, le=20, description="ensemble size (images; default 1)")

    _data = field_validator("data", mode="before")(_paths)

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v.isdigit() or v.lower() == "latest":
            raise ValueError(f"alias must not be a number or 'latest', got {v!r}")
        return v

    @model_validator(mode="after")
    def _resolve_kind(self) -> TrainConfig:
        kind = self.settle_kind(self.data[0])
        if self.model_name is None:
            object.__setattr__(self, "model_name", DEFAULT_MODEL_NAME[kind])
        if kind == "table" and len(self.data) != 1:
            raise ValueError(f"a table model trains on one table, got {len(self.data)} inputs: {self.data[:3]}")
        limit = IMAGE_BATCH_MAX if kind == "image" else TABLE_BATCH_MAX
        if self.batch_size is not None and self.batch_size > limit:
            raise ValueError(f"batch_size: at most {limit} for {kind}s, got {self.batch_size}")
        return self

    def params(self) -> dict[str, str]:
        """The options of this kind as MLflow run parameters."""
        values = self.model_dump(mode="json", exclude={"model_name", "alias", "experiment", *self.other_options()})
        if self.kind == "table":
            values["data"] = self.data[0]
        return {k: ("" if v is None else str(v)) for k, v in values.items()}

    def detector(self) -> Any:
        """A new, unfitted detector with this config's settings."""
        if self.kind == "image":
            from pipeline.detect.image_detector import ImageVAEDetector
            from vae.config import ImageTrainConfig as ImageTrainerConfig

            given = {"max_epochs": self.max_epochs, "batch_size": self.batch_size}
            options = {  # unset: the detector's own defaults
                "latent_dim": self.latent_dim,
                "likelihood": self.likelihood,
                "score_method": self.score_method,
                "n_models": self.n_models,
            }
            return ImageVAEDetector(
                alpha=self.alpha,
                seed=self.seed,
                train_config=ImageTrainerConfig(
                    seed=self.seed, device=self.device, **{k: v for k, v in given.items() if v is not None}
                ),
                **{k: v for k, v in options.items() if v is not None},
            )
        from pipeline.detect.detector import VAEAnomalyDetector

        return VAEAnomalyDetector(
            alpha=self.alpha,
            id_columns=self.id_columns,
            label_column=self.label_column,
            categorical_columns=self.categorical_columns,
            segment_column=self.segment_column,
            latent_dim=self.latent_dim,
            seed=self.seed,
            train_config=self.trainer_config(),
        )

    def trainer_config(self) -> Any:
        """The table trainer's defaults, overridden by what this config sets."""
        from vae.config import TrainConfig as TrainerConfig

        given = {"max_epochs": self.max_epochs, "batch_size": self.batch_size}
        return TrainerConfig(
            seed=self.seed,
            device=self.device,
            trim_fraction=self.trim_fraction,
            **{k: v for k, v in given.items() if v is not None},
        )


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


class ScoreConfig(KindOptions, DaskOptions, FlagRuleOptions):
    """Parameters of the ``score`` flow, for tables or for image batches (``kind``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    table_options = ("label_column", "f1_optimal")
    image_options = ("top_k",)
    verb = "scores"

    inputs: list[str] = Field(
        min_length=1,
        description="tables (CSV/Parquet files, or folders of them); or image batches: folders, IDX/.npz files, "
        "and loose image files and globs that together form one batch",
    )
    model: str | None = Field(
        None, description="MLflow model URI (default: models:/vae-anomaly@champion, or -images for images)"
    )
    out: Path = Field(Path("reports"), description="folder for <stem>.anomalies.csv reports")
    experiment: str = Field("vae-anomaly-scoring", min_length=1, description="MLflow experiment for batch health")
    # tables only
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) for precision/recall/AUROC")
    f1_optimal: bool = Field(False, description="with labelled anomalies, flag at the F1-optimal threshold")
    # images only
    top_k: int = Field(16, ge=0, le=1000, description="images on the contact sheet")

    _inputs = field_validator("inputs", mode="before")(_paths)

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str | None) -> str | None:
        if v is not None:
            parse_model_uri(v)  # a ModelError (exit 3), not a validation error: the URI names no registry model
        return v

    @model_validator(mode="after")
    def _resolve_kind(self) -> ScoreConfig:
        kind = self.settle_kind(self.inputs[0])
        if self.model is None:
            object.__setattr__(self, "model", f"models:/{DEFAULT_MODEL_NAME[kind]}@champion")
        if self.f1_optimal and self.label_column is None:
            raise ValueError("f1_optimal needs label_column")
        return self

    def model_uri(self) -> str:
        assert self.model is not None  # set by the validator
        return self.model

    def check_model_kind(self, model_kind: str) -> None:
        """Refuse a model of the other kind of data (see :func:`check_model_kind`)."""
        check_model_kind(str(self.kind), model_kind, self.model_uri())

    def jobs(self) -> list[tuple[str | list[str], Path]]:
        """(input, report folder) per scoring task, checked before any work.

        Tables: a file, or each part of a dataset folder (its reports in a folder of its own under ``out``).
        Images: each folder or array file, and all loose image files and globs together.

        Raises:
            InputError: a missing input, or two inputs that would write the same report.
        """
        if self.kind == "image":
            from pipeline.data.images import is_array_file

            whole: list[str | list[str]] = [i for i in self.inputs if Path(i).is_dir() or is_array_file(Path(i))]
            loose = [i for i in self.inputs if i not in whole]
            return [(b, self.out) for b in [*whole, *([loose] if loose else [])]]
        from pipeline.inbox.discovery import expand_inputs

        return [(str(p), out) for p, out in expand_inputs([Path(i) for i in self.inputs], self.out)]


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
        parse_model_uri(v)
        return v

    @field_validator("model", mode="before")
    @classmethod
    def _default_model(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():  # prefect.yaml's {{ $VAE_ANOMALY_MODEL }} when it is not set
            return "models:/vae-anomaly@champion"
        return v

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


class RetrainConfig(TrainConfig):
    """Parameters of the ``retrain`` flow: a challenger trained on new data, compared with the champion.

    The training fields are :class:`TrainConfig`'s (``data`` is the new table); ``alias`` is the challenger's.
    The promotion rule is documented in ``pipeline/calibrate/compare.py``.
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
        if self.kind != "table":
            raise ValueError(f"retrain compares table models; {self.data[0]} holds images")
        if self.alias == self.champion_alias:
            raise ValueError(f"the challenger's alias must differ from the champion's, both are {self.alias!r}")
        return self

"""One validated config per flow, built the same way by the CLIs and by deployments."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MODEL_URI_PREFIXES = ("models:/", "runs:/")


class TrainConfig(BaseModel):
    """Parameters of the ``train`` flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: Path = Field(description="training table: CSV or Parquet (normal rows, or labelled with label_column)")
    model_name: str = Field("vae-anomaly", min_length=1, description="registered model name")
    alias: str = Field("champion", min_length=1, description="alias set on the new model version")
    experiment: str = Field("vae-anomaly", min_length=1, description="MLflow experiment name")
    id_columns: list[str] = Field(default_factory=list, description="columns passed through to reports")
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) used only for evaluation")
    categorical_columns: list[str] = Field(default_factory=list, description="force these columns categorical")
    alpha: float = Field(0.01, gt=0, lt=1, description="target false-positive rate of the threshold")
    max_epochs: int | None = Field(None, ge=1, le=100_000, description="cap on epochs (None: the trainer's budget)")
    trim_fraction: float = Field(0.0, ge=0, lt=0.5, description="share of worst-fitting rows per batch left out")
    batch_size: int | None = Field(None, ge=1)
    latent_dim: int | None = Field(None, ge=1, le=1024)
    seed: int = 0
    device: str = Field("auto", pattern="^(auto|cpu|cuda)$")

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v.isdigit() or v.lower() == "latest":
            raise ValueError(f"alias must not be a number or 'latest', got {v!r}")
        return v


class ScoreConfig(BaseModel):
    """Parameters of the ``score`` flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: list[Path] = Field(min_length=1, description="tables to score: CSV or Parquet")
    model: str = Field("models:/vae-anomaly@champion", description="MLflow model URI")
    out: Path = Field(Path("reports"), description="folder for <stem>.anomalies.csv reports")
    alpha: float | None = Field(None, gt=0, lt=1, description="flag p <= alpha (default: the model's alpha)")
    fdr: float | None = Field(None, gt=0, lt=1, description="Benjamini-Hochberg over the batch at this level")
    conditional: float | None = Field(
        None, gt=0, lt=1, description="delta: calibration-conditional guarantee with probability >= 1 - delta")
    label_column: str | None = Field(None, description="0/1 column (1 = anomaly) for precision/recall/AUROC")
    f1_optimal: bool = Field(False, description="with labelled anomalies, flag at the F1-optimal threshold")
    experiment: str = Field("vae-anomaly-scoring", min_length=1, description="MLflow experiment for batch health")

    @model_validator(mode="after")
    def _one_rule(self) -> ScoreConfig:
        if self.fdr is not None and (self.alpha is not None or self.conditional is not None):
            raise ValueError("fdr cannot be combined with alpha or conditional: choose one flag rule")
        if self.f1_optimal and self.label_column is None:
            raise ValueError("f1_optimal needs label_column")
        return self

    def rule_kind(self) -> str:
        return "fdr" if self.fdr is not None else "conditional" if self.conditional is not None else "alpha"

    @field_validator("model")
    @classmethod
    def _model_uri(cls, v: str) -> str:
        if not v.startswith(MODEL_URI_PREFIXES):
            raise ValueError(f"model must be an MLflow URI such as models:/vae-anomaly@champion, got {v!r}")
        return v

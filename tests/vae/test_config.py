"""The config dataclasses saved with a model read back from JSON as they were written."""

import json

import pytest

from pipeline.data.schema import Schema
from vae.config import ImageTrainConfig, ModelConfig, TrainConfig
from vae.conv import ConvVAEConfig

CONFIGS = [
    ModelConfig(n_numeric=3, cat_cardinalities=(2, 5), hidden=(40, 20), latent_dim=4, likelihood="student_t"),
    ConvVAEConfig(channels=1, height=28, width=28, conv_channels=(8, 16), likelihood="gaussian"),
    TrainConfig(max_epochs=None, batch_size=128, lr_schedule="cosine"),
    ImageTrainConfig(max_epochs=3, cpu_threads=None),
    Schema(numeric=("a", "b"), categorical=("c",), id_columns=("id",), label_column="y"),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_a_config_reads_back_from_json_equal(config):
    back = type(config).from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config


def test_an_older_dict_keeps_the_defaults_and_drops_removed_fields():
    older = {"n_numeric": 2, "hidden": [8, 4], "latent_dim": 2, "removed_option": 1}
    assert ModelConfig.from_dict(older) == ModelConfig(n_numeric=2, hidden=(8, 4), latent_dim=2)
    assert Schema.from_dict({"numeric": ["a"], "categorical": []}) == Schema(numeric=("a",), categorical=())


def test_a_bad_value_is_refused_by_name():
    with pytest.raises(ValueError, match="likelihood"):
        ModelConfig.from_dict({"n_numeric": 2, "likelihood": "poisson"})

"""Models-from-code entry point: MLflow runs this file to build the pyfunc at load time.

Logging the model from this file (not a pickled object) means loading it unpickles nothing.
"""

import mlflow.models

from flows.pyfunc import VAEAnomalyModel

mlflow.models.set_model(VAEAnomalyModel())

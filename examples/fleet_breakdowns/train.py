"""Train the breakdown model on a training set written by `python -m batchinfer_assets.training_set`, and register it."""

import sys

import mlflow
import mlflow.pytorch
import numpy as np
import pandas as pd
import torch
from mlflow.models import infer_signature

from fleet.domain import domain

columns = list(domain.feature_columns)
data = pd.read_parquet(sys.argv[1]).dropna(subset=[domain.label_column])
x = torch.tensor(data[columns].to_numpy(np.float32))
y = torch.tensor(data[domain.label_column].to_numpy(np.float32))
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(len(columns), 1), torch.nn.Sigmoid())
optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
for _ in range(300):
    optimizer.zero_grad()
    torch.nn.functional.binary_cross_entropy(model(x).squeeze(-1), y).backward()
    optimizer.step()

example = data[columns].head(5).astype(np.float32)
with torch.no_grad():
    signature = infer_signature(example, model(torch.tensor(example.to_numpy())).numpy())
with mlflow.start_run():
    # The signature names the feature columns: the scorer feeds the snapshot's columns by these names.
    info = mlflow.pytorch.log_model(
        model, name="model", signature=signature, serialization_format="pickle", registered_model_name="breakdowns"
    )
mlflow.MlflowClient().set_registered_model_alias("breakdowns", "champion", info.registered_model_version)
print(f"registered breakdowns version {info.registered_model_version} as champion")

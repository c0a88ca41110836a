"""Evaluation: eager predictions on a split and its MMSA regression metrics."""
from __future__ import annotations

from typing import Dict

import torch

from msmix_ext.train import distributed as train_distributed
from msmix_ext.train.data import MultimodalDataset
from msmix_ext.train.metrics import regression_metrics

__all__ = ["evaluate", "predict"]


@torch.no_grad()
def predict(model, ds: MultimodalDataset, batch_size: int, device: str) -> torch.Tensor:
    """Eager predictions ``[N]`` (float32, CPU) in eval mode; restores the training mode."""
    was_training = model.training
    model.eval()
    try:
        preds = [model.head(model.features(b.text, b.audio, b.vision, b.masks)).float().cpu()
                 for b in (x.to(device) for x in ds.batches(batch_size))]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def evaluate(model, ds: MultimodalDataset, kind: str, batch_size: int = 256, device: str = "cpu"
             ) -> Dict[str, float]:
    """MMSA regression metrics of ``model`` on ``ds`` (no augmentation); under torchrun the
    ranks share the predictions and every rank gets the metrics of the whole ``ds``."""
    if train_distributed.active():
        preds = train_distributed.predict_whole(predict, model, ds, batch_size, device)
    else:
        preds = predict(model, ds, batch_size, device)
    return regression_metrics(preds, ds.labels, kind)

"""Evaluation metrics on a data split: loss, accuracy, balanced accuracy, per-class, ROC AUC."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for already-normalised images, in eval mode, in chunks."""
    was_training = model.training
    model.eval()
    try:
        chunks = [model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    if not chunks:
        return torch.empty(0)
    return torch.cat(chunks)


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, object]:
    """Metrics of one split. `auc` is ROC AUC for binary tasks and None otherwise."""
    labels_np = labels.cpu().numpy()
    loss = float(F.cross_entropy(logits.double(), labels)) if len(labels) else math.nan
    pred = logits.argmax(1).cpu().numpy()
    per_class = {}
    for c in range(num_classes):
        mask = labels_np == c
        per_class[str(c)] = float((pred[mask] == c).mean()) if mask.any() else None
    present = [v for v in per_class.values() if v is not None]
    auc = None
    if num_classes == 2 and len(set(labels_np.tolist())) == 2:
        scores = torch.softmax(logits.double(), 1)[:, 1].cpu().numpy()
        auc = float(roc_auc_score(labels_np, scores))
    return {
        "loss": loss,
        "accuracy": float((pred == labels_np).mean()) if len(labels_np) else math.nan,
        "balanced_accuracy": float(np.mean(present)) if present else math.nan,
        "per_class_accuracy": per_class,
        "auc": auc,
    }



"""Train the reference MLP (784 → 128 ReLU → 10) with scikit-learn and export it as an otpserve artifact.

scikit-learn's ``MLPClassifier`` does the learning (Adam, cross-entropy); we drive it one mini-batch at a
time with ``partial_fit`` so the run has one progress bar (epoch and loss on it) and the shuffling is ours
and seeded. The fitted ``coefs_``/``intercepts_`` are already in the kernel's (in, out) layout, so export
is a copy to float32.
Before saving, the exported model's logits (computed by the native kernel) are checked against
scikit-learn's own on the held-out set, and the held-out accuracy is measured on the exported model — the
numbers in the manifest describe the artifact, not the estimator it came from.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from otpserve.models import MLP, default_model_path
from otpserve.models.mlp import library_versions
from otpserve.models.preprocessing import IMAGE_PREPROCESSING
from otpserve.train.data import LABELS, Dataset, load_digits_dataset, load_mnist_dataset

if TYPE_CHECKING:  # scikit-learn is imported lazily at run time: `otpserve --help` stays fast
    from sklearn.neural_network import MLPClassifier

HIDDEN_UNITS = 128
# 64 rows per Adam step: on the digits this reaches ≥ 96 % in 30 epochs across seeds; smaller batches gain
# little, and larger ones need more epochs for the same accuracy (measured, 2 cores).
BATCH_SIZE = 64
LEARNING_RATE = 1e-3  # scikit-learn's default for Adam
# Epochs when the user gives none: the digits have 1,437 training images, so 30 passes take a few seconds;
# MNIST has 60,000, and 10 passes already reach ~98 % (well-known for this architecture).
DEFAULT_EPOCHS = {"sklearn-digits": 30, "mnist": 10}
DEFAULT_SEED = 0
# The exported model must reproduce scikit-learn's logits to this (float32 accumulation-order noise is ~1e-6).
LOGIT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the fitted model, where it was saved, its metrics and the dataset used."""

    model: MLP
    path: Path
    metrics: dict[str, Any]
    dataset: Dataset


def train(
    *,
    data: str | Path | None = None,
    out: str | Path | None = None,
    epochs: int | None = None,
    seed: int = DEFAULT_SEED,
    dataset: Dataset | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train, verify, and save; return the model, where it was saved, and its metrics.

    ``data`` is a folder of MNIST IDX files; without it the digits scikit-learn ships are used (no download).
    ``dataset`` (for tests and notebooks) bypasses both. ``out`` defaults to ``default_model_path()``.
    """
    if dataset is None:
        dataset = load_mnist_dataset(data) if data is not None else load_digits_dataset(seed)
    if epochs is None:
        epochs = DEFAULT_EPOCHS.get(dataset.description.get("name", ""), DEFAULT_EPOCHS["sklearn-digits"])
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")

    started = time.perf_counter()
    classifier, final_loss = fit_classifier(dataset, epochs=epochs, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - started

    model = mlp_from_sklearn(classifier)
    logits = model.predict(dataset.heldout_x)
    logit_diff = float(np.max(np.abs(logits - sklearn_logits(classifier, dataset.heldout_x))))
    if logit_diff > LOGIT_TOLERANCE:
        raise RuntimeError(
            f"exported model disagrees with scikit-learn: max |logit difference| {logit_diff:.3g} > {LOGIT_TOLERANCE}"
        )
    metrics = {
        "heldout_accuracy": float(np.mean(logits.argmax(axis=1) == dataset.heldout_y)),
        "heldout_samples": len(dataset.heldout_y),
        "train_accuracy": float(np.mean(model.predict(dataset.train_x).argmax(axis=1) == dataset.train_y)),
        "train_samples": len(dataset.train_y),
        "final_epoch_loss": final_loss,
        "train_seconds": round(train_seconds, 3),
        "max_abs_logit_diff_vs_sklearn": logit_diff,
    }
    import sklearn

    path = model.save(
        out if out is not None else default_model_path(),
        metrics=metrics,
        versions={**library_versions(), "scikit-learn": sklearn.__version__},
        # One held-out row, for the ready-to-paste request `otpserve serve` prints.
        example=dataset.heldout_x[:1].astype(np.float32).ravel().tolist(),
        training={
            "library": "scikit-learn",
            "estimator": (
                f"MLPClassifier(hidden_layer_sizes=({HIDDEN_UNITS},), activation='relu', solver='adam', "
                f"learning_rate_init={LEARNING_RATE}, random_state={seed})"
            ),
            "driver": "partial_fit per mini-batch; rows shuffled each epoch by numpy default_rng(seed)",
            "epochs": epochs,
            "batch_size": BATCH_SIZE,
            "seed": seed,
            "data": dataset.description,
        },
    )
    return TrainResult(model=model, path=path, metrics=metrics, dataset=dataset)


def fit_classifier(dataset: Dataset, *, epochs: int, seed: int, progress: bool = True) -> tuple[MLPClassifier, float]:
    """Fit an ``MLPClassifier`` for ``epochs`` passes; return it and the mean loss of the last epoch.

    Same data + same seed → same weights: the initialisation comes from ``random_state=seed`` and the
    per-epoch row order from ``default_rng(seed)``; nothing else is random.
    """
    from sklearn.neural_network import MLPClassifier

    classifier = MLPClassifier(
        hidden_layer_sizes=(HIDDEN_UNITS,),
        activation="relu",
        solver="adam",
        learning_rate_init=LEARNING_RATE,
        batch_size="auto",  # each partial_fit call gets exactly one mini-batch, so it takes one Adam step
        shuffle=False,  # the order is ours (below); shuffling inside a single batch would only cost time
        random_state=seed,
    )
    classes = np.arange(len(LABELS))
    rng = np.random.default_rng(seed)
    n = len(dataset.train_y)
    final_loss = float("nan")
    starts = range(0, n, BATCH_SIZE)
    # One bar for the whole run (every mini-batch of every epoch), the epoch and the running loss on it.
    bar = tqdm(total=epochs * len(starts), desc="training", unit="batch", disable=not progress)
    for epoch in range(epochs):
        order = rng.permutation(n)
        losses = []
        for start in starts:
            rows = order[start : start + BATCH_SIZE]
            classifier.partial_fit(dataset.train_x[rows], dataset.train_y[rows], classes=classes)
            losses.append(classifier.loss_)
            bar.update()
            if len(losses) % 10 == 0:
                bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{np.mean(losses):.4f}", refresh=False)
        final_loss = float(np.mean(losses))
        bar.set_postfix(epoch=f"{epoch + 1}/{epochs}", loss=f"{final_loss:.4f}")
    bar.close()
    return classifier, final_loss


def mlp_from_sklearn(classifier: MLPClassifier, *, name: str = "mlp") -> MLP:
    """The fitted classifier as an ``MLP``: scikit-learn's ``coefs_`` are (in, out), the kernel's layout."""
    layers = list(zip(classifier.coefs_, classifier.intercepts_, strict=True))
    labels = [LABELS[int(c)] for c in classifier.classes_]
    return MLP(layers, name=name, labels=labels, preprocessing=IMAGE_PREPROCESSING)


def sklearn_logits(classifier: MLPClassifier, x: np.ndarray) -> np.ndarray:
    """scikit-learn's own pre-softmax outputs: its forward pass with the output activation set to identity.

    ``predict_proba`` runs the network and applies ``out_activation_`` (softmax); on a copy whose output
    activation is ``"identity"`` the same public method returns the logits, computed by scikit-learn's code.
    """
    raw = copy.copy(classifier)
    raw.out_activation_ = "identity"
    return raw.predict_proba(x)

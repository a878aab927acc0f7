"""The train stage: ``otpserve train`` fits the reference MLP with scikit-learn, writes a verified artifact.

``train()`` is the whole stage; ``read_idx`` reads MNIST files; ``load_digits_dataset``/``load_mnist_dataset``
make the data. This package imports scikit-learn, so the serving layers never import it.
"""

from otpserve.train.data import Dataset, load_digits_dataset, load_mnist_dataset
from otpserve.train.idx import read_idx, write_idx
from otpserve.train.trainer import TrainResult, fit_classifier, mlp_from_sklearn, sklearn_logits, train

__all__ = [
    "Dataset",
    "TrainResult",
    "fit_classifier",
    "load_digits_dataset",
    "load_mnist_dataset",
    "mlp_from_sklearn",
    "read_idx",
    "sklearn_logits",
    "train",
    "write_idx",
]

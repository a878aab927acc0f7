"""The pipelines ``otpserve pipeline KIND`` runs: ``matmul`` (the reference exercise) and ``infer``."""

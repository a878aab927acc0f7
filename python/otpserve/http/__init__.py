"""Layer 7: the HTTP face of servings — KServe v2 inference, health/readiness, Prometheus metrics."""

from otpserve.http.server import HttpServer

__all__ = ["HttpServer"]

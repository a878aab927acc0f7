"""otpserve: the Elixir/OTP way of serving machine-learning models, in Python.

Three stages, one package: ``otpserve train`` makes a verified model artifact, the native kernel
(``otpserve.kernel``, Rust behind PyO3) runs it with the GIL released, and ``otpserve.serving`` /
``otpserve.http`` serve it batched, under supervision, over the KServe v2 protocol.
"""

__version__ = "0.1.0"

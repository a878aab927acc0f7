"""Layer 5: batched, supervised model serving (the Nx.Serving of otpserve).

``Serving(model, batch_size=..., batch_timeout=..., partitions=..., isolation="thread"|"process",
max_queue=...)``; ``await serving.run(x, timeout=...)`` or, from another thread, ``serving.run_sync(x)``.
"""

from otpserve.serving.options import ServingOptions
from otpserve.serving.serving import Serving

__all__ = ["Serving", "ServingOptions"]

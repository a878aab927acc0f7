"""otpserve.flow — layer 6: GenStage stages and Broadway pipelines (docs/flow.md)."""

"""Live speaker-gender classification: sources -> ring buffer -> VAD -> windows -> features -> ONNX ensemble -> smoother -> sinks."""

"""Convert Resemblyzer's pretrained GE2E speaker encoder to ONNX, once: ``offline/assets/voice_encoder.onnx``.

The converted file is committed, so neither training nor the live engine needs torch or Resemblyzer. To
redo it (a new Resemblyzer release), in a scratch environment::

    python -m venv /tmp/enc && /tmp/enc/bin/pip install torch==2.13.0 onnx numpy
    /tmp/enc/bin/pip install --no-deps resemblyzer==0.1.4
    /tmp/enc/bin/python offline/voice_encoder.py offline/assets/voice_encoder.onnx

The network is Resemblyzer's ``VoiceEncoder`` (a 3-layer LSTM of 256 units over 40 mel bands, a linear layer,
ReLU, L2 normalisation of the last layer's final hidden state); its weights are ``resemblyzer/pretrained.pt``
(Apache-2.0, https://github.com/resemble-ai/Resemblyzer). The export is checked against torch on random
input, for one and several partials.
"""
from __future__ import annotations

import sys
from pathlib import Path

ASSET = Path(__file__).resolve().parent / "assets" / "voice_encoder.onnx"
LICENSE = "LICENSE-resemblyzer.txt"  # beside it, and copied into every bundle with it
INPUT, OUTPUT = "mels", "embedding"


def convert(out: Path = ASSET) -> Path:
    import importlib.util

    import numpy as np
    import onnxruntime as ort
    import torch
    from torch import nn

    spec = importlib.util.find_spec("resemblyzer")  # not imported: its audio helpers need librosa and scipy
    if spec is None:
        raise SystemExit("resemblyzer is not installed (see this module's docstring)")
    weights = Path(spec.submodule_search_locations[0]) / "pretrained.pt"
    state = torch.load(weights, map_location="cpu", weights_only=False)["model_state"]

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
            self.linear = nn.Linear(256, 256)

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            e = torch.relu(self.linear(hidden[-1]))
            return e / torch.norm(e, dim=1, keepdim=True)

    model = Encoder()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or set(unexpected) - {"similarity_weight", "similarity_bias"}:
        raise RuntimeError(f"unexpected checkpoint: missing {missing}, unexpected {unexpected}")
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 160, 40)
    torch.onnx.export(model, (example,), str(out), input_names=[INPUT], output_names=[OUTPUT], opset_version=17,
                      dynamic_axes={INPUT: {0: "partials", 1: "frames"}, OUTPUT: {0: "partials"}}, dynamo=False)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = torch.rand(n, 160, 40) * 10
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
        if not np.allclose(got, ref, atol=1e-5):
            raise RuntimeError(f"ONNX export differs from torch by {np.abs(got - ref).max():.2e}")
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSET))

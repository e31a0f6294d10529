"""Make the VAD test vectors: what onnxruntime says of the bundled audio, window by window.

Audio: `speech_16k.raw`, 16 kHz mono signed 16-bit little-endian PCM, synthetic speech made
here with eSpeak NG 1.51 (Debian package espeak-ng) and SoX, padded with 0.5 s of silence at
each end:
  espeak-ng -w speech.wav "Voice activity detection finds the parts of a recording where
      someone is speaking. This short sentence is the test."
  sox speech.wav -r 16000 -c 1 -b 16 -e signed-integer speech16.wav
  sox speech16.wav padded.wav pad 0.5 0.5
  sox padded.wav -t raw -r 16000 -c 1 -b 16 -e signed-integer -L speech_16k.raw

The windows are cut exactly as `guest/vad` cuts them: 512 new samples, the 64 before them as
context (zeros before the first), the recurrent state carried from window to window.

Output: reference.json {"speech": [probability per window], "silence": [...] for 1 s of zeros}
Run: python3 models/vad/reference.py   (needs numpy, onnxruntime)
"""

import json
import pathlib

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent
WINDOW, CONTEXT = 512, 64


def probabilities(session, samples):
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    result = []
    for start in range(0, len(samples) - WINDOW + 1, WINDOW):
        window = samples[start:start + WINDOW]
        x = np.concatenate([context, window])[None, :]
        (p, state) = session.run(None, {"input": x, "state": state})
        result.append(float(p[0, 0]))
        context = window[-CONTEXT:]
    return result


def main():
    session = ort.InferenceSession(str(HERE / "silero_vad_16k.onnx"))
    pcm = np.fromfile(HERE / "speech_16k.raw", dtype="<i2").astype(np.float32) / 32768.0
    reference = {
        "speech": probabilities(session, pcm),
        "silence": probabilities(session, np.zeros(16000, dtype=np.float32)),
    }
    (HERE / "reference.json").write_text(json.dumps(reference) + "\n")
    speech = reference["speech"]
    print(f"{len(speech)} windows, {sum(p > 0.5 for p in speech)} above 0.5, max silence {max(reference['silence']):.4f}")


if __name__ == "__main__":
    main()

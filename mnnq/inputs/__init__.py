"""Input loading, shared by the engines and the ``testdir`` / ``validate`` commands: what a user
points mnnq at, turned into arrays and float models.

- ``sources``: ``resolve_model`` turns an ONNX / TFLite file into a cached float ``.mnn``.
- ``feeds``: a model's declared inputs, and input samples from images, ``.npy``/``.npz`` files or
  seeded random data.
- ``images``: images preprocessed with quantized.out's config keys (MNN's own ImageProcess).
- ``references``: reference outputs from the float MNN model or onnxruntime on the ONNX source.
"""

"""mnnq's front end: the first steps of every MNN workflow, without MNN's telemetry wrapper.

- ``convert_command``: ``mnnq convert``, MNNConvert's flags passed through to the converter
  (run in a child process), with mnnq's exit codes and an atomic write.
- ``testdir_command``: ``mnnq testdir make`` (test sets from images, ``.npy``/``.npz`` files or
  seeded random data, references from the float model or onnxruntime) and ``mnnq testdir show``;
  ``testdir_make`` / ``testdir_show`` do the work.

Reading models, images, arrays and references is :mod:`mnnq.inputs`.
"""

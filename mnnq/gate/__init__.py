"""The gate: measure quantized models against their test sets and fail a build over budget.

- :mod:`mnnq.gate.project` reads the project config (``mnnq.yaml`` or ``[tool.mnnq]`` in
  ``pyproject.toml``) listing the models to keep within budget.
- :mod:`mnnq.gate.runner` measures one model (the runtime runs in a child process, so a
  corrupt file becomes a clear error, never a dead job) and returns a :class:`GateResult`.
- :mod:`mnnq.gate.reports` renders results: terminal tables and error bars, JSON, Markdown,
  GitHub annotations and SVG.
- :mod:`mnnq.gate.validate_command` and :mod:`mnnq.gate.check_command` are ``mnnq validate``
  and ``mnnq check``.

Fail closed: a model that cannot be measured (missing or corrupt file, missing output, shape
mismatch, NaN/Inf, missing test dir) is an error, exit 2, never a pass.
"""

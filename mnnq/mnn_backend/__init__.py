"""Everything that touches the MNN pip package: converter, runtime, model inspection.

Never imports ``MNN.tools`` (its wrapper installs packages and sends telemetry at import);
the native tools are reached through the ``_tools`` extension in a child process.
"""

"""mnnq's built-in plugins, one module per method, strategy or metric.

Installed as the ``mnnq_plugins`` package and registered through the ``mnnq`` entry-point
group, exactly like a third-party plugin.
"""

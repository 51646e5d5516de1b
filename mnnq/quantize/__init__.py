"""Offline full-INT8 quantization (``mnnq quantize``), a drop-in for MNN's ``quantized.out``.

``config`` parses its calibration config, ``inputs`` reads the samples, ``calibrate`` streams
activations through feature-method observers, ``writer`` builds the params file the converter
turns into an INT8 model, ``evaluate`` measures it, ``engine`` runs the job, ``command`` is the
CLI. Feature and weight methods are plugins (``mnnq_feature_methods`` / ``mnnq_weight_methods``).
"""

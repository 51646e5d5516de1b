"""The child process that runs a model on a test set: ``python -m mnnq.mnn_backend.child_run REQUEST.json``.

A corrupt model file can crash the MNN runtime; running it here turns a crash into a clear
error in the parent (:mod:`mnnq.mnn_backend.isolated`, the gate's :mod:`mnnq.gate.runner`)
instead of a dead process with no report.

The request names the model, the test set and the files to write:

- ``outputs`` (pickle): ``[{output name: array}, ...]``, one dict per sample, written as soon
  as the model has run on every sample;
- ``layers`` (pickle, optional): ``{"quantized": {tensor: [array per sample]}, "float": {...}}``
  for the intermediate tensors listed in ``layer_tensors``, on the samples whose indices
  ``layer_samples`` lists (diagnostics; written last, so a crash there still leaves the outputs);
- ``error`` (text): a one-line reason when the model cannot be loaded or run;
- ``layers_error`` (text): why the per-layer tensors could not be read (not a gate failure).

``testset`` (optional) is the test set the parent already loaded, pickled; without it the child
reads ``test_dir`` itself.

Exit status: 0 ok, 3 a reported error, anything else a crash.
"""
from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

EXIT_REPORTED = 3


def _load(path: Path, input_names, output_names, memory_mode: str):
    from mnnq.mnn_backend.runtime import LoadedModel

    try:
        return LoadedModel(path, input_names, output_names, memory_mode=memory_mode)
    except Exception as exc:  # the runtime raises SystemError for unreadable files / unknown names
        import MNN.nn as nn

        try:
            info = nn.load_module_from_file(str(path), [], []).get_info()
        except Exception:
            raise RuntimeError(f"MNN runtime could not load {path}; the file is corrupt or not an MNN model") from None
        declared_in, declared_out = list(info.get("inputNames", [])), list(info.get("outputNames", []))
        missing_in = [n for n in input_names if declared_in and n not in declared_in]
        if missing_in:
            raise RuntimeError(f"the model {path} has no input '{missing_in[0]}' (its inputs: "
                               f"{', '.join(declared_in)}); fix the test set's input.json") from None
        missing_out = [n for n in output_names if n not in declared_out]
        if missing_out:
            raise RuntimeError(f"the model {path} has no output '{missing_out[0]}' (its outputs: "
                               f"{', '.join(declared_out)}); fix the test set's input.json") from None
        raise RuntimeError(f"MNN runtime could not load {path} ({exc.__class__.__name__}: {exc})") from None


def _run_all(model, samples):
    results = []
    for sample in samples:
        try:
            results.append(model.run(sample.inputs))
        except Exception as exc:
            raise RuntimeError(f"running {model.path} on sample {sample.name} failed "
                               f"({exc.__class__.__name__}: {exc}); check the input shapes in input.json") from None
    return results


def _dump(obj, path: str) -> None:
    tmp = Path(path + ".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
    tmp.replace(path)


def main(request_path: str) -> int:
    from mnnq.mnn_backend.native import inject_fault
    from mnnq.testset import load_testset

    req = json.loads(Path(request_path).read_text())
    inject_fault("runtime", [req["model"]])  # test hook, see mnnq.mnn_backend.native
    try:
        if req.get("testset"):
            with open(req["testset"], "rb") as fh:
                testset = pickle.load(fh)
        else:
            testset = load_testset(Path(req["test_dir"]))
        model = _load(Path(req["model"]), testset.input_names, testset.output_names, req["memory_mode"])
        _dump(_run_all(model, testset.samples), req["outputs"])
        del model
    except Exception as exc:
        Path(req["error"]).write_text(str(exc).replace("\n", " "))
        return EXIT_REPORTED
    tensors = req.get("layer_tensors") or []
    if tensors and req.get("float_model"):
        try:
            samples = [testset.samples[i] for i in req["layer_samples"]]
            layers = {}
            for role, path, mode in (("quantized", req["model"], req["memory_mode"]),
                                     ("float", req["float_model"], "normal")):
                m = _load(Path(path), testset.input_names, tensors, mode)
                runs = _run_all(m, samples)
                layers[role] = {t: [r[t] for r in runs] for t in tensors}
                del m
            _dump(layers, req["layers"])
        except Exception as exc:
            Path(req["layers_error"]).write_text(str(exc).replace("\n", " "))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

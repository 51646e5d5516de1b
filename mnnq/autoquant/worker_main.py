"""A ``--jobs`` worker: ``python -m mnnq.autoquant.worker_main <setup.pkl> <socket path> <name>``.

It builds the same in-process simulation as the auto-quant process (see
:mod:`mnnq.autoquant.workers`; its swap files in ``<setup workdir>/<name>``), connects to the
socket, says its pid, then answers ``("measure", index, settings, quick)`` -- ``quick``: the
auto-quant process's quick sample indices, or None for the whole test set -- with
``("ok", index, {metric: error})`` (or ``("error", index, text)``) until ``("quit", ...)`` or the
socket closes. Its own quick samples never learn: they are always the ones it is sent.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import sys


def serve(setup_path: str, socket_path: str, name: str) -> int:
    from mnnq.autoquant.evaluators import FastEvaluator
    from mnnq.autoquant.workers import receive_message, send_message
    from mnnq.mnn_backend.swap import SwappableModel
    from mnnq.plugin_manager import get_plugin_manager

    # Ctrl-C reaches the whole process group: the auto-quant process stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(setup_path, "rb") as fh:
        setup = pickle.load(fh)
    setup.workdir = setup.workdir / name
    pm = get_plugin_manager()
    metrics = pm.metrics()
    evaluator = FastEvaluator(
        SwappableModel.load(setup.model, setup.layers, setup.testset.input_names, setup.testset.output_names,
                            setup.workdir, prepare="none", mode=setup.mode),
        {layer.name: layer for layer in setup.layers}, pm.weight_method(setup.method), setup.testset,
        {metric: metrics[metric] for metric in setup.metrics}, setup.decides)
    evaluator.quick.learning = False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    send_message(sock, os.getpid())
    while True:
        try:
            kind, index, settings, quick = receive_message(sock)
        except EOFError:
            return 0
        if kind == "quit":
            return 0
        try:
            if quick is not None:
                evaluator.quick.use(quick)
            errors = evaluator.measure(settings, "normal", quick is not None).errors
        except Exception as exc:  # noqa: BLE001 - reported to the auto-quant process, which goes on
            send_message(sock, ("error", index, f"{exc.__class__.__name__}: {exc}"))
            continue
        send_message(sock, ("ok", index, dict(errors)))


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2], sys.argv[3]))

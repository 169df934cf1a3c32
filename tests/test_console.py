"""The stderr line filter (C++ libraries' writes included) and the console tee."""

from __future__ import annotations

import io
import os
import re

from fedlm import console


def test_stderr_without_drops_only_matching_lines(capfd):
    with console.stderr_without(re.compile(rb"^E .*Unable to register cuDNN factory")):
        os.write(2, b"E 2026 cuda_dnn.cc] Unable to register cuDNN factory: already registered\n")
        os.write(2, b"E 2026 op_kernel.cc] a real error\n")  # what a C++ library writes, bypassing sys.stderr
        os.write(2, b"no newline at the end")
    os.write(2, b"\nafter\n")
    assert capfd.readouterr().err == "E 2026 op_kernel.cc] a real error\nno newline at the end\nafter\n"


def test_tensorflow_noise_pattern_matches_the_lines_tf_2_14_logs():
    noise = [
        b"2026-12-01 09:20:10.059362: E tensorflow/compiler/xla/stream_executor/cuda/cuda_dnn.cc:9342] Unable to "
        b"register cuDNN factory: Attempting to register factory for plugin cuDNN when one has already been registered",
        b"2026-12-01 09:20:10.059487: E tensorflow/compiler/xla/stream_executor/cuda/cuda_blas.cc:1518] Unable to "
        b"register cuBLAS factory: Attempting to register factory for plugin cuBLAS when one has already been "
        b"registered",
        b"2026-12-01 09:20:14.844063: W tensorflow/compiler/tf2tensorrt/utils/py_utils.cc:38] TF-TRT Warning: Could "
        b"not find TensorRT",
    ]
    real = b"2026-12-01 09:20:10.059487: E tensorflow/core/framework/op_kernel.cc:1830] OP_REQUIRES failed"
    assert all(console.TENSORFLOW_IMPORT_NOISE.search(line) for line in noise)
    assert not console.TENSORFLOW_IMPORT_NOISE.search(real)


def test_tee_hands_on_complete_lines():
    stream, lines = io.StringIO(), []
    tee = console.Tee(stream, lines.append)
    print("round 1/2", file=tee)
    tee.write("round 2/2 ")
    assert lines == ["round 1/2"]
    tee.write("ETA 0s\nfinal")
    assert lines == ["round 1/2", "round 2/2 ETA 0s"] and stream.getvalue() == "round 1/2\nround 2/2 ETA 0s\nfinal"
    assert tee.getvalue() == stream.getvalue()  # anything else is the stream's


def test_closing_the_tee_stops_teeing_and_leaves_the_stream_open():
    stream, lines = io.StringIO(), []
    tee = console.Tee(stream, lines.append)
    tee.close()  # as absl's handler does to a stream that is no longer sys.stderr
    tee.write("after\n")
    assert not stream.closed and stream.getvalue() == "after\n" and lines == []

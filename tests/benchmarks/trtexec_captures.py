"""REAL trtexec console captures used as parser fixtures (trtexec cannot run on the CI machines).

Each block is copied verbatim from the public source named above it (listed in
docs/deployment.md §5.3, or found in the cited GitHub thread). Nothing here is
synthesised, except where a constant says "constructed".
"""

# TensorRT 10, NVIDIA/TensorRT#4177 (docs/deployment.md §5.3).
TRT10 = """\
[10/03/2024-10:47:59] [I] === Performance summary ===
[10/03/2024-10:47:59] [I] Throughput: 130.298 qps
[10/03/2024-10:47:59] [I] Latency: min = 5.38672 ms, max = 13.3664 ms, mean = 7.60628 ms, median = 7.16092 ms, percentile(90%) = 10.2996 ms, percentile(95%) = 10.8698 ms, percentile(99%) = 12.9675 ms
[10/03/2024-10:47:59] [I] Enqueue Time: min = 2.72876 ms, max = 15.0201 ms, mean = 7.63062 ms, median = 7.86694 ms, percentile(90%) = 10.1792 ms, percentile(95%) = 11.7217 ms, percentile(99%) = 14.1848 ms
[10/03/2024-10:47:59] [I] H2D Latency: min = 0.0065918 ms, max = 0.0698242 ms, mean = 0.0122212 ms, median = 0.00814819 ms, percentile(90%) = 0.0253906 ms, percentile(95%) = 0.0270996 ms, percentile(99%) = 0.0515137 ms
[10/03/2024-10:47:59] [I] GPU Compute Time: min = 5.34595 ms, max = 13.3388 ms, mean = 7.58404 ms, median = 7.14139 ms, percentile(90%) = 10.2881 ms, percentile(95%) = 10.8175 ms, percentile(99%) = 12.9485 ms
[10/03/2024-10:47:59] [I] D2H Latency: min = 0.00390625 ms, max = 0.110596 ms, mean = 0.0100141 ms, median = 0.00439453 ms, percentile(90%) = 0.0254517 ms, percentile(95%) = 0.0319824 ms, percentile(99%) = 0.0994873 ms
[10/03/2024-10:47:59] [I] Total Host Walltime: 3.00082 s
[10/03/2024-10:47:59] [I] Total GPU Compute Time: 2.96536 s
[10/03/2024-10:47:59] [W] * Throughput may be bound by Enqueue Time rather than GPU Compute and the GPU may be under-utilized.
"""

# Jetson Nano, TensorRT 8.x, --fp16 (NobuoTsukamoto/tensorrt-examples README; docs/deployment.md §5.3).
TRT8_NANO = """\
[12/02/2021-19:58:58] [I] === Performance summary ===
[12/02/2021-19:58:58] [I] Throughput: 9.85818 qps
[12/02/2021-19:58:58] [I] Latency: min = 100.036 ms, max = 104.225 ms, mean = 101.425 ms, median = 101.092 ms, percentile(99%) = 104.225 ms
[12/02/2021-19:58:58] [I] End-to-End Host Latency: min = 100.049 ms, max = 104.233 ms, mean = 101.438 ms, median = 101.105 ms, percentile(99%) = 104.233 ms
[12/02/2021-19:58:58] [I] Enqueue Time: min = 57.1197 ms, max = 61.1654 ms, mean = 58.9862 ms, median = 58.2306 ms, percentile(99%) = 61.1654 ms
[12/02/2021-19:58:58] [I] H2D Latency: min = 0.307251 ms, max = 0.312866 ms, mean = 0.310417 ms, median = 0.310425 ms, percentile(99%) = 0.312866 ms
[12/02/2021-19:58:58] [I] GPU Compute Time: min = 99.6099 ms, max = 103.805 ms, mean = 101.003 ms, median = 100.67 ms, percentile(99%) = 103.805 ms
[12/02/2021-19:58:58] [I] D2H Latency: min = 0.110596 ms, max = 0.114624 ms, mean = 0.112055 ms, median = 0.111938 ms, percentile(99%) = 0.114624 ms
[12/02/2021-19:58:58] [I] Total Host Walltime: 3.24604 s
[12/02/2021-19:58:58] [I] Total GPU Compute Time: 3.23208 s
[12/02/2021-19:58:58] [I] Explanations of the performance metrics are printed in the verbose logs.
"""

# TensorRT 8.4 (single percentile(99%)) with the CoV stability warning, WongKinYiu/yolov7 PR #329.
TRT84_YOLOV7 = """\
[07/28/2022-16:00:55] [I] === Performance summary ===
[07/28/2022-16:00:55] [I] Throughput: 716.632 qps
[07/28/2022-16:00:55] [I] Latency: min = 1.3476 ms, max = 1.5657 ms, mean = 1.38629 ms, median = 1.38037 ms, percentile(99%) = 1.55853 ms
[07/28/2022-16:00:55] [I] Enqueue Time: min = 0.0109863 ms, max = 0.0975342 ms, mean = 0.022185 ms, median = 0.0200195 ms, percentile(99%) = 0.071167 ms
[07/28/2022-16:00:55] [I] H2D Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(99%) = 0 ms
[07/28/2022-16:00:55] [I] GPU Compute Time: min = 1.3476 ms, max = 1.5657 ms, mean = 1.38629 ms, median = 1.38037 ms, percentile(99%) = 1.55853 ms
[07/28/2022-16:00:55] [I] D2H Latency: min = 0 ms, max = 0 ms, mean = 0 ms, median = 0 ms, percentile(99%) = 0 ms
[07/28/2022-16:00:55] [I] Total Host Walltime: 3.00294 s
[07/28/2022-16:00:55] [I] Total GPU Compute Time: 2.9833 s
[07/28/2022-16:00:55] [W] * GPU compute time is unstable, with coefficient of variance = 2.10486%.
[07/28/2022-16:00:55] [W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
[07/28/2022-16:00:55] [I] Explanations of the performance metrics are printed in the verbose logs.
"""

# TensorRT 7 multi-line block with "end to end" per-window lines, NVIDIA/TensorRT#2054 (the part the
# thread shows; docs/deployment.md §5.3 describes the format).
TRT7_BLOCK = """\
[06/12/2022-22:34:00] [I] Average on 10 runs - GPU latency: 1.56245 ms - Host latency: 1.65786 ms (end to end 2.76426 ms, enqueue 0.943042 ms)
[06/12/2022-22:34:00] [I] Average on 10 runs - GPU latency: 1.56167 ms - Host latency: 1.65811 ms (end to end 3.02041 ms, enqueue 0.936011 ms)
[06/12/2022-22:34:00] [I] Average on 10 runs - GPU latency: 1.55896 ms - Host latency: 1.65439 ms (end to end 3.01099 ms, enqueue 0.937231 ms)
[06/12/2022-22:34:00] [I] Average on 10 runs - GPU latency: 1.5605 ms - Host latency: 1.65498 ms (end to end 3.01636 ms, enqueue 0.935498 ms)
[06/12/2022-22:34:00] [I] Average on 10 runs - GPU latency: 1.55903 ms - Host latency: 1.65396 ms (end to end 3.01013 ms, enqueue 0.93772 ms)
[06/12/2022-22:34:00] [I] Host Latency
[06/12/2022-22:34:00] [I] min: 1.64058 ms (end to end 1.66368 ms)
[06/12/2022-22:34:00] [I] max: 6.2915 ms (end to end 7.65552 ms)
[06/12/2022-22:34:00] [I] mean: 1.66069 ms (end to end 3.00909 ms)
[06/12/2022-22:34:00] [I] median: 1.65601 ms (end to end 3.01636 ms)
[06/12/2022-22:34:00] [I] percentile: 1.67065 ms at 99% (end to end 3.03931 ms at 99%)
[06/12/2022-22:34:00] [I] throughput: 0 qps
[06/12/2022-22:34:00] [I] walltime: 3.00461 s
"""

# "Average on N runs" without "end to end" (TRT >= 8.4), the CoV warning and the PASSED trailer
# (sources in docs/deployment.md §5.3).
MISC_LINES = """\
Average on 10 runs - GPU latency: 22.1307 ms - Host latency: 22.1888 ms (enqueue 0.0616455 ms)
[W] * GPU compute time is unstable, with coefficient of variance = 2.10486%.
[W]   If not already in use, locking GPU clock frequency or adding --useSpinWait may improve the stability.
&&&& PASSED TensorRT.trtexec [TensorRT v8401] # <cmd>
"""

# The RUNNING header of TensorRT 10.2 (NVIDIA/TensorRT#4036).
RUNNING_TRT102 = ("&&&& RUNNING TensorRT.trtexec [TensorRT v100200] # D:\\TensorRT-10.2.0.19\\bin\\trtexec.exe "
                  "--loadEngine=FM_P_D_fp16.engine --shapes=ref_y:1x128x100x160,c1:1x48x1600x2560\n")

# CONSTRUCTED example of the documented --exportTimes format (keys from NVIDIA
# samples/trtexec/tracer.py: startInMs ... endToEndMs); not a capture.
EXPORT_TIMES_CONSTRUCTED = """[
  { "startInMs" : 0.0, "endInMs" : 0.01, "startComputeMs" : 0.02, "endComputeMs" : 1.52, "startOutMs" : 1.53,
    "endOutMs" : 1.55, "inMs" : 0.01, "computeMs" : 1.50, "outMs" : 0.02, "latencyMs" : 1.53, "endToEndMs" : 1.55 },
  { "startInMs" : 1.60, "endInMs" : 1.61, "startComputeMs" : 1.62, "endComputeMs" : 3.22, "startOutMs" : 3.23,
    "endOutMs" : 3.25, "inMs" : 0.01, "computeMs" : 1.60, "outMs" : 0.02, "latencyMs" : 1.63, "endToEndMs" : 1.65 },
  { "startInMs" : 3.30, "endInMs" : 3.31, "startComputeMs" : 3.32, "endComputeMs" : 5.02, "startOutMs" : 5.03,
    "endOutMs" : 5.05, "inMs" : 0.01, "computeMs" : 1.70, "outMs" : 0.02, "latencyMs" : 1.73, "endToEndMs" : 1.75 }
]
"""

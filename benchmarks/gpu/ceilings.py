"""The two ceilings every GPU kernel number is measured against, on the GPU at hand (METHOD: measure, don't quote).

- HBM bandwidth: a large device-to-device copy, counting bytes read + written.
- bf16 dense GEMM rate: an 8192³ matrix product through cuBLAS, on random data (never zeros).
Warm-up excluded; median of repeats timed with CUDA events. Prints a table and one JSON line last.
"""

from __future__ import annotations

import functools
import json
import statistics

import torch


def _time_ms(fn, repeats: int = 20, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("ceilings.py needs a CUDA device")
    src = torch.randn(1 << 30, dtype=torch.bfloat16, device="cuda")               # 2 GiB
    dst = torch.empty_like(src)
    copy_ms = _time_ms(functools.partial(dst.copy_, src))
    bandwidth = 2 * src.numel() * src.element_size() / (copy_ms * 1e-3) / 1e12      # TB/s, read + write
    del src, dst
    n = 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    gemm_ms = _time_ms(lambda: a @ b)
    tflops = 2 * n**3 / (gemm_ms * 1e-3) / 1e12
    result = {"device": torch.cuda.get_device_name(), "copy_tb_s": round(bandwidth, 3),
              "bf16_gemm_tflop_s": round(tflops, 1), "torch": torch.__version__}
    print(f"{result['device']}: copy {bandwidth:.2f} TB/s (read+write), bf16 GEMM {tflops:.0f} TFLOP/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()

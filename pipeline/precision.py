"""Which floating-point policy training runs in: params.yaml `train.precision`.

- `float32`: everything in float32 (the default; what the recordings and the
  calibration were measured with).
- `mixed_bfloat16`: Keras mixed precision, bf16 compute with float32 weights
  and a float32 softmax. On a CPU with bf16 instructions (AVX512-BF16, or
  AMX-BF16 on recent Intel Xeons) oneDNN runs convolutions and matrix products
  in bf16; on a CPU without them it is emulated and slower.
- `auto`: `mixed_bfloat16` when this machine's CPU lists avx512_bf16 or
  amx_bf16 in /proc/cpuinfo, else `float32`.

The policy is process-wide in Keras, so `apply` sets it (float32 included)
before every model is built. Inputs: the setting, /proc/cpuinfo. Outputs: none.
"""

from __future__ import annotations

from pathlib import Path

FLOAT32 = "float32"
MIXED_BF16 = "mixed_bfloat16"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU lists a bf16 instruction set (False when unknown)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return any(flag in value.split() for flag in BF16_FLAGS)
    return False


def resolve(setting: str, cpuinfo: Path = CPUINFO) -> str:
    """`train.precision` -> the Keras dtype policy name it means on this machine."""
    if setting == "auto":
        return MIXED_BF16 if cpu_has_bf16(cpuinfo) else FLOAT32
    return setting


def apply(setting: str) -> str:
    """Set Keras's global dtype policy for `setting`; returns the policy's name."""
    import keras

    policy = resolve(setting)
    keras.mixed_precision.set_global_policy(policy)
    return policy

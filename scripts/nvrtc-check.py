#!/usr/bin/env python3
"""Compiles the CUDA sources with NVRTC to a cubin for sm_90, as the runtime does,
and prints the register and error log: a compile check that needs no GPU.

    python3 scripts/nvrtc-check.py [--arch sm_90] [-v] [FILE.cu ...]

-v passes --ptxas-options=-v: registers, shared memory and spills per kernel.

libnvrtc comes from $LANES_NVRTC_LIB, else the pip wheel nvidia-cuda-nvrtc
(`pip download --no-deps nvidia-cuda-nvrtc==13.0.88`, unzip, point
LANES_NVRTC_LIB at nvidia/cu13/lib/libnvrtc.so.13), else the system's.
Exit 0 when every file compiles.
"""
import ctypes
import os
import sys

DEFAULT = ["crates/lanes-nn/src/exec/fused.cu", "crates/lanes-nn/src/exec/kernels.cu"]


def load():
    for cand in [os.environ.get("LANES_NVRTC_LIB"), "libnvrtc.so.13", "libnvrtc.so"]:
        if not cand:
            continue
        try:
            return ctypes.CDLL(cand)
        except OSError:
            pass
    sys.exit("nvrtc-check: libnvrtc not found (set LANES_NVRTC_LIB)")


def compile_one(lib, path, arch, verbose=False):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None)
    if rc:
        return f"{path}: nvrtcCreateProgram failed ({rc})"
    opts = [f"--gpu-architecture={arch}".encode(), b"-std=c++17", b"-lineinfo"]
    if verbose:
        opts.append(b"--ptxas-options=-v")
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    text = log.value.decode(errors="replace").strip()
    if text:
        print(f"--- {path}\n{text}")
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
        print(f"{path}: ok ({size.value} bytes of cubin for {arch})")
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return None if rc == 0 else f"{path}: compile failed ({rc})"


def main():
    args = sys.argv[1:]
    arch = "sm_90"
    verbose = False
    while args[:1] in (["--arch"], ["-v"]):
        if args[0] == "-v":
            verbose, args = True, args[1:]
        else:
            arch, args = args[1], args[2:]
    lib = load()
    errors = [e for e in (compile_one(lib, p, arch, verbose) for p in (args or DEFAULT)) if e]
    for e in errors:
        print(e, file=sys.stderr)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()

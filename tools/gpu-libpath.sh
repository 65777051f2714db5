# gpu-libpath.sh - sourced by tools/gpu-check.sh and bench/cuda-quant.sh (sh/bash).
# gpu_libpath BUNDLE BIN: puts the CUDA libraries the programs in BIN need on LD_LIBRARY_PATH:
# BUNDLE/lib (tools/gpu-bundle.sh's), the toolkit's, else wherever the missing ones are found
# under /usr and /opt (PyTorch's nvidia-* wheels).
gpu_libpath() {
  libdirs="$1/lib"
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [ -d "$d" ] && libdirs="$libdirs:$d"; done
  export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  for lib in $(ldd "$2"/* 2>/dev/null | awk '/not found/{print $1}' | sort -u); do
    d=$(find /usr /opt -name "$lib" -printf '%h\n' 2>/dev/null | head -1)
    [ -n "$d" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
  done
  return 0
}

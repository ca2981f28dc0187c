// HBI_HD marks the rule functions that the CPU kernels and the CUDA kernels both call, so that one copy of
// each rule runs on both devices (compiled by the host compiler alone, it is a plain inline function).
#pragma once

#if defined(__CUDACC__)
#define HBI_HD __host__ __device__ __forceinline__
#else
#define HBI_HD inline
#endif

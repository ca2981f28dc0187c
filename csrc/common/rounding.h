// Arithmetic with one IEEE round-to-nearest per operation on both devices: on the GPU the _rn intrinsics
// (never contracted into a fused multiply-add), on the CPU the plain operators (the C++ build sets
// -ffp-contract=off), so a sum written with these rounds the same on the CPU and the GPU.
#pragma once
#include <cmath>

#include "common/host_device.h"

namespace hbi {

#if defined(__CUDA_ARCH__)
HBI_HD float add_rn(float a, float b) { return __fadd_rn(a, b); }
HBI_HD double add_rn(double a, double b) { return __dadd_rn(a, b); }
HBI_HD float sub_rn(float a, float b) { return __fsub_rn(a, b); }
HBI_HD double sub_rn(double a, double b) { return __dsub_rn(a, b); }
HBI_HD float mul_rn(float a, float b) { return __fmul_rn(a, b); }
HBI_HD double mul_rn(double a, double b) { return __dmul_rn(a, b); }
HBI_HD float div_rn(float a, float b) { return __fdiv_rn(a, b); }
HBI_HD double div_rn(double a, double b) { return __ddiv_rn(a, b); }
HBI_HD float sqrt_rn(float a) { return __fsqrt_rn(a); }
HBI_HD double sqrt_rn(double a) { return __dsqrt_rn(a); }
template <typename T>
HBI_HD bool is_nan(T v) {
  return isnan(v);
}
#else
template <typename T>
HBI_HD T add_rn(T a, T b) {
  return a + b;
}
template <typename T>
HBI_HD T sub_rn(T a, T b) {
  return a - b;
}
template <typename T>
HBI_HD T mul_rn(T a, T b) {
  return a * b;
}
template <typename T>
HBI_HD T div_rn(T a, T b) {
  return a / b;
}
template <typename T>
HBI_HD T sqrt_rn(T a) {
  return std::sqrt(a);
}
template <typename T>
HBI_HD bool is_nan(T v) {
  return std::isnan(v);
}
#endif

}  // namespace hbi

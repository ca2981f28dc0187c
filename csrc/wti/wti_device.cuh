// Constants shared by the wti_similarity CUDA kernels (wti_cuda.cu describes the design).
#pragma once

namespace hbi {
namespace wti {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;

}  // namespace wti
}  // namespace hbi

/*
 * tqdit-export: the arithmetic of the TimeGroupQuantize plugin, shared by the CUDA kernel,
 * the TensorRT plugin and the CPU reference (one definition, so the CPU test checks the
 * same function the GPU runs).
 *
 * q = clamp(rint(x / scales[group]), qmin, qmax) as int8: the arithmetic of ONNX
 * QuantizeLinear (division, round half to even, saturate) with the scale picked from a
 * per-time-group table by an index read on the device.
 */
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define TQDIT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TQDIT_HOST_DEVICE inline
#endif

namespace tqdit
{

// Time groups a plugin instance can hold; the table travels by value as a kernel argument.
constexpr int32_t kMaxTimeGroups = 256;

struct ScaleTable
{
    float scale[kMaxTimeGroups];
    int32_t numGroups;
};

// An index outside the table selects the nearest group: a kernel cannot raise, and the
// Python side validates time_group before it reaches the device.
TQDIT_HOST_DEVICE int32_t clampGroup(int32_t group, int32_t numGroups)
{
    return group < 0 ? 0 : (group >= numGroups ? numGroups - 1 : group);
}

TQDIT_HOST_DEVICE int8_t quantizeOne(float x, float scale, int32_t qmin, int32_t qmax)
{
    float q = rintf(x / scale); // IEEE division (no fast-math): bit-identical to x / scale on the host
    q = fminf(fmaxf(q, static_cast<float>(qmin)), static_cast<float>(qmax));
    return static_cast<int8_t>(q);
}

// Signed range of a `bits`-wide symmetric code, as calibration.quantizers.qrange.
TQDIT_HOST_DEVICE void codeRange(int32_t bits, int32_t* qmin, int32_t* qmax)
{
    *qmin = -(1 << (bits - 1));
    *qmax = (1 << (bits - 1)) - 1;
}

} // namespace tqdit

#if defined(__CUDACC__) || defined(TQDIT_WITH_CUDA_RUNTIME)
#include <cuda_runtime_api.h>
namespace tqdit
{
// Quantize n floats with the scale of table.scale[*groupOnDevice] on `stream`.
cudaError_t launchTimeGroupQuantize(float const* x, int8_t* q, int64_t n, ScaleTable const& table,
    int32_t const* groupOnDevice, int32_t bits, cudaStream_t stream);
} // namespace tqdit
#endif

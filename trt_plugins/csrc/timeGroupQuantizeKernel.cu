/*
 * tqdit-export: CUDA kernel of the TimeGroupQuantize plugin.
 *
 * The group index is read on the device, so one engine (and one CUDA graph) serves every
 * time group: the host never synchronises to learn which group a step belongs to.
 */
#include "timeGroupQuantize.h"

namespace tqdit
{

__global__ void timeGroupQuantizeKernel(
    float const* x, int8_t* q, int64_t n, ScaleTable table, int32_t const* group, int32_t qmin, int32_t qmax)
{
    float const scale = table.scale[clampGroup(*group, table.numGroups)];
    int64_t const stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        q[i] = quantizeOne(x[i], scale, qmin, qmax);
    }
}

cudaError_t launchTimeGroupQuantize(float const* x, int8_t* q, int64_t n, ScaleTable const& table,
    int32_t const* groupOnDevice, int32_t bits, cudaStream_t stream)
{
    if (n == 0)
    {
        return cudaSuccess;
    }
    int32_t qmin, qmax;
    codeRange(bits, &qmin, &qmax);
    constexpr int32_t kThreads = 256;
    int64_t const wanted = (n + kThreads - 1) / kThreads;
    int32_t const blocks = static_cast<int32_t>(wanted < 65535 ? wanted : 65535); // grid-stride loop covers the rest
    timeGroupQuantizeKernel<<<blocks, kThreads, 0, stream>>>(x, q, n, table, groupOnDevice, qmin, qmax);
    return cudaGetLastError();
}

} // namespace tqdit

// C entry point for tests on a GPU: host arrays in, host codes out (synchronous).
extern "C" int tqdit_time_group_quantize_cuda(
    float const* x, int8_t* q, int64_t n, float const* scales, int32_t numGroups, int32_t group, int32_t bits)
{
    if (numGroups < 1 || numGroups > tqdit::kMaxTimeGroups || bits < 2 || bits > 8)
    {
        return -1;
    }
    tqdit::ScaleTable table{};
    for (int32_t g = 0; g < numGroups; ++g)
    {
        table.scale[g] = scales[g];
    }
    table.numGroups = numGroups;
    float* dx = nullptr;
    int8_t* dq = nullptr;
    int32_t* dg = nullptr;
    cudaError_t err = cudaMalloc(&dx, n * sizeof(float));
    if (err == cudaSuccess) err = cudaMalloc(&dq, n > 0 ? n : 1);
    if (err == cudaSuccess) err = cudaMalloc(&dg, sizeof(int32_t));
    if (err == cudaSuccess) err = cudaMemcpy(dx, x, n * sizeof(float), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = cudaMemcpy(dg, &group, sizeof(int32_t), cudaMemcpyHostToDevice);
    if (err == cudaSuccess) err = tqdit::launchTimeGroupQuantize(dx, dq, n, table, dg, bits, nullptr);
    if (err == cudaSuccess) err = cudaMemcpy(q, dq, n, cudaMemcpyDeviceToHost);
    cudaFree(dx);
    cudaFree(dq);
    cudaFree(dg);
    return err == cudaSuccess ? 0 : static_cast<int>(err);
}

/*
 * tqdit-export: CPU reference of the TimeGroupQuantize kernel, built from the same
 * header as the CUDA kernel. CI compiles it with the system C++ compiler and compares it
 * with the calibration quantizer (tests/trt_plugins).
 */
#include "timeGroupQuantize.h"

extern "C" int tqdit_time_group_quantize_cpu(
    float const* x, int8_t* q, int64_t n, float const* scales, int32_t numGroups, int32_t group, int32_t bits)
{
    if (numGroups < 1 || numGroups > tqdit::kMaxTimeGroups || bits < 2 || bits > 8)
    {
        return -1;
    }
    int32_t qmin, qmax;
    tqdit::codeRange(bits, &qmin, &qmax);
    float const scale = scales[tqdit::clampGroup(group, numGroups)];
    for (int64_t i = 0; i < n; ++i)
    {
        q[i] = tqdit::quantizeOne(x[i], scale, qmin, qmax);
    }
    return 0;
}

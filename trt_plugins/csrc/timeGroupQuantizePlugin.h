/*
 * tqdit-export: TensorRT IPluginV3 "TimeGroupQuantize" (namespace "tqdit", version "1").
 *
 * Inputs:  0 x           float32, any shape, linear
 *          1 time_group  int32 [1], on the device: the step's time group
 * Output:  0 codes       int8, the shape of x: clamp(rint(x / scales[time_group]))
 * Fields:  scales (float32[G], G <= 256, all > 0), bits (int32, 2..8)
 *
 * In the exported `plugin` layout the codes feed DequantizeLinear(scale 1) -> GEMM, and the
 * GEMM output is multiplied by scales[time_group]: one engine serves every time group.
 * The ONNX node is op "TimeGroupQuantize" with string attributes plugin_namespace="tqdit"
 * and plugin_version="1", as TensorRT's ONNX parser looks plugins up.
 */
#pragma once

#include "timeGroupQuantize.h"

#include <NvInferRuntime.h>

#include <string>
#include <vector>

namespace tqdit
{

constexpr char const* kPluginName = "TimeGroupQuantize";
constexpr char const* kPluginVersion = "1";
constexpr char const* kPluginNamespace = "tqdit";

class TimeGroupQuantizePlugin : public nvinfer1::IPluginV3,
                                public nvinfer1::IPluginV3OneCore,
                                public nvinfer1::IPluginV3OneBuild,
                                public nvinfer1::IPluginV3OneRuntime
{
public:
    TimeGroupQuantizePlugin(std::vector<float> scales, int32_t bits);
    ~TimeGroupQuantizePlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override { return 1; }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    ScaleTable mTable{};
    std::vector<float> mScales;
    int32_t mBits;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class TimeGroupQuantizeCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    TimeGroupQuantizeCreator();
    char const* getPluginName() const noexcept override { return kPluginName; }
    char const* getPluginVersion() const noexcept override { return kPluginVersion; }
    char const* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return &mFieldNames; }
    nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
        nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldNames{};
};

} // namespace tqdit

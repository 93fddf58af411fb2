/*
 * tqdit-export: TensorRT IPluginV3 "TimeGroupQuantize"; see timeGroupQuantizePlugin.h.
 * Built by CMakeLists.txt into libtqdit_trt_plugins.so, which TensorRT loads with
 * IPluginRegistry::loadLibrary (Python: trt.get_plugin_registry().load_library(path)).
 */
#include "timeGroupQuantizePlugin.h"

#include <cstring>
#include <exception>
#include <iostream>
#include <utility>

using namespace nvinfer1;

namespace tqdit
{
namespace
{
enum : int32_t
{
    kInX = 0,
    kInGroup = 1,
    kOutCodes = 2
};

int64_t volume(Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

void report(char const* what) noexcept
{
    std::cerr << "[tqdit TimeGroupQuantize] " << what << std::endl;
}
} // namespace

TimeGroupQuantizePlugin::TimeGroupQuantizePlugin(std::vector<float> scales, int32_t bits)
    : mScales(std::move(scales))
    , mBits(bits)
{
    mTable.numGroups = static_cast<int32_t>(mScales.size());
    for (size_t g = 0; g < mScales.size(); ++g)
    {
        mTable.scale[g] = mScales[g];
    }
}

IPluginCapability* TimeGroupQuantizePlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* TimeGroupQuantizePlugin::clone() noexcept
{
    try
    {
        return new TimeGroupQuantizePlugin(mScales, mBits);
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

int32_t TimeGroupQuantizePlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        report("expects inputs (x, time_group) and one output");
        return -1;
    }
    if (volume(in[kInGroup].desc.dims) != 1)
    {
        report("time_group must hold exactly one element");
        return -1;
    }
    return 0;
}

int32_t TimeGroupQuantizePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbOutputs != 1 || nbInputs != 2)
    {
        return -1;
    }
    outputTypes[0] = DataType::kINT8; // codes; the graph's DequantizeLinear(scale 1) turns them back into numbers
    return 0;
}

int32_t TimeGroupQuantizePlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* shapeInputs, int32_t nbShapeInputs, DimsExprs* outputs, int32_t nbOutputs,
    IExprBuilder& exprBuilder) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return -1;
    }
    outputs[0] = inputs[kInX];
    return 0;
}

bool TimeGroupQuantizePlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    PluginTensorDesc const& d = inOut[pos].desc;
    if (d.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    switch (pos)
    {
    case kInX: return d.type == DataType::kFLOAT;
    case kInGroup: return d.type == DataType::kINT32;
    case kOutCodes: return d.type == DataType::kINT8;
    default: return false;
    }
}

int32_t TimeGroupQuantizePlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    return (nbInputs == 2 && nbOutputs == 1 && volume(in[kInGroup].dims) == 1) ? 0 : -1;
}

int32_t TimeGroupQuantizePlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* outputDesc,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    cudaError_t const err = launchTimeGroupQuantize(static_cast<float const*>(inputs[kInX]),
        static_cast<int8_t*>(outputs[0]), volume(inputDesc[kInX].dims), mTable,
        static_cast<int32_t const*>(inputs[kInGroup]), mBits, stream);
    if (err != cudaSuccess)
    {
        report(cudaGetErrorString(err));
        return -1;
    }
    return 0;
}

IPluginV3* TimeGroupQuantizePlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    return clone(); // no per-context resources: the scale table travels as a kernel argument
}

PluginFieldCollection const* TimeGroupQuantizePlugin::getFieldsToSerialize() noexcept
{
    mFields.clear();
    mFields.emplace_back("scales", mScales.data(), PluginFieldType::kFLOAT32, static_cast<int32_t>(mScales.size()));
    mFields.emplace_back("bits", &mBits, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
    mFieldCollection.fields = mFields.data();
    return &mFieldCollection;
}

TimeGroupQuantizeCreator::TimeGroupQuantizeCreator()
{
    mFields.emplace_back("scales", nullptr, PluginFieldType::kFLOAT32, 0);
    mFields.emplace_back("bits", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.nbFields = static_cast<int32_t>(mFields.size());
    mFieldNames.fields = mFields.data();
}

IPluginV3* TimeGroupQuantizeCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase phase) noexcept
{
    try
    {
        std::vector<float> scales;
        int32_t bits = 8;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            if (std::strcmp(f.name, "scales") == 0 && f.type == PluginFieldType::kFLOAT32)
            {
                auto const* data = static_cast<float const*>(f.data);
                scales.assign(data, data + f.length);
            }
            else if (std::strcmp(f.name, "bits") == 0)
            {
                // The ONNX parser passes an INT attribute as INT32; the Python plugin's engines store INT64.
                if (f.length != 1 || f.data == nullptr)
                {
                    report("field 'bits' must hold one integer");
                    return nullptr;
                }
                if (f.type == PluginFieldType::kINT32)
                {
                    bits = *static_cast<int32_t const*>(f.data);
                }
                else if (f.type == PluginFieldType::kINT64)
                {
                    int64_t const wide = *static_cast<int64_t const*>(f.data);
                    bits = (wide < 2 || wide > 8) ? 0 : static_cast<int32_t>(wide);
                }
                else
                {
                    report("field 'bits' must be INT32 or INT64");
                    return nullptr;
                }
            }
        }
        if (scales.empty() || scales.size() > static_cast<size_t>(kMaxTimeGroups))
        {
            report("field 'scales' must hold 1..256 float32 values (one per time group)");
            return nullptr;
        }
        for (float s : scales)
        {
            if (!(s > 0.0F) || s != s)
            {
                report("field 'scales' has a value <= 0 or NaN");
                return nullptr;
            }
        }
        if (bits < 2 || bits > 8)
        {
            report("field 'bits' must be 2..8");
            return nullptr;
        }
        return new TimeGroupQuantizePlugin(std::move(scales), bits);
    }
    catch (std::exception const& e)
    {
        report(e.what());
    }
    return nullptr;
}

} // namespace tqdit

// Entry points of a TensorRT plugin library (IPluginRegistry::loadLibrary).
extern "C"
{
    void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {}

    nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
    {
        static tqdit::TimeGroupQuantizeCreator creator;
        static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
        nbCreators = 1;
        return creators;
    }
}

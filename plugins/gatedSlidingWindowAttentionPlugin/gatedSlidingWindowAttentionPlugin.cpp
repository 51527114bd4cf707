#include "gatedSlidingWindowAttentionPlugin.h"

#include "common/pluginLogging.h"

#include <cmath>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;

namespace plt
{
namespace plugin
{
namespace
{

constexpr int32_t kRANKS[kNB_INPUTS] = {5, 4, 4, 5, 5, 2, 2, 2, 1}; // contract ranks, in input order
constexpr char const* kINPUT_NAMES[kNB_INPUTS] = {"query", "key_global", "value_global", "key_local",
    "value_local", "query_pos", "local_pos", "gate_weight", "gate_bias"};

bool isFloatType(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kHALF || t == DataType::kBF16;
}

//! Sets `dim` from a tensor dim (-1 = unknown at build time); a second known value must agree.
void unify(int32_t& dim, int64_t value, char const* what)
{
    if (value < 0)
    {
        return;
    }
    check(value <= std::numeric_limits<int32_t>::max(), std::string(what) + " is too large");
    check(dim < 0 || dim == value,
        std::string("inconsistent ") + what + ": " + std::to_string(dim) + " vs " + std::to_string(value));
    dim = static_cast<int32_t>(value);
}

int64_t readIntField(PluginField const& f)
{
    check(f.data != nullptr && f.length == 1, std::string("attribute ") + f.name + " must hold one INT");
    if (f.type == PluginFieldType::kINT32)
    {
        return *static_cast<int32_t const*>(f.data);
    }
    if (f.type == PluginFieldType::kINT64)
    {
        return *static_cast<int64_t const*>(f.data);
    }
    throw PluginError(std::string("attribute ") + f.name + " must be INT (kINT32 or kINT64), got PluginFieldType "
        + std::to_string(static_cast<int32_t>(f.type)));
}

double readFloatField(PluginField const& f)
{
    check(f.data != nullptr && f.length == 1, std::string("attribute ") + f.name + " must hold one FLOAT");
    if (f.type == PluginFieldType::kFLOAT32)
    {
        return *static_cast<float const*>(f.data);
    }
    if (f.type == PluginFieldType::kFLOAT64)
    {
        return *static_cast<double const*>(f.data);
    }
    throw PluginError(std::string("attribute ") + f.name + " must be FLOAT (kFLOAT32 or kFLOAT64), got PluginFieldType "
        + std::to_string(static_cast<int32_t>(f.type)));
}

int32_t toInt32(int64_t v, char const* name)
{
    check(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(),
        std::string("attribute ") + name + " out of int32 range: " + std::to_string(v));
    return static_cast<int32_t>(v);
}

template <typename T>
cudaError_t launchTyped(void const* const* in, void* out, gswa::GswaDims const& dims, void* workspace,
    size_t wsBytes, cudaStream_t stream)
{
    return gswa::launchGswa<T>(static_cast<T const*>(in[kQUERY]), static_cast<T const*>(in[kKEY_GLOBAL]),
        static_cast<T const*>(in[kVALUE_GLOBAL]), static_cast<T const*>(in[kKEY_LOCAL]),
        static_cast<T const*>(in[kVALUE_LOCAL]), static_cast<int64_t const*>(in[kQUERY_POS]),
        static_cast<int64_t const*>(in[kLOCAL_POS]), static_cast<T const*>(in[kGATE_WEIGHT]),
        static_cast<T const*>(in[kGATE_BIAS]), static_cast<T*>(out), dims, workspace, wsBytes, stream);
}

//! gswaPrepareKernels for head dim D (kernel attributes: configure time, never in enqueue or under
//! stream capture). Throws PluginError naming the CUDA error.
void prepareKernels(int32_t headDim)
{
    cudaError_t const err = gswa::gswaPrepareKernels(headDim);
    check(err == cudaSuccess, "gswaPrepareKernels(D = " + std::to_string(headDim) + "): " + cudaGetErrorString(err));
}

} // namespace

void GswaAttributes::validate() const
{
    check(window >= 1, "window must be >= 1, got " + std::to_string(window));
    check(std::isfinite(scale) && scale > 0.0F, "scale must be finite and > 0, got " + std::to_string(scale));
    check(numHeads >= 1 && numKvHeads >= 1 && numHeads % numKvHeads == 0,
        "num_heads (" + std::to_string(numHeads) + ") must be a positive multiple of num_kv_heads ("
            + std::to_string(numKvHeads) + ")");
    check(globalRows >= 0, "global_rows must be >= 0, got " + std::to_string(globalRows));
}

// ---- plugin ----------------------------------------------------------------------------------------

GatedSlidingWindowAttentionPlugin::GatedSlidingWindowAttentionPlugin(GswaAttributes const& attrs, int64_t workspaceBytes)
    : mAttrs(attrs)
    , mWorkspaceBytes(workspaceBytes)
{
    mAttrs.validate();
}

GatedSlidingWindowAttentionPlugin::GatedSlidingWindowAttentionPlugin(GatedSlidingWindowAttentionPlugin const& other)
    : mAttrs(other.mAttrs)
    , mWorkspaceBytes(other.mWorkspaceBytes)
{
    // mFields / mFieldCollection point into the object that owns them: rebuilt on demand.
}

nvinfer1::IPluginCapability* GatedSlidingWindowAttentionPlugin::getCapabilityInterface(
    nvinfer1::PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        }
        throw PluginError("unknown capability type " + std::to_string(static_cast<int32_t>(type)));
    }
    catch (std::exception const& e)
    {
        reportError("getCapabilityInterface", e.what());
    }
    return nullptr;
}

nvinfer1::IPluginV3* GatedSlidingWindowAttentionPlugin::clone() noexcept
{
    try
    {
        return std::make_unique<GatedSlidingWindowAttentionPlugin>(*this).release();
    }
    catch (std::exception const& e)
    {
        reportError("clone", e.what(), nvinfer1::ErrorCode::kINTERNAL_ERROR);
    }
    return nullptr;
}

char const* GatedSlidingWindowAttentionPlugin::getPluginName() const noexcept
{
    return kGSWA_PLUGIN_NAME;
}

char const* GatedSlidingWindowAttentionPlugin::getPluginVersion() const noexcept
{
    return kGSWA_PLUGIN_VERSION;
}

char const* GatedSlidingWindowAttentionPlugin::getPluginNamespace() const noexcept
{
    return kGSWA_PLUGIN_NAMESPACE;
}

int32_t GatedSlidingWindowAttentionPlugin::getNbOutputs() const noexcept
{
    return 1;
}

int32_t GatedSlidingWindowAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        check(nbInputs == kNB_INPUTS && nbOutputs == 1, "expects 9 inputs and 1 output");
        check(isFloatType(inputTypes[kQUERY]), "query must be float32, float16 or bfloat16");
        outputTypes[0] = inputTypes[kQUERY]; // strongly typed: output type = query type
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError("getOutputDataTypes", e.what());
    }
    return -1;
}

int32_t GatedSlidingWindowAttentionPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        check(nbInputs == kNB_INPUTS && nbOutputs == 1, "expects 9 inputs and 1 output");
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            check(inputs[i].nbDims == kRANKS[i], std::string(kINPUT_NAMES[i]) + " must have rank "
                + std::to_string(kRANKS[i]) + ", got " + std::to_string(inputs[i].nbDims));
        }
        outputs[0] = inputs[kQUERY]; // output [B, R, Hq, S, D] = query's shape
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError("getOutputShapes", e.what());
    }
    return -1;
}

bool GatedSlidingWindowAttentionPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        check(nbInputs == kNB_INPUTS && nbOutputs == 1 && pos >= 0 && pos < kNB_INPUTS + 1,
            "expects 9 inputs, 1 output and pos in [0, 10)");
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == kQUERY_POS || pos == kLOCAL_POS)
        {
            return desc.type == DataType::kINT64;
        }
        if (pos == kQUERY)
        {
            return isFloatType(desc.type);
        }
        return desc.type == inOut[kQUERY].desc.type; // every float input and the output share T
    }
    catch (std::exception const& e)
    {
        reportError("supportsFormatCombination", e.what());
    }
    return false;
}

gswa::GswaDims GatedSlidingWindowAttentionPlugin::dimsFrom(Dims const* d, int32_t nbInputs) const
{
    check(nbInputs == kNB_INPUTS, "expects 9 inputs, got " + std::to_string(nbInputs));
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        check(d[i].nbDims == kRANKS[i], std::string(kINPUT_NAMES[i]) + " must have rank " + std::to_string(kRANKS[i]));
    }
    gswa::GswaDims g{}; // by member name: the field order of GswaDims is the kernels' business
    g.batch = g.rows = g.heads = g.kvHeads = g.queries = g.headDim = g.cacheLen = g.localSlots = -1;
    g.globalRows = mAttrs.globalRows;
    g.window = mAttrs.window;
    g.scale = mAttrs.scale;
    int32_t localRows = -1; // R - G
    unify(g.batch, d[kQUERY].d[0], "B");
    unify(g.rows, d[kQUERY].d[1], "R");
    unify(g.heads, d[kQUERY].d[2], "Hq");
    unify(g.queries, d[kQUERY].d[3], "S");
    unify(g.headDim, d[kQUERY].d[4], "D");
    for (int32_t i : {kKEY_GLOBAL, kVALUE_GLOBAL}) // [B, Hkv, Tc, D]
    {
        unify(g.batch, d[i].d[0], "B");
        unify(g.kvHeads, d[i].d[1], "Hkv");
        unify(g.cacheLen, d[i].d[2], "Tc (key/value_global dim 2)");
        unify(g.headDim, d[i].d[3], "D");
    }
    for (int32_t i : {kKEY_LOCAL, kVALUE_LOCAL}) // [B, R-G, Hkv, W, D]
    {
        unify(g.batch, d[i].d[0], "B");
        unify(localRows, d[i].d[1], "R-G (key_local/value_local dim 1)");
        unify(g.kvHeads, d[i].d[2], "Hkv");
        unify(g.localSlots, d[i].d[3], "W (key/value_local dim 3)");
        unify(g.headDim, d[i].d[4], "D");
    }
    unify(g.batch, d[kQUERY_POS].d[0], "B");
    unify(g.queries, d[kQUERY_POS].d[1], "S");
    unify(g.batch, d[kLOCAL_POS].d[0], "B");
    unify(g.localSlots, d[kLOCAL_POS].d[1], "W");
    unify(g.heads, d[kGATE_WEIGHT].d[0], "Hq");
    unify(g.headDim, d[kGATE_WEIGHT].d[1], "D");
    unify(g.heads, d[kGATE_BIAS].d[0], "Hq");
    check(g.rows < 0 || g.globalRows <= g.rows,
        "global_rows (" + std::to_string(g.globalRows) + ") exceeds the query's " + std::to_string(g.rows) + " rows");
    check(g.rows < 0 || localRows < 0 || localRows == g.rows - g.globalRows,
        "key_local/value_local hold " + std::to_string(localRows) + " rows, expected R - global_rows = "
            + std::to_string(g.rows) + " - " + std::to_string(g.globalRows));
    check(g.heads < 0 || g.heads == mAttrs.numHeads,
        "query has " + std::to_string(g.heads) + " heads but num_heads = " + std::to_string(mAttrs.numHeads));
    check(g.kvHeads < 0 || g.kvHeads == mAttrs.numKvHeads,
        "key_global has " + std::to_string(g.kvHeads) + " heads but num_kv_heads = " + std::to_string(mAttrs.numKvHeads));
    check(g.headDim < 0 || (g.headDim >= 1 && g.headDim <= 256),
        "head dim D must be in [1, 256], got " + std::to_string(g.headDim));
    return g;
}

size_t GatedSlidingWindowAttentionPlugin::workspaceFor(DynamicPluginTensorDesc const* inputs, int32_t nbInputs) const
{
    check(inputs != nullptr && nbInputs == kNB_INPUTS, "expects 9 inputs, got " + std::to_string(nbInputs));
    Dims maxDims[kNB_INPUTS];
    for (int32_t i = 0; i < kNB_INPUTS; ++i)
    {
        maxDims[i] = inputs[i].max;
    }
    // Decode partials for the largest shapes of the profile (S clamped to the decode limit): a bound
    // for every runtime shape of the profile, since the requirement grows with each size.
    gswa::GswaDims const dims = dimsFrom(maxDims, nbInputs);
    check(dims.batch >= 0 && dims.rows >= 0 && dims.heads >= 0 && dims.kvHeads >= 0 && dims.queries >= 0
            && dims.headDim >= 0 && dims.cacheLen >= 0 && dims.localSlots >= 0,
        "the profile's max shapes must all be known to size the workspace");
    if (char const* msg = gswa::gswaCheckDims(dims))
    {
        throw PluginError(std::string("profile max shapes: ") + msg);
    }
    size_t const bytes = gswa::gswaDecodeWorkspaceBytes(dims);
    check(bytes > 0 || static_cast<int64_t>(dims.batch) * dims.rows * dims.heads * dims.queries == 0,
        "workspace computation returned 0 bytes for non-empty max shapes");
    check(bytes <= static_cast<size_t>(std::numeric_limits<int64_t>::max()), "workspace size overflows int64");
    return bytes;
}

int32_t GatedSlidingWindowAttentionPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        check(nbOutputs == 1, "expects 1 output");
        check(in != nullptr && nbInputs == kNB_INPUTS, "expects 9 inputs, got " + std::to_string(nbInputs));
        Dims desc[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            desc[i] = in[i].desc.dims;
        }
        gswa::GswaDims const g = dimsFrom(desc, nbInputs);
        // The size getWorkspaceSize reports for these descs, i.e. what TensorRT gives enqueue; a failure
        // here fails the build instead of running without a workspace.
        mWorkspaceBytes = static_cast<int64_t>(workspaceFor(in, nbInputs));
        if (g.headDim > 0)
        {
            prepareKernels(g.headDim); // the builder times tactics with these kernels
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError("configurePlugin", e.what());
    }
    return -1;
}

size_t GatedSlidingWindowAttentionPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        return workspaceFor(inputs, nbInputs);
    }
    catch (std::exception const& e)
    {
        reportError("getWorkspaceSize", e.what());
    }
    return 0;
}

int32_t GatedSlidingWindowAttentionPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        // Validation and kernel preparation; enqueue derives the sizes itself.
        check(nbOutputs == 1, "expects 1 output");
        check(in != nullptr && nbInputs == kNB_INPUTS, "expects 9 inputs, got " + std::to_string(nbInputs));
        Dims dims[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = in[i].dims;
        }
        gswa::GswaDims const g = dimsFrom(dims, nbInputs);
        if (char const* msg = gswa::gswaCheckDims(g))
        {
            throw PluginError(msg);
        }
        prepareKernels(g.headDim); // runtime's configure point: before enqueue, outside capture
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError("onShapeChange", e.what());
    }
    return -1;
}

int32_t GatedSlidingWindowAttentionPlugin::enqueue(PluginTensorDesc const* inputDesc,
    PluginTensorDesc const* /*outputDesc*/, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        check(inputDesc != nullptr && inputs != nullptr && outputs != nullptr, "null tensor descriptors or pointers");
        // Sizes from this call's descriptors (a few integer ops): no dependence on onShapeChange having
        // run on this object, or on which shapes it last saw.
        Dims dims[kNB_INPUTS];
        for (int32_t i = 0; i < kNB_INPUTS; ++i)
        {
            dims[i] = inputDesc[i].dims;
        }
        gswa::GswaDims const g = dimsFrom(dims, kNB_INPUTS);
        if (char const* msg = gswa::gswaCheckDims(g))
        {
            throw PluginError(msg);
        }
        // The decode path needs gswaDecodeWorkspaceBytes(g) bytes of workspace.
        size_t const needed = gswa::gswaDecodeWorkspaceBytes(g);
        size_t given = 0;
        if (mWorkspaceBytes >= 0)
        {
            // The plan's value (getWorkspaceSize of the profile, recorded by configurePlugin): less than
            // needed means the plan and the plugin disagree.
            given = static_cast<size_t>(mWorkspaceBytes);
            check(needed <= given && (needed == 0 || workspace != nullptr),
                "workspace of " + std::to_string(given) + " bytes" + (workspace == nullptr ? " (null)" : "")
                    + " is smaller than the " + std::to_string(needed) + " bytes these shapes need");
        }
        else
        {
            // Unset: the serialized copy never saw configurePlugin (nothing guarantees it does, e.g. a
            // timing-cache hit skips profiling). TensorRT allocated getWorkspaceSize for this layer =
            // gswaDecodeWorkspaceBytes of the profile's max shapes, which is >= `needed` for any shapes in
            // the profile (it grows with every dim), so a non-null workspace holds `needed` bytes; a null
            // one sends launchGswa down its no-workspace path.
            given = workspace != nullptr ? needed : 0;
        }
        cudaError_t err = cudaErrorInvalidValue;
        switch (inputDesc[kQUERY].type)
        {
        case DataType::kFLOAT: err = launchTyped<float>(inputs, outputs[0], g, workspace, given, stream); break;
        case DataType::kHALF: err = launchTyped<__half>(inputs, outputs[0], g, workspace, given, stream); break;
        case DataType::kBF16: err = launchTyped<__nv_bfloat16>(inputs, outputs[0], g, workspace, given, stream); break;
        default: throw PluginError("query type must be float32, float16 or bfloat16");
        }
        if (err != cudaSuccess)
        {
            reportError("enqueue", cudaGetErrorString(err), nvinfer1::ErrorCode::kFAILED_EXECUTION);
            return -1;
        }
        return 0;
    }
    catch (std::exception const& e)
    {
        reportError("enqueue", e.what(), nvinfer1::ErrorCode::kFAILED_EXECUTION);
    }
    return -1;
}

nvinfer1::IPluginV3* GatedSlidingWindowAttentionPlugin::attachToContext(
    nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* GatedSlidingWindowAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Same names and types as the ONNX attributes / getFieldNames.
        mFields.clear();
        mFields.emplace_back("window", &mAttrs.window, PluginFieldType::kINT32, 1);
        mFields.emplace_back("scale", &mAttrs.scale, PluginFieldType::kFLOAT32, 1);
        mFields.emplace_back("num_heads", &mAttrs.numHeads, PluginFieldType::kINT32, 1);
        mFields.emplace_back("num_kv_heads", &mAttrs.numKvHeads, PluginFieldType::kINT32, 1);
        mFields.emplace_back("global_rows", &mAttrs.globalRows, PluginFieldType::kINT32, 1);
        mFields.emplace_back(kWORKSPACE_FIELD, &mWorkspaceBytes, PluginFieldType::kINT64, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (std::exception const& e)
    {
        reportError("getFieldsToSerialize", e.what(), nvinfer1::ErrorCode::kINTERNAL_ERROR);
    }
    return nullptr;
}

// ---- creator ---------------------------------------------------------------------------------------

GatedSlidingWindowAttentionPluginCreator::GatedSlidingWindowAttentionPluginCreator()
{
    mFieldNames.emplace_back("window", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("scale", nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldNames.emplace_back("num_heads", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("num_kv_heads", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("global_rows", nullptr, PluginFieldType::kINT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* GatedSlidingWindowAttentionPluginCreator::getPluginName() const noexcept
{
    return kGSWA_PLUGIN_NAME;
}

char const* GatedSlidingWindowAttentionPluginCreator::getPluginVersion() const noexcept
{
    return kGSWA_PLUGIN_VERSION;
}

char const* GatedSlidingWindowAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return kGSWA_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* GatedSlidingWindowAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

nvinfer1::IPluginV3* GatedSlidingWindowAttentionPluginCreator::createPlugin(
    char const* /*name*/, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        check(fc != nullptr && (fc->nbFields == 0 || fc->fields != nullptr), "null PluginFieldCollection");
        std::optional<int64_t> window, numHeads, numKvHeads, globalRows, workspaceBytes;
        std::optional<double> scale;
        for (int32_t i = 0; i < fc->nbFields; ++i)
        {
            PluginField const& f = fc->fields[i];
            check(f.name != nullptr, "attribute without a name");
            std::string_view const name = f.name;
            if (name == "window")
            {
                window = readIntField(f);
            }
            else if (name == "scale")
            {
                scale = readFloatField(f);
            }
            else if (name == "num_heads")
            {
                numHeads = readIntField(f);
            }
            else if (name == "num_kv_heads")
            {
                numKvHeads = readIntField(f);
            }
            else if (name == "global_rows")
            {
                globalRows = readIntField(f);
            }
            else if (name == kWORKSPACE_FIELD)
            {
                workspaceBytes = readIntField(f);
            }
            else
            {
                std::string const msg
                    = "[plt_trt_plugins] GatedSlidingWindowAttention: ignoring unknown attribute " + std::string(name);
                logMessage(nvinfer1::ILogger::Severity::kWARNING, msg.c_str());
            }
        }
        check(window && scale && numHeads && numKvHeads && globalRows,
            "required attributes: window (INT), scale (FLOAT), num_heads (INT), num_kv_heads (INT), global_rows (INT)");
        GswaAttributes attrs;
        attrs.window = toInt32(*window, "window");
        attrs.scale = static_cast<float>(*scale);
        attrs.numHeads = toInt32(*numHeads, "num_heads");
        attrs.numKvHeads = toInt32(*numKvHeads, "num_kv_heads");
        attrs.globalRows = toInt32(*globalRows, "global_rows");
        // Deserializing (kRUNTIME): the plan's workspace size when it holds a valid one; missing or unset
        // (-1) falls back to the workspace TensorRT hands enqueue (see enqueue), never refuses the plan.
        // Building: set by configurePlugin.
        int64_t const ws
            = phase == nvinfer1::TensorRTPhase::kRUNTIME && workspaceBytes && *workspaceBytes >= 0 ? *workspaceBytes : -1;
        return std::make_unique<GatedSlidingWindowAttentionPlugin>(attrs, ws).release(); // validates
    }
    catch (std::exception const& e)
    {
        reportError("createPlugin", e.what());
    }
    return nullptr;
}

} // namespace plugin
} // namespace plt

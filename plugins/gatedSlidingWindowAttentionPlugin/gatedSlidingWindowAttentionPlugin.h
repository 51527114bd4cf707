/*
 * TensorRT IPluginV3 of the G-SWA op: plugin "GatedSlidingWindowAttention", version "2", namespace "plt".
 * Version 2 (issue 10): attribute global_rows G; rows 0..G-1 are global-only and key_local /
 * value_local hold the R-G other rows. Version 1 is not kept (exports of op version 1 are refused).
 * Contract: plt_deploy/ops/contract.py (rendered to gatedSlidingWindowAttention.yaml next to this file).
 *
 * State, in three parts:
 *   serialized attributes  window, scale, num_heads, num_kv_heads, global_rows (getFieldsToSerialize,
 *                          no byte blobs),
 *                          plus workspace_bytes: the workspace TensorRT allocates for this layer, fixed
 *                          at build time (getWorkspaceSize) and known at run time only from the plan;
 *                          missing or -1 (a copy serialized without configurePlugin) is not an error:
 *                          enqueue then relies on TensorRT's workspace (getWorkspaceSize of the profile)
 *   shape-derived values   none kept: enqueue derives the sizes from its inputDesc on every call
 *   device properties      none kept; kernel attributes (shared-memory opt-in for large D) are set by
 *                          gswaPrepareKernels in configurePlugin (build) and onShapeChange (runtime)
 */
#ifndef PLT_GATED_SLIDING_WINDOW_ATTENTION_PLUGIN_H
#define PLT_GATED_SLIDING_WINDOW_ATTENTION_PLUGIN_H

#include "NvInferRuntime.h"
#include "gatedSlidingWindowAttentionKernel.h"

#include <string>
#include <vector>

namespace plt
{
namespace plugin
{

constexpr char const* kGSWA_PLUGIN_NAME{"GatedSlidingWindowAttention"}; // = contract.OP_NAME
constexpr char const* kGSWA_PLUGIN_VERSION{"2"};                        // = contract.OP_VERSION
constexpr char const* kGSWA_PLUGIN_NAMESPACE{"plt"};                    // = contract.PLUGIN_NAMESPACE

//! Input indices, in contract order.
enum GswaInput : int32_t
{
    kQUERY = 0,        // [B, R, Hq, S, D]   T
    kKEY_GLOBAL = 1,   // [B, Hkv, Tc, D]    T
    kVALUE_GLOBAL = 2, // [B, Hkv, Tc, D]    T
    kKEY_LOCAL = 3,    // [B, R-G, Hkv, W, D] T  (row r >= G uses key_local[:, r - G])
    kVALUE_LOCAL = 4,  // [B, R-G, Hkv, W, D] T
    kQUERY_POS = 5,    // [B, S]             int64
    kLOCAL_POS = 6,    // [B, W]             int64
    kGATE_WEIGHT = 7,  // [Hq, D]            T
    kGATE_BIAS = 8,    // [Hq]               T
    kNB_INPUTS = 9,
};

//! The op's attributes (ONNX attribute names: window, scale, num_heads, num_kv_heads, global_rows).
struct GswaAttributes
{
    int32_t window{};
    float scale{};
    int32_t numHeads{};
    int32_t numKvHeads{};
    int32_t globalRows{}; // G

    //! Throws PluginError on values the contract rejects (contract.check_attributes).
    void validate() const;
};

//! Name of the serialized workspace size (not an ONNX attribute: the parser never passes it).
constexpr char const* kWORKSPACE_FIELD{"workspace_bytes"};

class GatedSlidingWindowAttentionPlugin : public nvinfer1::IPluginV3,
                                          public nvinfer1::IPluginV3OneCore,
                                          public nvinfer1::IPluginV3OneBuild,
                                          public nvinfer1::IPluginV3OneRuntime
{
public:
    //! workspaceBytes: the size TensorRT gives enqueue (-1 at build time, until configurePlugin).
    GatedSlidingWindowAttentionPlugin(GswaAttributes const& attrs, int64_t workspaceBytes);
    GatedSlidingWindowAttentionPlugin(GatedSlidingWindowAttentionPlugin const& other);
    GatedSlidingWindowAttentionPlugin& operator=(GatedSlidingWindowAttentionPlugin const&) = delete;
    ~GatedSlidingWindowAttentionPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Sizes of a call from the tensors' dims (any of them may be -1 at build time); checks ranks
    //! and the dims shared between inputs, throws PluginError on a mismatch.
    gswa::GswaDims dimsFrom(nvinfer1::Dims const* inputDims, int32_t nbInputs) const;

    //! Workspace bytes for the profile's max shapes in `inputs` (throws if any is unknown).
    size_t workspaceFor(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs) const;

    GswaAttributes mAttrs;                      // serialized
    int64_t mWorkspaceBytes{-1};                // serialized (kWORKSPACE_FIELD), set by configurePlugin; -1 unset
    std::vector<nvinfer1::PluginField> mFields; // getFieldsToSerialize storage (points into mAttrs)
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

class GatedSlidingWindowAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    GatedSlidingWindowAttentionPluginCreator();
    ~GatedSlidingWindowAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace plt

#endif // PLT_GATED_SLIDING_WINDOW_ATTENTION_PLUGIN_H

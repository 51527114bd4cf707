// CPU checks of libplt_trt_plugins.so through its exported entry points, driven by
// tests/test_plugin_build.py. Compiled against real TensorRT headers (TENSORRT_INCLUDE_DIR); no
// libnvinfer is loaded, so no plugin registry exists and nothing touches a GPU: every call below
// returns before a kernel launch. Prints "ok <check>" / "FAIL <check>: why" lines and, for the
// Python side, "fields <name>:<type>..." and "version <v>"; exits 1 if any check failed.
//
// Usage: plugin_load_check /path/to/libplt_trt_plugins_dynamic.so /path/to/libplt_trt_plugins.so
//   the first (loadLibrary's library) is driven through getCreators / setLoggerFinder; the second
//   (registers on dlopen) must export neither and, with no TensorRT loaded, register nothing and say
//   so on stderr (the Python side checks that line).
#include "NvInferRuntime.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

int gFailures = 0;

void expect(bool cond, char const* name, std::string const& why = "")
{
    if (cond)
    {
        std::printf("ok %s\n", name);
    }
    else
    {
        std::printf("FAIL %s: %s\n", name, why.c_str());
        ++gFailures;
    }
}

// An application logger (ILogger is implemented by applications) collecting the plugin's errors.
class CollectingLogger : public ILogger
{
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
        {
            messages += msg;
            messages += "\n";
        }
    }
    std::string take()
    {
        std::string out;
        out.swap(messages);
        return out;
    }
    std::string messages;
};

class Finder : public ILoggerFinder
{
public:
    explicit Finder(ILogger* logger)
        : mLogger(logger)
    {
    }
    ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    ILogger* mLogger;
};

Dims dims(std::vector<int64_t> const& d)
{
    Dims out{};
    out.nbDims = static_cast<int32_t>(d.size());
    for (size_t i = 0; i < d.size(); ++i)
    {
        out.d[i] = d[i];
    }
    return out;
}

// Sizes of the test call: B=2, R=3 rows (G global-only), Hq=4, Hkv=2, S=1, D=16, Tc=32, W=4.
struct Shapes
{
    int64_t B{2}, R{3}, G{0}, Hq{4}, Hkv{2}, S{1}, D{16}, T{32}, W{4};

    std::vector<Dims> inputs() const
    {
        return {dims({B, R, Hq, S, D}), dims({B, Hkv, T, D}), dims({B, Hkv, T, D}), dims({B, R - G, Hkv, W, D}),
            dims({B, R - G, Hkv, W, D}), dims({B, S}), dims({B, W}), dims({Hq, D}), dims({Hq})};
    }
};

std::vector<DynamicPluginTensorDesc> dynamicDescs(Shapes const& s, bool unknownMaxCache = false)
{
    std::vector<DynamicPluginTensorDesc> out;
    std::vector<Dims> const shapes = s.inputs();
    for (size_t i = 0; i < shapes.size(); ++i)
    {
        DynamicPluginTensorDesc d{};
        d.desc.dims = shapes[i];
        d.desc.dims.d[0] = -1; // batch is dynamic at build time
        d.desc.type = (i == 5 || i == 6) ? DataType::kINT64 : DataType::kFLOAT;
        d.desc.format = TensorFormat::kLINEAR;
        d.min = shapes[i];
        d.min.d[0] = 1;
        d.opt = shapes[i];
        d.max = shapes[i];
        out.push_back(d);
    }
    if (unknownMaxCache)
    {
        out[1].max.d[2] = -1; // cache length (key_global and value_global dim 2) unknown
        out[2].max.d[2] = -1;
    }
    return out;
}

std::vector<PluginTensorDesc> runtimeDescs(Shapes const& s)
{
    std::vector<PluginTensorDesc> out;
    std::vector<Dims> const shapes = s.inputs();
    for (size_t i = 0; i < shapes.size(); ++i)
    {
        PluginTensorDesc d{};
        d.dims = shapes[i];
        d.type = (i == 5 || i == 6) ? DataType::kINT64 : DataType::kFLOAT;
        d.format = TensorFormat::kLINEAR;
        out.push_back(d);
    }
    return out;
}

struct Attrs
{
    int32_t window{4};
    float scale{0.25F};
    int32_t numHeads{4};
    int32_t numKvHeads{2};
    int32_t globalRows{1};
    int64_t workspace{0};
};

PluginFieldCollection const* fields(Attrs& a, std::vector<PluginField>& storage, bool v2, bool withWorkspace)
{
    static PluginFieldCollection fc;
    storage.clear();
    storage.emplace_back("window", &a.window, PluginFieldType::kINT32, 1);
    storage.emplace_back("scale", &a.scale, PluginFieldType::kFLOAT32, 1);
    storage.emplace_back("num_heads", &a.numHeads, PluginFieldType::kINT32, 1);
    storage.emplace_back("num_kv_heads", &a.numKvHeads, PluginFieldType::kINT32, 1);
    if (v2)
    {
        storage.emplace_back("global_rows", &a.globalRows, PluginFieldType::kINT32, 1);
    }
    if (withWorkspace)
    {
        storage.emplace_back("workspace_bytes", &a.workspace, PluginFieldType::kINT64, 1);
    }
    fc.nbFields = static_cast<int32_t>(storage.size());
    fc.fields = storage.data();
    return &fc;
}

// Null tensors for enqueue calls that must not reach a GPU.
PluginTensorDesc& outDesc0()
{
    static PluginTensorDesc d{};
    return d;
}
void const* const* inPtrs0()
{
    static void const* p[9] = {};
    return p;
}
void* const* outPtrs0()
{
    static void* p[1] = {nullptr};
    return p;
}

char const* typeName(PluginFieldType t)
{
    switch (t)
    {
    case PluginFieldType::kINT32: return "INT32";
    case PluginFieldType::kFLOAT32: return "FLOAT32";
    case PluginFieldType::kINT64: return "INT64";
    default: return "OTHER";
    }
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        std::fprintf(stderr, "usage: %s libplt_trt_plugins_dynamic.so libplt_trt_plugins.so\n", argv[0]);
        return 2;
    }
    void* onLoad = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
    expect(onLoad != nullptr, "dlopen_register_on_load_without_libnvinfer", onLoad ? "" : dlerror());
    if (onLoad != nullptr)
    {
        expect(dlsym(onLoad, "getCreators") == nullptr && dlsym(onLoad, "setLoggerFinder") == nullptr,
            "register_on_load_exports_no_entry_points");
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    expect(lib != nullptr, "dlopen_without_libnvinfer", lib ? "" : dlerror());
    if (lib == nullptr)
    {
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    expect(getCreators != nullptr && setLoggerFinder != nullptr, "entry_points");
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return 1;
    }
    CollectingLogger logger;
    Finder finder(&logger);
    setLoggerFinder(&finder);

    // getCreators always hands out the creator (nothing of this library registers at dlopen).
    int32_t n = -1;
    IPluginCreatorInterface* const* list = getCreators(n);
    expect(n == 1 && list != nullptr && list[0] != nullptr, "get_creators_hands_out_one", "n=" + std::to_string(n));
    if (n != 1)
    {
        return 1;
    }
    InterfaceInfo const info = list[0]->getInterfaceInfo();
    expect(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0, "creator_is_v3one", info.kind);
    auto* creator = static_cast<IPluginCreatorV3One*>(list[0]);
    std::printf("creator %s %s %s\n", creator->getPluginName(), creator->getPluginVersion(),
        creator->getPluginNamespace());
    int32_t again = -1;
    expect(getCreators(again) == list && again == 1, "get_creators_same_object");

    PluginFieldCollection const* names = creator->getFieldNames();
    bool v2 = false;
    std::printf("fields");
    for (int32_t i = 0; i < names->nbFields; ++i)
    {
        std::printf(" %s:%s", names->fields[i].name, typeName(names->fields[i].type));
        v2 = v2 || std::strcmp(names->fields[i].name, "global_rows") == 0;
    }
    std::printf("\n");

    Shapes s;
    s.G = v2 ? 1 : 0;
    Attrs a;
    std::vector<PluginField> storage;

    // ---- build phase: configurePlugin sizes the workspace and fails when it cannot --------------
    IPluginV3* built = creator->createPlugin("gswa", fields(a, storage, v2, false), TensorRTPhase::kBUILD);
    expect(built != nullptr, "create_build_plugin", logger.take());
    if (built == nullptr)
    {
        return 1;
    }
    auto* build = static_cast<IPluginV3OneBuild*>(built->getCapabilityInterface(PluginCapabilityType::kBUILD));
    DynamicPluginTensorDesc out{};
    std::vector<DynamicPluginTensorDesc> in = dynamicDescs(s);
    out.desc.type = DataType::kFLOAT;
    out.desc.format = TensorFormat::kLINEAR;
    int32_t const rc = build->configurePlugin(in.data(), 9, &out, 1);
    expect(rc == 0, "configure_known_profile", logger.take());
    size_t const ws = build->getWorkspaceSize(in.data(), 9, &out, 1);
    expect(ws > 0, "workspace_positive");
    auto* core = static_cast<IPluginV3OneRuntime*>(built->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* ser = core->getFieldsToSerialize();
    int64_t serializedWs = -2;
    for (int32_t i = 0; ser != nullptr && i < ser->nbFields; ++i)
    {
        if (std::strcmp(ser->fields[i].name, "workspace_bytes") == 0 && ser->fields[i].type == PluginFieldType::kINT64)
        {
            serializedWs = *static_cast<int64_t const*>(ser->fields[i].data);
        }
    }
    expect(serializedWs == static_cast<int64_t>(ws), "serializes_workspace_given",
        std::to_string(serializedWs) + " vs " + std::to_string(ws));

    // D = 256 needs the prefill kernel's shared-memory opt-in: configurePlugin calls gswaPrepareKernels,
    // which on a machine without a GPU fails with a CUDA error (reported), on a GPU succeeds.
    Shapes large = s;
    large.D = 256;
    std::vector<DynamicPluginTensorDesc> largeDescs = dynamicDescs(large);
    int32_t const rcLarge = build->configurePlugin(largeDescs.data(), 9, &out, 1);
    std::string msgLarge = logger.take();
    msgLarge.erase(std::remove(msgLarge.begin(), msgLarge.end(), '\n'), msgLarge.end());
    std::printf("prepare_d256 rc=%d log=%s\n", rcLarge, msgLarge.c_str());

    std::vector<DynamicPluginTensorDesc> unknown = dynamicDescs(s, true);
    int32_t const rcUnknown = build->configurePlugin(unknown.data(), 9, &out, 1);
    std::string const msgUnknown = logger.take();
    expect(rcUnknown != 0 && msgUnknown.find("workspace") != std::string::npos, "configure_fails_without_workspace",
        "rc=" + std::to_string(rcUnknown) + " log=" + msgUnknown);

    // key_local with the wrong row count (v2: R-G rows; R rows must be rejected).
    if (v2)
    {
        Shapes wrong = s;
        wrong.G = 0;
        std::vector<DynamicPluginTensorDesc> bad = dynamicDescs(wrong);
        int32_t const rcBad = build->configurePlugin(bad.data(), 9, &out, 1);
        std::string const msgBad = logger.take();
        expect(rcBad != 0 && msgBad.find("key_local") != std::string::npos, "configure_rejects_local_rows_R",
            "rc=" + std::to_string(rcBad) + " log=" + msgBad);

        // global_rows is required (no default in the contract).
        std::vector<PluginField> noG;
        fields(a, noG, false, false);
        PluginFieldCollection fcNoG{static_cast<int32_t>(noG.size()), noG.data()};
        IPluginV3* missing = creator->createPlugin("gswa", &fcNoG, TensorRTPhase::kBUILD);
        std::string const msgMissing = logger.take();
        expect(missing == nullptr && msgMissing.find("global_rows") != std::string::npos, "global_rows_required",
            msgMissing);
        delete missing;
    }
    delete built;

    // ---- runtime phase ---------------------------------------------------------------------------
    // A plan without workspace_bytes, or with -1 (a copy serialized without configurePlugin, e.g. after a
    // timing-cache hit), is not refused: enqueue falls back to the workspace TensorRT hands it.
    std::vector<DynamicPluginTensorDesc> noDescs;
    for (int64_t const serialized : {int64_t{-2}, int64_t{-1}}) // -2: field missing; -1: serialized unset
    {
        a.workspace = serialized;
        IPluginV3* unset
            = creator->createPlugin("gswa", fields(a, storage, v2, serialized == -1), TensorRTPhase::kRUNTIME);
        std::string const msgUnset = logger.take();
        expect(unset != nullptr, serialized == -1 ? "runtime_accepts_unset_workspace" : "runtime_accepts_missing_workspace",
            msgUnset);
        if (unset == nullptr)
        {
            continue;
        }
        auto* unsetRun
            = static_cast<IPluginV3OneRuntime*>(unset->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        // Past the workspace check enqueue launches kernels: only where no CUDA driver exists (then the
        // launch fails with a CUDA error, not a workspace one) is that safe with these null tensors.
        void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
        if (driver != nullptr)
        {
            dlclose(driver);
            std::printf("skip enqueue_uses_given_workspace (a CUDA driver is present: would launch on null tensors)\n");
        }
        else
        {
            std::vector<PluginTensorDesc> descs = runtimeDescs(s);
            char scratch[16];
            for (void* ws : {static_cast<void*>(scratch), static_cast<void*>(nullptr)})
            {
                int32_t const rcUnset = unsetRun->enqueue(descs.data(), &outDesc0(), inPtrs0(), outPtrs0(), ws, nullptr);
                std::string const msg = logger.take();
                expect(rcUnset != 0 && msg.find("enqueue:") != std::string::npos
                        && msg.find("workspace") == std::string::npos,
                    ws != nullptr ? "enqueue_unset_trusts_given_workspace" : "enqueue_unset_null_workspace_no_split",
                    "rc=" + std::to_string(rcUnset) + " log=" + msg);
            }
        }
        delete unset;
    }

    a.workspace = static_cast<int64_t>(ws);
    IPluginV3* rt = creator->createPlugin("gswa", fields(a, storage, v2, true), TensorRTPhase::kRUNTIME);
    expect(rt != nullptr, "create_runtime_plugin", logger.take());
    if (rt == nullptr)
    {
        return 1;
    }
    auto* run = static_cast<IPluginV3OneRuntime*>(rt->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    void const* inPtrs[9] = {};
    void* outPtrs[1] = {nullptr};
    PluginTensorDesc outDesc{};

    // Sizes come from enqueue's inputDesc: an empty batch returns 0 without onShapeChange...
    Shapes empty = s;
    empty.B = 0;
    std::vector<PluginTensorDesc> emptyDescs = runtimeDescs(empty);
    int32_t const rcEmpty = run->enqueue(emptyDescs.data(), &outDesc, inPtrs, outPtrs, nullptr, nullptr);
    expect(rcEmpty == 0, "enqueue_dims_from_input_desc", logger.take());
    // ...and after onShapeChange saw a batch of 2 (a stale copy would launch B=2 on null pointers).
    std::vector<PluginTensorDesc> fullDescs = runtimeDescs(s);
    expect(run->onShapeChange(fullDescs.data(), 9, &outDesc, 1) == 0, "on_shape_change", logger.take());
    int32_t const rcEmpty2 = run->enqueue(emptyDescs.data(), &outDesc, inPtrs, outPtrs, nullptr, nullptr);
    expect(rcEmpty2 == 0, "enqueue_ignores_stale_shapes", logger.take());
    delete rt;

    // A workspace smaller than the shapes need is an error, not a silent fallback.
    a.workspace = 16;
    IPluginV3* small = creator->createPlugin("gswa", fields(a, storage, v2, true), TensorRTPhase::kRUNTIME);
    auto* smallRun = static_cast<IPluginV3OneRuntime*>(small->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    char buffer[16];
    int32_t const rcSmall = smallRun->enqueue(fullDescs.data(), &outDesc, inPtrs, outPtrs, buffer, nullptr);
    std::string const msgSmall = logger.take();
    expect(rcSmall != 0 && msgSmall.find("workspace of 16 bytes") != std::string::npos, "enqueue_checks_workspace_given",
        "rc=" + std::to_string(rcSmall) + " log=" + msgSmall);
    delete small;

    std::printf("%s\n", gFailures == 0 ? "all ok" : "failures");
    return gFailures == 0 ? 0 : 1;
}

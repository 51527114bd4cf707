#include "pluginRegistry.h"

#include "NvInferVersion.h"

#include <dlfcn.h>

#define PLT_STR_(x) #x
#define PLT_STR(x) PLT_STR_(x)

// Weak: unresolved (null) instead of a failed dlopen or a lazy-binding abort when the process does
// not export libnvinfer's symbols globally.
#pragma weak getPluginRegistry

namespace plt
{
namespace plugin
{
namespace
{

using GetPluginRegistryFn = nvinfer1::IPluginRegistry* (*) ();

//! getPluginRegistry of an already loaded library `soname` (never loads one), or nullptr.
nvinfer1::IPluginRegistry* registryOfLoaded(char const* soname) noexcept
{
    void* handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr)
    {
        return nullptr;
    }
    auto fn = reinterpret_cast<GetPluginRegistryFn>(dlsym(handle, "getPluginRegistry"));
    nvinfer1::IPluginRegistry* registry = fn != nullptr ? fn() : nullptr;
    dlclose(handle); // drops the reference RTLD_NOLOAD took; the library stays loaded
    return registry;
}

} // namespace

nvinfer1::IPluginRegistry* findPluginRegistry() noexcept
{
    if (&getPluginRegistry != nullptr)
    {
        if (nvinfer1::IPluginRegistry* registry = getPluginRegistry())
        {
            return registry;
        }
    }
    // The sonames of the TensorRT major version the library was compiled for (NvInferVersion.h).
    static char const* const kSONAMES[]
        = {"libnvinfer.so." PLT_STR(NV_TENSORRT_MAJOR), "libnvinfer_lean.so." PLT_STR(NV_TENSORRT_MAJOR)};
    for (char const* soname : kSONAMES)
    {
        if (nvinfer1::IPluginRegistry* registry = registryOfLoaded(soname))
        {
            return registry;
        }
    }
    return nullptr;
}

} // namespace plugin
} // namespace plt

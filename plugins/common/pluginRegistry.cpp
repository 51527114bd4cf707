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

// The sonames of the TensorRT major version the library was compiled for (NvInferVersion.h).
char const* const kSONAMES[]
    = {"libnvinfer.so." PLT_STR(NV_TENSORRT_MAJOR), "libnvinfer_lean.so." PLT_STR(NV_TENSORRT_MAJOR)};

//! `symbol()` of the first already loaded TensorRT runtime library that exports it (never loads
//! one), or nullptr. T is the pointer type the function returns.
template <typename T>
T* callInLoaded(char const* symbol) noexcept
{
    for (char const* soname : kSONAMES)
    {
        void* handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD);
        if (handle == nullptr)
        {
            continue;
        }
        auto fn = reinterpret_cast<T* (*) ()>(dlsym(handle, symbol));
        T* result = fn != nullptr ? fn() : nullptr;
        dlclose(handle); // drops the reference RTLD_NOLOAD took; the library stays loaded
        if (result != nullptr)
        {
            return result;
        }
    }
    return nullptr;
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
    return callInLoaded<nvinfer1::IPluginRegistry>("getPluginRegistry");
}

nvinfer1::ILogger* findGlobalLogger() noexcept
{
    // Only from TensorRT's own library: a global `getLogger` symbol could be any library's.
    return callInLoaded<nvinfer1::ILogger>("getLogger");
}

} // namespace plugin
} // namespace plt

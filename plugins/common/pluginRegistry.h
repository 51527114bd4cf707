/*
 * Where libplt_trt_plugins.so finds TensorRT's plugin registry.
 *
 * The library does not link libnvinfer (one policy, see plugins/README.md): it is built from the
 * TensorRT headers alone and finds the registry of the process that loads it, in this order:
 *   1. getPluginRegistry() resolved from the process's global symbols (trtexec, a C++ service
 *      linking libnvinfer, Python after libnvinfer was promoted to RTLD_GLOBAL). The symbol is
 *      declared weak, so a dlopen where it is not visible neither fails nor aborts on first call;
 *   2. getPluginRegistry of an already loaded libnvinfer.so.<major> (or the lean runtime), looked up
 *      with dlopen(RTLD_NOLOAD) + dlsym: Python extension modules load libnvinfer RTLD_LOCAL, so
 *      this is what makes a plain ctypes.CDLL / `polygraphy run --plugins` register the creator;
 *   3. none: libplt_trt_plugins.so registers nothing and says so (libplt_trt_plugins_dynamic.so never
 *      looks: loadLibrary registers what its getCreators() returns).
 */
#ifndef PLT_PLUGIN_REGISTRY_H
#define PLT_PLUGIN_REGISTRY_H

#include "NvInferRuntime.h"

namespace plt
{
namespace plugin
{

//! The process's plugin registry, or nullptr when no TensorRT runtime is loaded.
nvinfer1::IPluginRegistry* findPluginRegistry() noexcept;

//! TensorRT's global logger (libnvinfer's getLogger(), NvInferRuntime.h) of the TensorRT runtime
//! loaded in the process, or nullptr when none is loaded.
nvinfer1::ILogger* findGlobalLogger() noexcept;

} // namespace plugin
} // namespace plt

#endif // PLT_PLUGIN_REGISTRY_H

/*
 * Entry points of libplt_trt_plugins.so: how TensorRT finds the creators (see plugins/README.md).
 *
 * One creator object per plugin, registered under its own namespace ("plt") by exactly one of two
 * mechanisms, whichever the load path uses:
 *   - dlopen (ctypes.CDLL, `polygraphy run --plugins`, trtexec --staticPlugins, a service's own
 *     dlopen): a static initialiser registers the creator with
 *     registerCreator(creator, kGSWA_PLUGIN_NAMESPACE) in the registry of the loading process
 *     (common/pluginRegistry.h). REGISTER_TENSORRT_PLUGIN is not used: it registers under "".
 *   - IPluginRegistry::loadLibrary, trtexec --dynamicPlugins, plans with serialized plugin
 *     libraries: TensorRT calls getCreators() and registers what it returns. A creator the static
 *     initialiser already registered is not returned again (loadLibrary fails when any creator it
 *     is handed is already registered), so each creator is registered once on every path.
 * -DPLT_STATIC_PLUGIN_REGISTRATION=OFF compiles the static initialiser out (getCreators only).
 */
#include "NvInferRuntime.h"

#include "common/pluginLogging.h"
#include "common/pluginRegistry.h"
#include "gatedSlidingWindowAttentionPlugin/gatedSlidingWindowAttentionPlugin.h"

#include <atomic>

// TENSORRTAPI only exports when building TensorRT itself; the library is built with hidden
// visibility, so the entry points are exported explicitly.
#define PLT_PLUGIN_EXPORT __attribute__((visibility("default")))

namespace
{

using plt::plugin::GatedSlidingWindowAttentionPluginCreator;

//! The library's one G-SWA creator (both mechanisms hand out this object).
GatedSlidingWindowAttentionPluginCreator& gswaCreator()
{
    static GatedSlidingWindowAttentionPluginCreator sCreator;
    return sCreator;
}

//! True once the static initialiser registered the creator; getCreators then returns nothing.
std::atomic<bool> gRegisteredOnLoad{false};

#if PLT_STATIC_PLUGIN_REGISTRATION
struct RegisterOnLoad
{
    RegisterOnLoad() noexcept
    {
        if (nvinfer1::IPluginRegistry* registry = plt::plugin::findPluginRegistry())
        {
            gRegisteredOnLoad = registry->registerCreator(gswaCreator(), gswaCreator().getPluginNamespace());
        }
    }
};
RegisterOnLoad const gRegisterOnLoad;
#endif

} // namespace

extern "C" PLT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&gswaCreator()};
    nbCreators = gRegisteredOnLoad ? 0 : static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

extern "C" PLT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    plt::plugin::setPluginLoggerFinder(finder);
}

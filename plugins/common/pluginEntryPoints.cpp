/*
 * Entry points of libplt_trt_plugins.so.
 *
 * Two ways TensorRT finds the creators (see plugins/README.md):
 *   - static registration (REGISTER_TENSORRT_PLUGIN): a plain dlopen registers them, as done by
 *     Polygraphy --plugins, trtexec --staticPlugins and ctypes.CDLL in Python;
 *   - getCreators / setLoggerFinder: called by IPluginRegistry::loadLibrary and trtexec --dynamicPlugins.
 * Static registration can be compiled out with -DPLT_STATIC_PLUGIN_REGISTRATION=OFF for services
 * that only use loadLibrary.
 */
#include "NvInferRuntime.h"

#include "common/pluginLogging.h"
#include "gatedSlidingWindowAttentionPlugin/gatedSlidingWindowAttentionPlugin.h"

// TENSORRTAPI only exports when building TensorRT itself; the library is built with hidden
// visibility, so the entry points are exported explicitly.
#define PLT_PLUGIN_EXPORT __attribute__((visibility("default")))

using plt::plugin::GatedSlidingWindowAttentionPluginCreator;

#if PLT_STATIC_PLUGIN_REGISTRATION
REGISTER_TENSORRT_PLUGIN(GatedSlidingWindowAttentionPluginCreator);
#endif

extern "C" PLT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static GatedSlidingWindowAttentionPluginCreator sGswaCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sGswaCreator};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

extern "C" PLT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    plt::plugin::setPluginLoggerFinder(finder);
}

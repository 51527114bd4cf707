/*
 * Entry points of libplt_trt_plugins_dynamic.so, the library for IPluginRegistry::loadLibrary
 * (`trtexec --dynamicPlugins`, plans with serialized plugin libraries): TensorRT calls
 * setLoggerFinder, then getCreators, and registers every creator returned, each under the namespace
 * the creator reports ("plt"). Nothing is registered at dlopen (no static initialiser here), so the
 * list is never empty and nothing is registered twice or under loadLibrary's locks.
 * See common/pluginCreators.h for the other library.
 */
#include "NvInferRuntime.h"

#include "common/pluginCreators.h"
#include "common/pluginLogging.h"

// TENSORRTAPI only exports when building TensorRT itself; the library is built with hidden
// visibility, so the entry points are exported explicitly.
#define PLT_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" PLT_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    return plt::plugin::pluginCreators(nbCreators);
}

extern "C" PLT_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    plt::plugin::setPluginLoggerFinder(finder);
}

/*
 * The creators of libplt_trt_plugins: one object per plugin, shared by both entry files.
 *
 * The same sources build two libraries, one per way TensorRT documents for finding plugins
 * (plugins/README.md lists every loading path with its command):
 *   libplt_trt_plugins.so          registers its creators when it is dlopened (registerOnLoad.cpp):
 *                                  for loaders that only dlopen (ctypes, `polygraphy --plugins`,
 *                                  `trtexec --staticPlugins`, Triton's TensorRT backend `plugins=`);
 *                                  exports no entry point, so IPluginRegistry::loadLibrary refuses it.
 *   libplt_trt_plugins_dynamic.so  registers nothing itself; exports getCreators and setLoggerFinder
 *                                  (loadLibraryEntryPoints.cpp): for IPluginRegistry::loadLibrary,
 *                                  `trtexec --dynamicPlugins` and plans that embed the library
 *                                  (`--setPluginsToSerialize`), which call them.
 * Static initialisers run inside dlopen, i.e. inside loadLibrary when TensorRT opens a library, and
 * TensorRT does not document which locks loadLibrary holds then; so the library loadLibrary opens
 * must not call registerCreator from a static initialiser. This is TensorRT's own split: its
 * open-source plugin/ builds libnvinfer_plugin (registered by the application) and
 * libnvinfer_vc_plugin (getCreators + setLoggerFinder only, for loadLibrary and serialized plans).
 */
#ifndef PLT_PLUGIN_CREATORS_H
#define PLT_PLUGIN_CREATORS_H

#include "NvInferRuntime.h"

#include <cstdint>

namespace plt
{
namespace plugin
{

//! Every creator of the library (the same objects on every call); `count` receives their number.
nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& count) noexcept;

} // namespace plugin
} // namespace plt

#endif // PLT_PLUGIN_CREATORS_H

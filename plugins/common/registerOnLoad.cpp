/*
 * libplt_trt_plugins.so: registers every creator when the library is dlopened, for loaders that do
 * nothing but dlopen it (ctypes.CDLL, `polygraphy run --plugins`, `trtexec --staticPlugins`, Triton's
 * TensorRT backend `--backend-config=tensorrt,plugins=`). See common/pluginCreators.h.
 *
 * - Each creator is registered with registerCreator(creator, creator.getPluginNamespace()) ("plt"),
 *   not REGISTER_TENSORRT_PLUGIN, which registers under "".
 * - The registry is the one of the TensorRT already loaded in the process (common/pluginRegistry.h).
 *   None loaded yet (e.g. LD_PRELOAD before TensorRT): nothing can be registered; a warning says so.
 * - Already registered (the process loaded libplt_trt_plugins_dynamic.so first): registerCreator
 *   refuses the second copy; a warning says so, the first one stays.
 * - Logging: the library's logger finder is set to TensorRT's global logger (libnvinfer's
 *   getLogger(), looked up when a message is logged), the same ILoggerFinder route loadLibrary's
 *   setLoggerFinder takes, so plugin messages reach TensorRT's logger on this path too.
 * - Linked with -z nodelete: the registry keeps pointers to the creators, so the library must stay
 *   mapped after a loader's dlclose (trtexec closes its --staticPlugins handles at exit).
 */
#include "NvInferRuntime.h"

#include "common/pluginCreators.h"
#include "common/pluginLogging.h"
#include "common/pluginRegistry.h"

#include <string>

namespace
{

//! Finds TensorRT's global logger whenever a message is logged (it may be set after the dlopen).
class GlobalLoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    nvinfer1::ILogger* findLogger() override
    {
        return plt::plugin::findGlobalLogger();
    }
};

struct RegisterOnLoad
{
    RegisterOnLoad() noexcept
    {
        using plt::plugin::logMessage;
        static GlobalLoggerFinder sFinder;
        plt::plugin::setPluginLoggerFinder(&sFinder);
        nvinfer1::IPluginRegistry* registry = plt::plugin::findPluginRegistry();
        if (registry == nullptr)
        {
            logMessage(nvinfer1::ILogger::Severity::kWARNING,
                "[plt_trt_plugins] no TensorRT runtime is loaded in this process: nothing registered (load "
                "libplt_trt_plugins.so after TensorRT, or libplt_trt_plugins_dynamic.so with loadLibrary)");
            return;
        }
        int32_t count = 0;
        nvinfer1::IPluginCreatorInterface* const* creators = plt::plugin::pluginCreators(count);
        for (int32_t i = 0; i < count; ++i)
        {
            auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
            if (!registry->registerCreator(*creator, creator->getPluginNamespace()))
            {
                std::string const msg = std::string("[plt_trt_plugins] ") + creator->getPluginNamespace() + "::"
                    + creator->getPluginName() + " version " + creator->getPluginVersion()
                    + " is already registered in this process (by libplt_trt_plugins_dynamic.so?); kept that one";
                logMessage(nvinfer1::ILogger::Severity::kWARNING, msg.c_str());
            }
        }
    }
};

RegisterOnLoad const gRegisterOnLoad;

} // namespace

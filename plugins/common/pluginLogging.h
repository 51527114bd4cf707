/*
 * Error and message reporting for the plugins in libplt_trt_plugins.so.
 *
 * Messages go to the logger of the library's ILoggerFinder: on loadLibrary paths (trtexec
 * --dynamicPlugins, serialized plugin libraries) the one TensorRT passes to setLoggerFinder (the
 * logger of the engine or context calling the plugin); on dlopen paths the one registerOnLoad.cpp
 * sets, which returns TensorRT's global logger. Errors also go to the plugin registry's error
 * recorder when the application set one. Only when no TensorRT runtime is loaded (no logger at
 * all) do warnings and errors go to stderr.
 */
#ifndef PLT_PLUGIN_LOGGING_H
#define PLT_PLUGIN_LOGGING_H

#include "NvInferRuntime.h"

#include <stdexcept>
#include <string>

namespace plt
{
namespace plugin
{

//! Stores the logger finder: TensorRT's (setLoggerFinder entry point) or registerOnLoad.cpp's; the
//! first non-null one wins, as in TensorRT's own plugin libraries.
void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! Logs a message at the given severity (messages start with "[plt_trt_plugins]").
void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept;

//! Reports an error (logger at kERROR + registry error recorder). `where` names the API method.
void reportError(char const* where, char const* msg, nvinfer1::ErrorCode code = nvinfer1::ErrorCode::kINVALID_ARGUMENT) noexcept;

//! Thrown by input validation inside API methods; caught at the method boundary and reported.
class PluginError : public std::invalid_argument
{
public:
    using std::invalid_argument::invalid_argument;
};

//! Throws PluginError(msg) unless cond holds.
inline void check(bool cond, std::string const& msg)
{
    if (!cond)
    {
        throw PluginError(msg);
    }
}

} // namespace plugin
} // namespace plt

#endif // PLT_PLUGIN_LOGGING_H

/*
 * Error and message reporting for the plugins in libplt_trt_plugins.so.
 *
 * Messages go to the logger TensorRT hands over through setLoggerFinder (loadLibrary /
 * trtexec --dynamicPlugins) and errors also to the plugin registry's error recorder when the
 * application set one. Without either (a plain dlopen before any logger exists) they go to stderr.
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

//! Stores the logger finder passed to the library's setLoggerFinder entry point (first one wins).
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

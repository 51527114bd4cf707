#include "pluginLogging.h"

#include "pluginRegistry.h"

#include <cstdio>
#include <mutex>
#include <string>

namespace plt
{
namespace plugin
{
namespace
{

std::mutex gMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

nvinfer1::ILogger* findLogger() noexcept
{
    std::lock_guard<std::mutex> lock(gMutex);
    return gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
}

} // namespace

void setPluginLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept
{
    std::lock_guard<std::mutex> lock(gMutex);
    if (gLoggerFinder == nullptr && finder != nullptr)
    {
        gLoggerFinder = finder;
    }
}

void logMessage(nvinfer1::ILogger::Severity severity, char const* msg) noexcept
{
    if (nvinfer1::ILogger* logger = findLogger())
    {
        logger->log(severity, msg);
    }
    else if (severity <= nvinfer1::ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "%s\n", msg); // messages carry the "[plt_trt_plugins]" prefix already
    }
}

void reportError(char const* where, char const* msg, nvinfer1::ErrorCode code) noexcept
{
    try
    {
        std::string const text = std::string("[plt_trt_plugins] ") + where + ": " + msg;
        logMessage(nvinfer1::ILogger::Severity::kERROR, text.c_str());
        if (nvinfer1::IPluginRegistry* registry = findPluginRegistry())
        {
            if (nvinfer1::IErrorRecorder* recorder = registry->getErrorRecorder())
            {
                recorder->reportError(code, text.c_str());
            }
        }
    }
    catch (...)
    {
        std::fprintf(stderr, "[plt_trt_plugins] %s: %s\n", where, msg);
    }
}

} // namespace plugin
} // namespace plt

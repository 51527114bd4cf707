#include "pluginCreators.h"

#include "gatedSlidingWindowAttentionPlugin/gatedSlidingWindowAttentionPlugin.h"

namespace plt
{
namespace plugin
{

nvinfer1::IPluginCreatorInterface* const* pluginCreators(int32_t& count) noexcept
{
    static GatedSlidingWindowAttentionPluginCreator sGswaCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sGswaCreator};
    count = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}

} // namespace plugin
} // namespace plt

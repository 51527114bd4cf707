// Self-test of the CPU execution model (cuda_cpu_model.h): CUDA semantics the G-SWA kernels do not
// exercise on their own. Build like the harness (g++ -include cuda_cpu_model.h ...); run
//   cuda_cpu_model_selftest <test>
// Tests named ok_* print "ok" and exit 0; tests named fail_* must be stopped by the model
// (stderr "cuda_cpu_model: ...", abort). Driven by tests/test_kernels.py::test_cpu_model_semantics.
#include "cuda_cpu_model.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace
{

// ---- kernels ----------------------------------------------------------------------------------------

__global__ void shuffleArithmetic(int* out) // out[lane * 8 + k], one warp
{
    int const lane = threadIdx.x;
    int* o = out + lane * 8;
    o[0] = __shfl_up_sync(0xffffffffU, lane, 1, 8);     // lane - 1 within 8-lane segments, own at segment start
    o[1] = __shfl_down_sync(0xffffffffU, lane, 3, 16);  // lane + 3 within 16-lane segments, own past the end
    o[2] = __shfl_xor_sync(0xffffffffU, lane, 5);       // lane ^ 5
    o[3] = __shfl_sync(0xffffffffU, lane, -1);          // srcLane modulo 32: lane 31
    o[4] = __shfl_sync(0xffffffffU, lane, 9, 8);        // segment start + 9 % 8
    o[5] = static_cast<int>(__ballot_sync(0xffffffffU, lane % 3 == 0));
    o[6] = __shfl_xor_sync(0xffffffffU, lane, 8, 8);    // lane ^ 8 leaves an 8-lane segment: later ones give own value
    o[7] = lane < 16 ? __shfl_sync(0x0000ffffU, lane + 100, 15 - lane) : -1; // half-warp mask
}

__global__ void staticShared(int* sawNan) // one value per block
{
    __shared__ float cell[4];
    if (threadIdx.x == 0)
    {
        sawNan[blockIdx.x] = std::isnan(cell[0]) ? 1 : 0; // the previous block wrote 1: refilled per block
        cell[0] = 1.0F;
    }
    __syncthreads();
}

__global__ void dynamicShared(int* sawNan, int n) // n floats of dynamic shared memory
{
    PLT_DYNAMIC_SHARED(float, buf);
    if (threadIdx.x == 0)
    {
        int nan = 0;
        for (int i = 0; i < n; ++i)
        {
            nan += std::isnan(buf[i]) ? 1 : 0;
            buf[i] = 0.0F;
        }
        sawNan[blockIdx.x] = nan;
    }
}

__global__ void barrierAfterExit(int*)
{
    if (threadIdx.x == 5)
    {
        return;
    }
    __syncthreads();
}

__global__ void barrierVsShuffle(int*)
{
    if (threadIdx.x == 0)
    {
        __syncthreads();
    }
    else
    {
        __syncwarp();
    }
}

__global__ void maskWithoutCaller(int* out)
{
    out[threadIdx.x] = __shfl_sync(0xfffffffeU, 1, 0); // lane 0 is not in its own mask
}

__global__ void readOutsideMask(int* out)
{
    out[threadIdx.x] = __shfl_sync(0x0000ffffU, static_cast<int>(threadIdx.x), 20) * (threadIdx.x < 16);
}

__global__ void twoSites(int* out)
{
    int v = 0;
    if (threadIdx.x < 32 && (threadIdx.x & 1))
    {
        v = __shfl_xor_sync(0xffffffffU, 1, 1);
    }
    else
    {
        v = __shfl_xor_sync(0xffffffffU, 2, 1);
    }
    out[threadIdx.x] = v;
}

__global__ void writePastDynamicShared(int* offset)
{
    PLT_DYNAMIC_SHARED(unsigned char, buf);
    if (threadIdx.x == 0)
    {
        buf[*offset] = 1; // launch has 100 bytes
    }
}

// ---- tests ------------------------------------------------------------------------------------------

int expectOk(bool cond, char const* what)
{
    if (!cond)
    {
        std::printf("FAILED: %s\n", what);
        return 1;
    }
    std::printf("ok\n");
    return 0;
}

int okShuffleArithmetic()
{
    std::vector<int> out(32 * 8, -7);
    PLT_LAUNCH(shuffleArithmetic, 1, 32, 0, nullptr, out.data());
    unsigned ballot = 0;
    for (int l = 0; l < 32; l += 3)
    {
        ballot |= 1U << l;
    }
    for (int l = 0; l < 32; ++l)
    {
        int const* o = out.data() + l * 8;
        int const want[8] = {l % 8 == 0 ? l : l - 1, (l % 16) + 3 < 16 ? l + 3 : l, l ^ 5, 31, (l & ~7) + 1,
            static_cast<int>(ballot), l, l < 16 ? (15 - l) + 100 : -1};
        for (int k = 0; k < 8; ++k)
        {
            int w = want[k];
            if (k == 6)
            {
                w = (l ^ 8) < (l & ~7) + 8 ? (l ^ 8) : l; // earlier segment readable, later gives own
            }
            if (o[k] != w)
            {
                std::printf("FAILED: lane %d op %d got %d want %d\n", l, k, o[k], w);
                return 1;
            }
        }
    }
    return expectOk(cudaGetLastError() == cudaSuccess, "launch error");
}

int okSharedNanEveryBlock()
{
    std::vector<int> saw(3, -1);
    PLT_LAUNCH(staticShared, 3, 64, 0, nullptr, saw.data());
    std::vector<int> dyn(3, -1);
    PLT_LAUNCH(dynamicShared, 3, 32, 16 * sizeof(float), nullptr, dyn.data(), 16);
    return expectOk(saw == std::vector<int>(3, 1) && dyn == std::vector<int>(3, 16),
        "shared memory is not NaN at the start of every block");
}

int okLaunchLimits()
{
    std::vector<int> buf(2048);
    bool good = true;
    PLT_LAUNCH(staticShared, 1, 1025, 0, nullptr, buf.data());
    good = good && cudaGetLastError() == cudaErrorInvalidConfiguration;
    PLT_LAUNCH(staticShared, dim3(1, 65536), 32, 0, nullptr, buf.data());
    good = good && cudaGetLastError() == cudaErrorInvalidConfiguration;
    PLT_LAUNCH(dynamicShared, 1, 32, 48 * 1024 + 4, nullptr, buf.data(), 1);
    good = good && cudaGetLastError() == cudaErrorInvalidValue; // > 48 KiB without the attribute
    good = good
        && cudaFuncSetAttribute(dynamicShared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024 + 4)
            == cudaErrorInvalidValue; // above sm_75's opt-in limit
    cudaGetLastError();
    // (this file's static __shared__ arrays count against every kernel's limit: the model cannot tell
    // which kernel declares them, so it charges all of them to each)
    size_t const maxDynamic = 64 * 1024 - 256;
    good = good
        && cudaFuncSetAttribute(dynamicShared, cudaFuncAttributeMaxDynamicSharedMemorySize, int(maxDynamic))
            == cudaSuccess;
    PLT_LAUNCH(dynamicShared, 1, 32, maxDynamic, nullptr, buf.data(), 1);
    good = good && cudaGetLastError() == cudaSuccess;
    return expectOk(good, "launch limits");
}

int run(std::string const& name)
{
    std::vector<int> buf(1024);
    if (name == "ok_shuffle_arithmetic")
        return okShuffleArithmetic();
    if (name == "ok_shared_nan_every_block")
        return okSharedNanEveryBlock();
    if (name == "ok_launch_limits")
        return okLaunchLimits();
    if (name == "fail_barrier_after_exit")
        PLT_LAUNCH(barrierAfterExit, 1, 64, 0, nullptr, buf.data());
    else if (name == "fail_barrier_vs_shuffle")
        PLT_LAUNCH(barrierVsShuffle, 1, 64, 0, nullptr, buf.data());
    else if (name == "fail_mask_without_caller")
        PLT_LAUNCH(maskWithoutCaller, 1, 32, 0, nullptr, buf.data());
    else if (name == "fail_read_outside_mask")
        PLT_LAUNCH(readOutsideMask, 1, 32, 0, nullptr, buf.data());
    else if (name == "fail_two_call_sites")
        PLT_LAUNCH(twoSites, 1, 64, 0, nullptr, buf.data());
    else if (name == "fail_write_past_dynamic_shared")
    {
        buf[0] = 100; // into the canary bytes before the guard page
        PLT_LAUNCH(writePastDynamicShared, 1, 32, 100, nullptr, buf.data());
    }
    else if (name == "fail_touch_guard_page")
    {
        buf[0] = 200; // past the 16-byte rounded end: the PROT_NONE page
        PLT_LAUNCH(writePastDynamicShared, 1, 32, 100, nullptr, buf.data());
    }
    else
    {
        std::fprintf(stderr, "unknown test %s\n", name.c_str());
        return 2;
    }
    std::printf("the model did not stop %s\n", name.c_str());
    return 1;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s <test>\n", argv[0]);
        return 2;
    }
    return run(argv[1]);
}

/*
 * A small CPU execution model of CUDA: runs unchanged __global__ kernels on the host, compiled by
 * g++ as C++ (force-include this header: g++ -include cuda_cpu_model.h -x c++ kernels.cu).
 * Semantics and limits: plugins/tests/README.md. Implementation: cuda_cpu_model.cpp.
 *
 *   - every CUDA thread is a fiber (own stack, hand-rolled x86-64 context switch); blocks of a
 *     launch run one after another, launches are synchronous (streams are ignored);
 *   - __syncthreads() is a block barrier every live thread must reach at the same call site;
 *   - __shfl*_sync / __syncwarp / __ballot_sync are rendezvous of the lanes named in the mask, at
 *     one call site with one mask, with CUDA's lane arithmetic (width subsections);
 *   - anything else (a lane of the mask exited or waiting elsewhere, a thread exited while others
 *     wait at a barrier, no thread can move) is reported on stderr and aborts the process;
 *   - dynamic shared memory is allocated to exactly the launch's size (guard page behind, canary
 *     slack, exact heap block under AddressSanitizer) and filled with NaN bytes for every block;
 *   - launch limits: 1024 threads per block, grid limits, 48 KiB of dynamic shared memory unless
 *     cudaFuncSetAttribute(MaxDynamicSharedMemorySize) raised it, at most the opt-in cap
 *     (default 64 KiB = sm_75, the smallest of the GPUs the plugin targets);
 *   - threads (and blocks) are resumed in a selectable order, so a test can run a case in several
 *     orders and demand bitwise-equal outputs.
 *
 * The only non-CUDA spellings a kernel file needs: PLT_DYNAMIC_SHARED(type, name) for
 * `extern __shared__ type name[]` and PLT_LAUNCH(kernel, grid, block, smem, stream, args...) for
 * `kernel<<<grid, block, smem, stream>>>(args...)` (host compilers cannot parse either); the kernel
 * file defines both for nvcc when they are not defined yet.
 */
#ifndef PLT_CUDA_CPU_MODEL_H
#define PLT_CUDA_CPU_MODEL_H

#if defined(__CUDACC__)
#error "cuda_cpu_model.h replaces nvcc's device side; compile with a host C++ compiler"
#endif

#if defined(__HOST_DEFINES_H__)
#error "cuda_cpu_model.h must come before every CUDA header (compile with g++ -include cuda_cpu_model.h)"
#endif

#define PLT_CUDA_CPU_MODEL 1

// Defined before CUDA's crt/host_defines.h, which keeps them when they exist.
#define __global__
#define __device__
#define __host__
// Static shared arrays: one instance for the whole block (blocks run one at a time), NaN-filled
// before each block when GCC honours the section (not for static locals of templates: it puts
// those in COMDAT sections; the project's kernels use dynamic shared memory only).
#define __shared__ static __attribute__((section("cudacpu_shared"), aligned(16)))
#define __launch_bounds__(...)

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

namespace cudacpu
{

//! Order in which runnable threads (and the blocks of a launch) are resumed.
enum class ResumeOrder
{
    kForward,  // thread 0, 1, 2, ...
    kReverse,  // last thread first
    kShuffled, // a new pseudo-random permutation at every scheduling round (seeded)
};

struct Options
{
    ResumeOrder order = ResumeOrder::kForward;
    uint32_t seed = 1;
    size_t optInSmemLimit = 64 * 1024; // bytes; smallest opt-in limit of the target GPUs (sm_75)
    int fillPattern = 0;               // 0: all 0xFF bytes, 1: 0x7FF40000 words (both NaN as fp32 and fp64)
};

void setOptions(Options const& options);
Options const& options();

//! One record per successful launch since the last clearLaunchLog().
struct LaunchRecord
{
    char const* kernel; // text of the PLT_LAUNCH kernel argument
    dim3 grid;
    dim3 block;
    size_t smem;
};
int launchCount();
LaunchRecord const& launchRecord(int i);
void clearLaunchLog();

// ---- built-in variables: the running fiber's indices ----------------------------------------------
extern uint3 gThreadIdx;
extern uint3 gBlockIdx;
extern dim3 gBlockDim;
extern dim3 gGridDim;

// ---- device side ------------------------------------------------------------------------------------
enum class WarpOp
{
    kIdx,
    kUp,
    kDown,
    kXor,
    kSync,
    kBallot,
};

void syncthreads(int line, char const* file);
//! Rendezvous of the lanes in `mask`; returns the bits this lane receives.
uint64_t warpExchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, int line, char const* file);
void* dynamicShared();

template <typename T>
T warpValue(WarpOp op, unsigned mask, T var, int arg, int width, int line, char const* file)
{
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffle of a type CUDA cannot shuffle");
    uint64_t bits = 0;
    std::memcpy(&bits, &var, sizeof(T));
    uint64_t const got = warpExchange(op, mask, bits, arg, width, line, file);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

// ---- launches ---------------------------------------------------------------------------------------
//! Checks the configuration (sets the last error and returns false if CUDA would refuse it), then
//! runs every block: body(ctx) is each thread's whole kernel call.
bool runLaunch(void const* kernel, char const* name, dim3 grid, dim3 block, size_t smem, void (*body)(void*),
    void* ctx);

template <typename... P, typename... A>
void launch(void (*kernel)(P...), char const* name, dim3 grid, dim3 block, size_t smem, cudaStream_t, A&&... args)
{
    struct Ctx
    {
        void (*kernel)(P...);
        std::tuple<std::decay_t<P>...> params; // the launch's copy of the arguments
    } ctx{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(args)...)};
    runLaunch(reinterpret_cast<void const*>(kernel), name, grid, block, smem,
        [](void* raw) {
            Ctx const& c = *static_cast<Ctx const*>(raw);
            std::apply(c.kernel, c.params); // by-value parameters: each thread gets its own copy
        },
        &ctx);
}

} // namespace cudacpu

#define threadIdx (static_cast<uint3 const&>(::cudacpu::gThreadIdx))
#define blockIdx (static_cast<uint3 const&>(::cudacpu::gBlockIdx))
#define blockDim (static_cast<dim3 const&>(::cudacpu::gBlockDim))
#define gridDim (static_cast<dim3 const&>(::cudacpu::gGridDim))
constexpr int warpSize = 32;

#define PLT_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::cudacpu::dynamicShared())
#define PLT_LAUNCH(kernel, grid, block, smem, stream, ...)                                                        \
    ::cudacpu::launch(kernel, #kernel, grid, block, smem, stream, __VA_ARGS__)

// cuda_runtime.h declares this overload for nvcc only.
template <typename T>
cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value)
{
    return ::cudaFuncSetAttribute(reinterpret_cast<void const*>(entry), attr, value);
}

inline void __syncthreads(int line = __builtin_LINE(), char const* file = __builtin_FILE())
{
    ::cudacpu::syncthreads(line, file);
}

inline void __syncwarp(unsigned mask = 0xffffffffU, int line = __builtin_LINE(), char const* file = __builtin_FILE())
{
    ::cudacpu::warpExchange(::cudacpu::WarpOp::kSync, mask, 0, 0, 32, line, file);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, int line = __builtin_LINE(),
    char const* file = __builtin_FILE())
{
    return ::cudacpu::warpValue(::cudacpu::WarpOp::kIdx, mask, var, srcLane, width, line, file);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, int line = __builtin_LINE(),
    char const* file = __builtin_FILE())
{
    return ::cudacpu::warpValue(::cudacpu::WarpOp::kUp, mask, var, static_cast<int>(delta), width, line, file);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, int line = __builtin_LINE(),
    char const* file = __builtin_FILE())
{
    return ::cudacpu::warpValue(::cudacpu::WarpOp::kDown, mask, var, static_cast<int>(delta), width, line, file);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, int line = __builtin_LINE(),
    char const* file = __builtin_FILE())
{
    return ::cudacpu::warpValue(::cudacpu::WarpOp::kXor, mask, var, laneMask, width, line, file);
}

inline unsigned __ballot_sync(unsigned mask, int predicate, int line = __builtin_LINE(),
    char const* file = __builtin_FILE())
{
    return static_cast<unsigned>(
        ::cudacpu::warpExchange(::cudacpu::WarpOp::kBallot, mask, predicate != 0, 0, 32, line, file));
}

// CUDA's device min/max overloads (integers and floats of one common type).
template <typename A, typename B,
    typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
constexpr std::common_type_t<A, B> min(A a, B b)
{
    return b < a ? static_cast<std::common_type_t<A, B>>(b) : static_cast<std::common_type_t<A, B>>(a);
}

template <typename A, typename B,
    typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
constexpr std::common_type_t<A, B> max(A a, B b)
{
    return a < b ? static_cast<std::common_type_t<A, B>>(b) : static_cast<std::common_type_t<A, B>>(a);
}

#endif // PLT_CUDA_CPU_MODEL_H

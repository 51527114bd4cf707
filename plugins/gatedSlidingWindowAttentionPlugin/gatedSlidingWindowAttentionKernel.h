/*
 * CUDA launchers of the G-SWA op, version 2 (contract: plt_deploy/ops/contract.py,
 * gatedSlidingWindowAttention.yaml). Raw pointers and ints only: no TensorRT type crosses into the kernels.
 *
 * Layouts (contiguous, row-major):
 *   query, output             [B, R, Hq, S, D]   T   (rows 0..G-1 global-only)
 *   keyGlobal, valueGlobal    [B, Hkv, Tc, D]    T   (slot j holds position j)
 *   keyLocal, valueLocal      [B, R-G, Hkv, W, D] T  (row r >= G uses keyLocal[:, r - G])
 *   queryPos                  [B, S]             int64
 *   localPos                  [B, W]             int64 (-1 = empty slot)
 *   gateWeight [Hq, D], gateBias [Hq]            T
 * T = float, __half or __nv_bfloat16; all arithmetic in fp32.
 */
#ifndef PLT_GATED_SLIDING_WINDOW_ATTENTION_KERNEL_H
#define PLT_GATED_SLIDING_WINDOW_ATTENTION_KERNEL_H

#include <cstddef>
#include <cstdint>
#include <cuda_runtime_api.h>

namespace plt
{
namespace gswa
{

//! Sizes and attributes of one call (Tc = shared-cache slots, W = local slots).
struct GswaDims
{
    int32_t batch;      // B
    int32_t rows;       // R (loop rows, all of them)
    int32_t globalRows; // G, 0 <= G <= R: rows 0..G-1 attend to the shared keys only (g = 0)
    int32_t heads;      // Hq
    int32_t kvHeads;    // Hkv, Hq % Hkv == 0
    int32_t queries;    // S
    int32_t headDim;    // D, 1..256
    int32_t cacheLen;   // Tc
    int32_t localSlots; // W
    int32_t window;     // >= 1
    float scale;        // softmax scale
};

//! Workspace bytes of the decode path for these sizes, S clamped to the decode limit: computed
//! from a profile's max shapes it bounds what any runtime shape of that profile needs.
size_t gswaDecodeWorkspaceBytes(GswaDims const& dims);

//! Checks the sizes the kernels support; returns a message or nullptr when they are fine.
char const* gswaCheckDims(GswaDims const& dims);

//! Call once per head dim at configure time (not in enqueue, not under stream capture), before any
//! launch: raises the dynamic shared-memory limit of the kernels that need more than 48 KiB for this
//! D (only the prefill kernel at D > 253; decode never does). Returns the CUDA error if the device's
//! opt-in limit is too small. Idempotent and cheap; covers every dtype.
cudaError_t gswaPrepareKernels(int32_t headDim);

//! Runs the op: the split-K decode path (partials in `workspace`, then a combine kernel) when
//! S <= kDecodeMaxQueries and the workspace is large enough, else the tiled prefill kernel.
template <typename T>
cudaError_t launchGswa(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, void* workspace, size_t workspaceBytes, cudaStream_t stream);

//! The two paths, callable directly (tests, benchmarks). numSplits <= 0 picks decodeNumSplits(Tc).
template <typename T>
cudaError_t launchGswaDecode(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, int32_t numSplits, void* workspace, size_t workspaceBytes, cudaStream_t stream);

template <typename T>
cudaError_t launchGswaPrefill(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, cudaStream_t stream);

} // namespace gswa
} // namespace plt

#endif // PLT_GATED_SLIDING_WINDOW_ATTENTION_KERNEL_H

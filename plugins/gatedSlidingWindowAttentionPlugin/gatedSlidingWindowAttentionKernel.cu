/*
 * G-SWA CUDA kernels. The math (masks, split ranges, online softmax, merge, gate, conversions)
 * is in gswaMath.h and shared with the host harness; this file adds the parallel decomposition.
 *
 *   decode  (S small): gswaDecodeSplitKernel  grid (numSplits, B*Hkv, query groups)
 *                        each block: up to 16 query vectors of one KV group (all R rows, the nRep
 *                        query heads and S queries share the cache slice) x one slice of cache slots;
 *                        writes a partial (m, l, acc[D]) per query vector and split to the workspace.
 *                      gswaDecodeCombineKernel grid (ceil(B*R*Hq*S / 4)), one warp per query vector:
 *                        merges the partials, adds the local window part and the gate, writes out.
 *   prefill (S large): gswaPrefillKernel       grid (ceil(nRep*S / 16), B*R*Hkv)
 *                        each block: 16 consecutive query vectors of one (b, r, kv group); loops over
 *                        32-key tiles of the cache up to the block's last causal slot, then over
 *                        tiles of local slots, skipping tiles outside the block's windows.
 * Block = 4 warps; a warp owns 4 query vectors; lane = key within a tile for scores, and dims
 * lane + 32 * i (i < DPL = ceil(D / 32)) for accumulators.
 */
#include "gatedSlidingWindowAttentionKernel.h"
#include "gswaMath.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

// The two spellings a host compiler cannot parse go through these macros, so that the CPU execution
// model (plugins/tests/cuda_cpu_model.h, which defines them first) runs these kernels unchanged.
#ifndef PLT_DYNAMIC_SHARED
#define PLT_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
#ifndef PLT_LAUNCH
#define PLT_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

namespace plt
{
namespace gswa
{
namespace
{

constexpr unsigned kFullMask = 0xffffffffU;
constexpr int kThreads = kWarpsPerBlock * 32;

template <typename T>
struct GswaParams
{
    T const* query;
    T const* keyGlobal;
    T const* valueGlobal;
    T const* keyLocal;
    T const* valueLocal;
    int64_t const* queryPos;
    int64_t const* localPos;
    T const* gateWeight;
    T const* gateBias;
    T* output;
    float* partials; // decode only: [B*R*Hq*S][numSplits][2 + D]
    GswaDims dims;
    int32_t nRep;
    int32_t numSplits;
};

__device__ __forceinline__ float warpMax(float x)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
    }
    return x;
}

__device__ __forceinline__ float warpSum(float x)
{
    for (int o = 16; o > 0; o >>= 1)
    {
        x += __shfl_xor_sync(kFullMask, x, o);
    }
    return x;
}

//! Shared memory of an attention block: positions first (8-byte aligned), then fp32 tiles.
struct BlockSmem
{
    int64_t* keyPos; // [kKeyTile]        position of each key of the tile, -1 = masked
    int64_t* qPos;   // [kQueriesPerBlock] position of each query
    float* q;        // [kQueriesPerBlock][D]
    float* k;        // [kKeyTile][D + 1] (padded: lane-per-key reads hit distinct banks)
    float* v;        // [kKeyTile][D]

    __device__ BlockSmem(unsigned char* base, int D)
    {
        keyPos = reinterpret_cast<int64_t*>(base);
        qPos = keyPos + kKeyTile;
        q = reinterpret_cast<float*>(qPos + kQueriesPerBlock);
        k = q + kQueriesPerBlock * D;
        v = k + kKeyTile * (D + 1);
    }
};

size_t blockSmemBytes(int D)
{
    return sizeof(int64_t) * (kKeyTile + kQueriesPerBlock)
        + sizeof(float) * (static_cast<size_t>(kQueriesPerBlock) * D + kKeyTile * (D + 1) + kKeyTile * D);
}

//! Per-warp state: online softmax of its kQueriesPerWarp queries over one key set.
template <int DPL>
struct WarpAttention
{
    SoftmaxState st[kQueriesPerWarp];
    float acc[kQueriesPerWarp][DPL]; // acc[qi][i] = dim lane + 32 * i

    __device__ void init()
    {
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; ++qi)
        {
            st[qi] = emptyState();
#pragma unroll
            for (int i = 0; i < DPL; ++i)
            {
                acc[qi][i] = 0.0F;
            }
        }
    }

    //! Update with the tile in shared memory (keys [0, tileLen) of sm.k / sm.v / sm.keyPos).
    //! qFirst = block-local index of the warp's first query, nQ = number of valid queries in the block.
    template <bool kLocal>
    __device__ void attendTile(
        BlockSmem const& sm, int qFirst, int nQ, int tileLen, int D, float scale, int32_t window)
    {
        int const lane = threadIdx.x & 31;
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; ++qi)
        {
            int const q = qFirst + qi;
            if (q >= nQ)
            {
                break; // warp-uniform
            }
            int64_t const t = sm.qPos[q];
            int64_t const p = lane < tileLen ? sm.keyPos[lane] : -1;
            bool const valid
                = lane < tileLen && (kLocal ? localKeyValid(p, t, window) : (p >= 0 && globalKeyValid(p, t)));
            float score = negInf();
            if (valid)
            {
                float const* qv = sm.q + q * D;   // [D]
                float const* kr = sm.k + lane * (D + 1); // key row of this lane
                float dot = 0.0F;
                for (int d = 0; d < D; ++d)
                {
                    dot += qv[d] * kr[d];
                }
                score = scale * dot;
            }
            float const alpha = onlineRescale(st[qi], warpMax(score));
            float const w = onlineWeight(st[qi], score, valid);
            onlineAddTileSum(st[qi], warpSum(w));
#pragma unroll
            for (int i = 0; i < DPL; ++i)
            {
                acc[qi][i] *= alpha;
            }
            for (int kk = 0; kk < tileLen; ++kk)
            {
                float const wk = __shfl_sync(kFullMask, w, kk);
                if (wk == 0.0F)
                {
                    continue; // warp-uniform: masked key
                }
#pragma unroll
                for (int i = 0; i < DPL; ++i)
                {
                    int const d = lane + 32 * i;
                    if (d < D)
                    {
                        acc[qi][i] += wk * sm.v[kk * D + d];
                    }
                }
            }
        }
    }
};

//! Loads rows [0, tileLen) of a K/V tile into shared memory (fp32). rowOf(k) = row index in [.., D].
template <typename T, typename RowOf>
__device__ void loadKvTile(BlockSmem& sm, T const* key, T const* value, int tileLen, int D, RowOf rowOf)
{
    for (int idx = threadIdx.x; idx < tileLen * D; idx += blockDim.x)
    {
        int const kk = idx / D;
        int const d = idx - kk * D;
        int64_t const off = rowOf(kk) * D + d;
        sm.k[kk * (D + 1) + d] = toFloat(key[off]);
        sm.v[kk * D + d] = toFloat(value[off]);
    }
}

// ---- decode: split-K partials ---------------------------------------------------------------------

template <typename T, int DPL>
__global__ void __launch_bounds__(kThreads) gswaDecodeSplitKernel(GswaParams<T> p)
{
    PLT_DYNAMIC_SHARED(unsigned char, smemRaw);
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    BlockSmem sm(smemRaw, D);
    int const split = blockIdx.x;
    int const b = blockIdx.y / g.kvHeads;
    int const kvh = blockIdx.y % g.kvHeads;
    int const nU = g.rows * p.nRep * g.queries; // query vectors sharing this KV group
    int const uBase = blockIdx.z * kQueriesPerBlock;
    int const nQ = min(kQueriesPerBlock, nU - uBase);
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x & 31;

    for (int idx = threadIdx.x; idx < nQ * D; idx += blockDim.x)
    {
        int const q = idx / D;
        int r, h, s;
        decodeUnpack(uBase + q, p.nRep, g.queries, kvh, r, h, s);
        sm.q[idx] = toFloat(p.query[queryVector(b, r, h, s, g.rows, g.heads, g.queries) * D + (idx - q * D)]);
    }
    if (threadIdx.x < nQ)
    {
        int r, h, s;
        decodeUnpack(uBase + threadIdx.x, p.nRep, g.queries, kvh, r, h, s);
        sm.qPos[threadIdx.x] = p.queryPos[static_cast<int64_t>(b) * g.queries + s];
    }
    __syncthreads();

    // This split's slots, clipped to the last slot any of the block's queries can see.
    int32_t maxCount = 0;
    for (int q = 0; q < nQ; ++q)
    {
        maxCount = max(maxCount, globalKeyCount(sm.qPos[q], g.cacheLen));
    }
    int32_t begin, end;
    splitKeyRange(g.cacheLen, p.numSplits, split, begin, end);
    end = min(end, maxCount);

    WarpAttention<DPL> att;
    att.init();
    for (int32_t tile = begin; tile < end; tile += kKeyTile)
    {
        int const tileLen = min(kKeyTile, end - tile);
        loadKvTile(sm, p.keyGlobal, p.valueGlobal, tileLen, D,
            [&](int kk) { return globalRow(b, kvh, tile + kk, g.kvHeads, g.cacheLen); });
        if (threadIdx.x < kKeyTile)
        {
            sm.keyPos[threadIdx.x] = tile + threadIdx.x;
        }
        __syncthreads();
        att.template attendTile<false>(sm, warp * kQueriesPerWarp, nQ, tileLen, D, g.scale, g.window);
        __syncthreads();
    }

    // Partial of each query vector: (m, l, acc[D]) unnormalised.
    for (int qi = 0; qi < kQueriesPerWarp; ++qi)
    {
        int const q = warp * kQueriesPerWarp + qi;
        if (q >= nQ)
        {
            break;
        }
        int r, h, s;
        decodeUnpack(uBase + q, p.nRep, g.queries, kvh, r, h, s);
        int64_t const qv = queryVector(b, r, h, s, g.rows, g.heads, g.queries);
        float* part = p.partials + (qv * p.numSplits + split) * (2 + D);
        if (lane == 0)
        {
            part[0] = att.st[qi].m;
            part[1] = att.st[qi].l;
        }
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            if (d < D)
            {
                part[2 + d] = att.acc[qi][i];
            }
        }
    }
}

// ---- decode: combine partials + local window + gate ------------------------------------------------

template <typename T, int DPL>
__global__ void __launch_bounds__(kThreads) gswaDecodeCombineKernel(GswaParams<T> p)
{
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    int const lane = threadIdx.x & 31;
    int64_t const numQv = static_cast<int64_t>(g.batch) * g.rows * g.heads * g.queries;
    int64_t const qv = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
    if (qv >= numQv)
    {
        return; // whole warp; no block barrier below
    }
    // qv -> (b, r, h, s) of [B, R, Hq, S]
    int const s = static_cast<int>(qv % g.queries);
    int const h = static_cast<int>((qv / g.queries) % g.heads);
    int const r = static_cast<int>((qv / (static_cast<int64_t>(g.queries) * g.heads)) % g.rows);
    int const b = static_cast<int>(qv / (static_cast<int64_t>(g.queries) * g.heads * g.rows));
    int const kvh = h / p.nRep;

    float q[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        int const d = lane + 32 * i;
        q[i] = d < D ? toFloat(p.query[qv * D + d]) : 0.0F;
    }

    // Global part: merge the split partials.
    SoftmaxState gst = emptyState();
    float accG[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        accG[i] = 0.0F;
    }
    for (int split = 0; split < p.numSplits; ++split)
    {
        float const* part = p.partials + (qv * p.numSplits + split) * (2 + D);
        float ca, cb;
        gst = mergeStates(gst, SoftmaxState{part[0], part[1]}, ca, cb);
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            accG[i] = ca * accG[i] + (d < D ? cb * part[2 + d] : 0.0F);
        }
    }

    // Local part: one slot at a time (W is small in decode), dot product across the warp.
    int64_t const t = p.queryPos[static_cast<int64_t>(b) * g.queries + s];
    SoftmaxState lst = emptyState();
    float accL[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        accL[i] = 0.0F;
    }
    for (int slot = 0; slot < g.localSlots; ++slot)
    {
        if (!localKeyValid(p.localPos[static_cast<int64_t>(b) * g.localSlots + slot], t, g.window))
        {
            continue; // warp-uniform
        }
        int64_t const row = localRow(b, r, kvh, slot, g.rows, g.kvHeads, g.localSlots);
        float part = 0.0F;
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            part += d < D ? q[i] * toFloat(p.keyLocal[row * D + d]) : 0.0F;
        }
        float const score = g.scale * warpSum(part);
        float const alpha = onlineRescale(lst, score);
        float const w = onlineWeight(lst, score, true);
        onlineAddTileSum(lst, w);
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            accL[i] = alpha * accL[i] + (d < D ? w * toFloat(p.valueLocal[row * D + d]) : 0.0F);
        }
    }

    // Gate and blend.
    float gl = 0.0F;
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        int const d = lane + 32 * i;
        gl += d < D ? q[i] * toFloat(p.gateWeight[static_cast<int64_t>(h) * D + d]) : 0.0F;
    }
    float const gate = gateFromLogit(warpSum(gl) + toFloat(p.gateBias[h]));
    float const fG = finalizeFactor(gst);
    float const fL = finalizeFactor(lst);
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        int const d = lane + 32 * i;
        if (d < D)
        {
            p.output[qv * D + d] = fromFloat<T>(gateBlend(gate, accL[i] * fL, accG[i] * fG));
        }
    }
}

// ---- prefill: tiled over queries and keys ---------------------------------------------------------

template <typename T, int DPL>
__global__ void __launch_bounds__(kThreads) gswaPrefillKernel(GswaParams<T> p)
{
    PLT_DYNAMIC_SHARED(unsigned char, smemRaw);
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    BlockSmem sm(smemRaw, D);
    int const b = blockIdx.y / (g.rows * g.kvHeads);
    int const r = (blockIdx.y / g.kvHeads) % g.rows;
    int const kvh = blockIdx.y % g.kvHeads;
    int const nU = p.nRep * g.queries;
    int const uBase = blockIdx.x * kQueriesPerBlock;
    int const nQ = min(kQueriesPerBlock, nU - uBase);
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x & 31;

    for (int idx = threadIdx.x; idx < nQ * D; idx += blockDim.x)
    {
        int const q = idx / D;
        int h, s;
        prefillUnpack(uBase + q, p.nRep, g.queries, kvh, h, s);
        sm.q[idx] = toFloat(p.query[queryVector(b, r, h, s, g.rows, g.heads, g.queries) * D + (idx - q * D)]);
    }
    if (threadIdx.x < nQ)
    {
        int h, s;
        prefillUnpack(uBase + threadIdx.x, p.nRep, g.queries, kvh, h, s);
        sm.qPos[threadIdx.x] = p.queryPos[static_cast<int64_t>(b) * g.queries + s];
    }
    __syncthreads();

    int64_t tMin = INT64_MAX;
    int64_t tMax = INT64_MIN;
    for (int q = 0; q < nQ; ++q)
    {
        tMin = min(tMin, sm.qPos[q]);
        tMax = max(tMax, sm.qPos[q]);
    }

    // Global part: tiles after the block's last causal slot are never visited.
    WarpAttention<DPL> glob;
    glob.init();
    int32_t const end = globalKeyCount(tMax, g.cacheLen);
    for (int32_t tile = 0; tile < end; tile += kKeyTile)
    {
        int const tileLen = min(kKeyTile, end - tile);
        loadKvTile(sm, p.keyGlobal, p.valueGlobal, tileLen, D,
            [&](int kk) { return globalRow(b, kvh, tile + kk, g.kvHeads, g.cacheLen); });
        if (threadIdx.x < kKeyTile)
        {
            sm.keyPos[threadIdx.x] = tile + threadIdx.x;
        }
        __syncthreads();
        glob.template attendTile<false>(sm, warp * kQueriesPerWarp, nQ, tileLen, D, g.scale, g.window);
        __syncthreads();
    }

    // Local part: tiles of slots; a tile whose positions miss every query's window is skipped.
    WarpAttention<DPL> loc;
    loc.init();
    for (int32_t tile = 0; tile < g.localSlots; tile += kKeyTile)
    {
        int const tileLen = min(kKeyTile, g.localSlots - tile);
        if (threadIdx.x < kKeyTile)
        {
            sm.keyPos[threadIdx.x]
                = threadIdx.x < tileLen ? p.localPos[static_cast<int64_t>(b) * g.localSlots + tile + threadIdx.x] : -1;
        }
        __syncthreads();
        int64_t pMin = INT64_MAX;
        int64_t pMax = -1;
        for (int kk = 0; kk < tileLen; ++kk)
        {
            int64_t const pos = sm.keyPos[kk];
            if (pos >= 0)
            {
                pMin = min(pMin, pos);
                pMax = max(pMax, pos);
            }
        }
        if (localTileMayBeValid(pMin, pMax, tMin, tMax, g.window)) // block-uniform
        {
            loadKvTile(sm, p.keyLocal, p.valueLocal, tileLen, D,
                [&](int kk) { return localRow(b, r, kvh, tile + kk, g.rows, g.kvHeads, g.localSlots); });
            __syncthreads();
            loc.template attendTile<true>(sm, warp * kQueriesPerWarp, nQ, tileLen, D, g.scale, g.window);
        }
        __syncthreads();
    }

    // Gate, blend, store.
    for (int qi = 0; qi < kQueriesPerWarp; ++qi)
    {
        int const q = warp * kQueriesPerWarp + qi;
        if (q >= nQ)
        {
            break;
        }
        int h, s;
        prefillUnpack(uBase + q, p.nRep, g.queries, kvh, h, s);
        int64_t const qv = queryVector(b, r, h, s, g.rows, g.heads, g.queries);
        float gl = 0.0F;
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            gl += d < D ? sm.q[q * D + d] * toFloat(p.gateWeight[static_cast<int64_t>(h) * D + d]) : 0.0F;
        }
        float const gate = gateFromLogit(warpSum(gl) + toFloat(p.gateBias[h]));
        float const fG = finalizeFactor(glob.st[qi]);
        float const fL = finalizeFactor(loc.st[qi]);
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            if (d < D)
            {
                p.output[qv * D + d] = fromFloat<T>(gateBlend(gate, loc.acc[qi][i] * fL, glob.acc[qi][i] * fG));
            }
        }
    }
}

// ---- host side -------------------------------------------------------------------------------------

template <typename T>
GswaParams<T> makeParams(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims)
{
    return GswaParams<T>{query, keyGlobal, valueGlobal, keyLocal, valueLocal, queryPos, localPos, gateWeight,
        gateBias, output, nullptr, dims, dims.heads / dims.kvHeads, 1};
}

//! Calls f(std::integral_constant<int, DPL>) with DPL = ceil(D / 32) rounded up to 1, 2, 4 or 8.
template <typename F>
cudaError_t dispatchDpl(int D, F&& f)
{
    if (D <= 32)
    {
        return f(std::integral_constant<int, 1>{});
    }
    if (D <= 64)
    {
        return f(std::integral_constant<int, 2>{});
    }
    if (D <= 128)
    {
        return f(std::integral_constant<int, 4>{});
    }
    return f(std::integral_constant<int, 8>{});
}

template <typename Kernel>
cudaError_t allowSmem(Kernel kernel, size_t bytes)
{
    constexpr size_t kDefaultLimit = 48 * 1024;
    if (bytes <= kDefaultLimit)
    {
        return cudaSuccess;
    }
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

int64_t numQueryVectors(GswaDims const& d)
{
    return static_cast<int64_t>(d.batch) * d.rows * d.heads * d.queries;
}

} // namespace

char const* gswaCheckDims(GswaDims const& d)
{
    if (d.batch < 0 || d.rows < 0 || d.queries < 0 || d.cacheLen < 0 || d.localSlots < 0)
    {
        return "negative tensor dimension";
    }
    if (d.headDim < 1 || d.headDim > kMaxHeadDim)
    {
        return "head dim D must be in [1, 256]";
    }
    if (d.heads < 1 || d.kvHeads < 1 || d.heads % d.kvHeads != 0)
    {
        return "num_heads must be a positive multiple of num_kv_heads";
    }
    if (d.window < 1)
    {
        return "window must be >= 1";
    }
    if (static_cast<int64_t>(d.batch) * d.rows * d.kvHeads > 65535)
    {
        return "B * R * Hkv must be <= 65535 (grid.y limit)";
    }
    return nullptr;
}

size_t gswaDecodeWorkspaceBytes(GswaDims const& d)
{
    GswaDims clamped = d; // the decode path only runs for S <= kDecodeMaxQueries
    clamped.queries = d.queries < kDecodeMaxQueries ? d.queries : kDecodeMaxQueries;
    return sizeof(float)
        * static_cast<size_t>(decodeWorkspaceFloats(numQueryVectors(clamped), decodeNumSplits(d.cacheLen), d.headDim));
}

template <typename T>
cudaError_t launchGswaDecode(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, int32_t numSplits, void* workspace, size_t workspaceBytes, cudaStream_t stream)
{
    if (gswaCheckDims(dims) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (numQueryVectors(dims) == 0)
    {
        return cudaSuccess;
    }
    GswaParams<T> p = makeParams(query, keyGlobal, valueGlobal, keyLocal, valueLocal, queryPos, localPos,
        gateWeight, gateBias, output, dims);
    p.numSplits = numSplits > 0 ? numSplits : decodeNumSplits(dims.cacheLen);
    size_t const needed
        = sizeof(float) * static_cast<size_t>(decodeWorkspaceFloats(numQueryVectors(dims), p.numSplits, dims.headDim));
    if (workspace == nullptr || workspaceBytes < needed)
    {
        return cudaErrorInvalidValue;
    }
    p.partials = static_cast<float*>(workspace);
    int const groups = (dims.rows * p.nRep * dims.queries + kQueriesPerBlock - 1) / kQueriesPerBlock;
    size_t const smem = blockSmemBytes(dims.headDim);
    return dispatchDpl(dims.headDim, [&](auto dpl) -> cudaError_t {
        constexpr int DPL = decltype(dpl)::value;
        auto const splitKernel = gswaDecodeSplitKernel<T, DPL>;
        auto const combineKernel = gswaDecodeCombineKernel<T, DPL>;
        cudaError_t err = allowSmem(splitKernel, smem);
        if (err != cudaSuccess)
        {
            return err;
        }
        dim3 const splitGrid(p.numSplits, dims.batch * dims.kvHeads, groups);
        PLT_LAUNCH(splitKernel, splitGrid, kThreads, smem, stream, p);
        if ((err = cudaGetLastError()) != cudaSuccess)
        {
            return err;
        }
        auto const combineBlocks = static_cast<unsigned>((numQueryVectors(dims) + kWarpsPerBlock - 1) / kWarpsPerBlock);
        PLT_LAUNCH(combineKernel, combineBlocks, kThreads, 0, stream, p);
        return cudaGetLastError();
    });
}

template <typename T>
cudaError_t launchGswaPrefill(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, cudaStream_t stream)
{
    if (gswaCheckDims(dims) != nullptr)
    {
        return cudaErrorInvalidValue;
    }
    if (numQueryVectors(dims) == 0)
    {
        return cudaSuccess;
    }
    GswaParams<T> p = makeParams(query, keyGlobal, valueGlobal, keyLocal, valueLocal, queryPos, localPos,
        gateWeight, gateBias, output, dims);
    int const tiles = (p.nRep * dims.queries + kQueriesPerBlock - 1) / kQueriesPerBlock;
    size_t const smem = blockSmemBytes(dims.headDim);
    return dispatchDpl(dims.headDim, [&](auto dpl) -> cudaError_t {
        constexpr int DPL = decltype(dpl)::value;
        auto const kernel = gswaPrefillKernel<T, DPL>;
        cudaError_t err = allowSmem(kernel, smem);
        if (err != cudaSuccess)
        {
            return err;
        }
        dim3 const grid(tiles, dims.batch * dims.rows * dims.kvHeads);
        PLT_LAUNCH(kernel, grid, kThreads, smem, stream, p);
        return cudaGetLastError();
    });
}

template <typename T>
cudaError_t launchGswa(T const* query, T const* keyGlobal, T const* valueGlobal, T const* keyLocal,
    T const* valueLocal, int64_t const* queryPos, int64_t const* localPos, T const* gateWeight, T const* gateBias,
    T* output, GswaDims const& dims, void* workspace, size_t workspaceBytes, cudaStream_t stream)
{
    size_t const needed = gswaDecodeWorkspaceBytes(dims);
    if (dims.queries <= kDecodeMaxQueries && workspace != nullptr && needed > 0 && workspaceBytes >= needed)
    {
        return launchGswaDecode(query, keyGlobal, valueGlobal, keyLocal, valueLocal, queryPos, localPos, gateWeight,
            gateBias, output, dims, 0, workspace, workspaceBytes, stream);
    }
    return launchGswaPrefill(query, keyGlobal, valueGlobal, keyLocal, valueLocal, queryPos, localPos, gateWeight,
        gateBias, output, dims, stream);
}

#define GSWA_INSTANTIATE(T)                                                                                            \
    template cudaError_t launchGswa<T>(T const*, T const*, T const*, T const*, T const*, int64_t const*,              \
        int64_t const*, T const*, T const*, T*, GswaDims const&, void*, size_t, cudaStream_t);                        \
    template cudaError_t launchGswaDecode<T>(T const*, T const*, T const*, T const*, T const*, int64_t const*,        \
        int64_t const*, T const*, T const*, T*, GswaDims const&, int32_t, void*, size_t, cudaStream_t);               \
    template cudaError_t launchGswaPrefill<T>(T const*, T const*, T const*, T const*, T const*, int64_t const*,       \
        int64_t const*, T const*, T const*, T*, GswaDims const&, cudaStream_t);

GSWA_INSTANTIATE(float)
GSWA_INSTANTIATE(__half)
GSWA_INSTANTIATE(__nv_bfloat16)

#undef GSWA_INSTANTIATE

} // namespace gswa
} // namespace plt

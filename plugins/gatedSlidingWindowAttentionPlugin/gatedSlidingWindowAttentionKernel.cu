/*
 * G-SWA CUDA kernels, op version 2. The math (masks, split ranges, online softmax, merge, gate,
 * conversions, shared-memory sizes) is in gswaMath.h; this file adds the parallel decomposition.
 *
 *   decode  (S small): gswaDecodeSplitKernel  grid (numSplits, B*Hkv, query groups), block 32 * ceil(nq / 4)
 *                        each block: the nq query vectors of one KV group (all R rows x nRep query
 *                        heads x S queries; one group unless more than decodeQueriesPerBlock) x one
 *                        slice of cache slots; each K/V tile is loaded once and used by all of them;
 *                        writes a partial (m, l, acc[D]) per query vector and split to the workspace.
 *                      gswaDecodeCombineKernel grid (ceil(B*R*Hq*S / 4)), one warp per query vector:
 *                        merges the partials; rows >= G add the local window part and the gate.
 *   prefill (S large): gswaPrefillKernel       grid (ceil(nRep*S / 16), B*R*Hkv), block 128
 *                        each block: 16 consecutive query vectors of one (b, r, kv group); loops over
 *                        32-key tiles of the cache up to the block's last causal slot, then (rows >= G)
 *                        over tiles of local slots, skipping tiles outside the block's windows.
 * A warp owns 4 query vectors; lane = key within a tile for scores, and dims lane + 32 * i
 * (i < DPL = ceil(D / 32)) for accumulators. A tile is processed in two phases through one shared
 * buffer: K (scores, softmax update), then V (accumulate), so D = 256 fits sm_75's 64 KiB.
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
constexpr int kPrefillThreads = kPrefillWarps * 32;
constexpr int kCombineThreads = kCombineWarps * 32;
constexpr int kDecodeMaxThreads = kDecodeMaxQueriesPerBlock / kQueriesPerWarp * 32;

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
    int32_t queriesPerBlock; // decode: nq
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

//! Shared memory of an attention block (size: attentionSmemBytes(nq, D)): positions first (8-byte
//! aligned), then fp32 queries and one tile buffer that holds the K rows, then the V rows of a tile.
struct BlockSmem
{
    int64_t* keyPos; // [kKeyTile]  position of each key of the tile, -1 = masked
    int64_t* qPos;   // [nq]        position of each query
    float* q;        // [nq][D]
    float* kv;       // [kKeyTile][D + 1] (padded: lane-per-key reads hit distinct banks)

    __device__ BlockSmem(unsigned char* base, int nq, int D)
    {
        keyPos = reinterpret_cast<int64_t*>(base);
        qPos = keyPos + kKeyTile;
        q = reinterpret_cast<float*>(qPos + nq);
        kv = q + nq * D;
    }
};

//! Loads rows [0, tileLen) of a K or V tile into sm.kv (fp32). rowOf(k) = row index in [.., D].
template <typename T, typename RowOf>
__device__ void loadTile(BlockSmem& sm, T const* src, int tileLen, int D, RowOf rowOf)
{
    for (int idx = threadIdx.x; idx < tileLen * D; idx += blockDim.x)
    {
        int const kk = idx / D;
        int const d = idx - kk * D;
        sm.kv[kk * (D + 1) + d] = toFloat(src[rowOf(kk) * D + d]);
    }
}

//! Per-warp state: online softmax of its kQueriesPerWarp queries over one key set.
template <int DPL>
struct WarpAttention
{
    SoftmaxState st[kQueriesPerWarp];
    float acc[kQueriesPerWarp][DPL]; // acc[qi][i] = dim lane + 32 * i
    float w[kQueriesPerWarp];        // this lane's key weight in the current tile

    __device__ void init()
    {
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; ++qi)
        {
            st[qi] = emptyState();
            w[qi] = 0.0F;
#pragma unroll
            for (int i = 0; i < DPL; ++i)
            {
                acc[qi][i] = 0.0F;
            }
        }
    }

    //! Phase 1, sm.kv holding the tile's keys: scores, running max and sum, accumulator rescale.
    //! qFirst = block-local index of the warp's first query, nQ = number of valid queries in the block.
    template <bool kLocal>
    __device__ void scoreTile(BlockSmem const& sm, int qFirst, int nQ, int tileLen, int D, float scale, int32_t window)
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
                float const* qv = sm.q + q * D;            // [D]
                float const* kr = sm.kv + lane * (D + 1); // key row of this lane
                float dot = 0.0F;
                for (int d = 0; d < D; ++d)
                {
                    dot += qv[d] * kr[d];
                }
                score = scale * dot;
            }
            float const alpha = onlineRescale(st[qi], warpMax(score));
            w[qi] = onlineWeight(st[qi], score, valid);
            onlineAddTileSum(st[qi], warpSum(w[qi]));
#pragma unroll
            for (int i = 0; i < DPL; ++i)
            {
                acc[qi][i] *= alpha;
            }
        }
    }

    //! Phase 2, sm.kv holding the tile's values: acc += w_k * v_k.
    __device__ void accumulateTile(BlockSmem const& sm, int qFirst, int nQ, int tileLen, int D)
    {
        int const lane = threadIdx.x & 31;
#pragma unroll
        for (int qi = 0; qi < kQueriesPerWarp; ++qi)
        {
            if (qFirst + qi >= nQ)
            {
                break; // warp-uniform
            }
            for (int kk = 0; kk < tileLen; ++kk)
            {
                float const wk = __shfl_sync(kFullMask, w[qi], kk);
                if (wk == 0.0F)
                {
                    continue; // warp-uniform: masked key
                }
                float const* vr = sm.kv + kk * (D + 1);
#pragma unroll
                for (int i = 0; i < DPL; ++i)
                {
                    int const d = lane + 32 * i;
                    if (d < D)
                    {
                        acc[qi][i] += wk * vr[d];
                    }
                }
            }
        }
    }
};

//! One tile through both phases; every thread of the block calls it (four barriers).
//! keyPosOf(k) = position of key k for sm.keyPos, rowOf(k) = its row in key/value.
template <bool kLocal, typename T, int DPL, typename KeyPos, typename RowOf>
__device__ void attendTile(WarpAttention<DPL>& att, BlockSmem& sm, T const* key, T const* value, int tileLen, int nQ,
    int D, float scale, int32_t window, KeyPos keyPosOf, RowOf rowOf)
{
    int const qFirst = static_cast<int>(threadIdx.x / 32) * kQueriesPerWarp;
    loadTile(sm, key, tileLen, D, rowOf);
    if (threadIdx.x < kKeyTile)
    {
        sm.keyPos[threadIdx.x] = threadIdx.x < tileLen ? keyPosOf(threadIdx.x) : -1;
    }
    __syncthreads();
    att.template scoreTile<kLocal>(sm, qFirst, nQ, tileLen, D, scale, window);
    __syncthreads();
    loadTile(sm, value, tileLen, D, rowOf);
    __syncthreads();
    att.accumulateTile(sm, qFirst, nQ, tileLen, D);
    __syncthreads();
}

// ---- decode: split-K partials ---------------------------------------------------------------------

template <typename T, int DPL>
__global__ void __launch_bounds__(kDecodeMaxThreads) gswaDecodeSplitKernel(GswaParams<T> p)
{
    PLT_DYNAMIC_SHARED(unsigned char, smemRaw);
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    BlockSmem sm(smemRaw, p.queriesPerBlock, D);
    int const split = blockIdx.x;
    int const b = blockIdx.y / g.kvHeads;
    int const kvh = blockIdx.y % g.kvHeads;
    int const nU = g.rows * p.nRep * g.queries; // query vectors sharing this KV group
    int const uBase = blockIdx.z * p.queriesPerBlock;
    int const nQ = min(p.queriesPerBlock, nU - uBase);
    int const warp = threadIdx.x / 32;
    int const lane = threadIdx.x & 31;

    for (int idx = threadIdx.x; idx < nQ * D; idx += blockDim.x)
    {
        int const q = idx / D;
        int r, h, s;
        decodeUnpack(uBase + q, p.nRep, g.queries, kvh, r, h, s);
        sm.q[idx] = toFloat(p.query[queryVector(b, r, h, s, g.rows, g.heads, g.queries) * D + (idx - q * D)]);
    }
    for (int q = threadIdx.x; q < nQ; q += blockDim.x)
    {
        int r, h, s;
        decodeUnpack(uBase + q, p.nRep, g.queries, kvh, r, h, s);
        sm.qPos[q] = p.queryPos[static_cast<int64_t>(b) * g.queries + s];
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
        attendTile<false>(att, sm, p.keyGlobal, p.valueGlobal, min(kKeyTile, end - tile), nQ, D, g.scale, g.window,
            [&](int kk) { return static_cast<int64_t>(tile + kk); },
            [&](int kk) { return globalRow(b, kvh, tile + kk, g.kvHeads, g.cacheLen); });
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
__global__ void __launch_bounds__(kCombineThreads) gswaDecodeCombineKernel(GswaParams<T> p)
{
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    int const lane = threadIdx.x & 31;
    int64_t const numQv = static_cast<int64_t>(g.batch) * g.rows * g.heads * g.queries;
    int64_t const qv = static_cast<int64_t>(blockIdx.x) * kCombineWarps + threadIdx.x / 32;
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
    float const fG = finalizeFactor(gst);
    if (r < g.globalRows)
    {
#pragma unroll
        for (int i = 0; i < DPL; ++i) // global-only row: g = 0
        {
            int const d = lane + 32 * i;
            if (d < D)
            {
                p.output[qv * D + d] = fromFloat<T>(accG[i] * fG);
            }
        }
        return;
    }

    float q[DPL];
#pragma unroll
    for (int i = 0; i < DPL; ++i)
    {
        int const d = lane + 32 * i;
        q[i] = d < D ? toFloat(p.query[qv * D + d]) : 0.0F;
    }

    // Local part: one slot at a time (W is small in decode), dot product across the warp.
    int64_t const t = p.queryPos[static_cast<int64_t>(b) * g.queries + s];
    int32_t const localRows = g.rows - g.globalRows;
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
        int64_t const row = localRow(b, r - g.globalRows, kvh, slot, localRows, g.kvHeads, g.localSlots);
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
__global__ void __launch_bounds__(kPrefillThreads) gswaPrefillKernel(GswaParams<T> p)
{
    PLT_DYNAMIC_SHARED(unsigned char, smemRaw);
    GswaDims const& g = p.dims;
    int const D = g.headDim;
    BlockSmem sm(smemRaw, kPrefillQueriesPerBlock, D);
    int const b = blockIdx.y / (g.rows * g.kvHeads);
    int const r = (blockIdx.y / g.kvHeads) % g.rows;
    int const kvh = blockIdx.y % g.kvHeads;
    int const nU = p.nRep * g.queries;
    int const uBase = blockIdx.x * kPrefillQueriesPerBlock;
    int const nQ = min(kPrefillQueriesPerBlock, nU - uBase);
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
        attendTile<false>(glob, sm, p.keyGlobal, p.valueGlobal, min(kKeyTile, end - tile), nQ, D, g.scale, g.window,
            [&](int kk) { return static_cast<int64_t>(tile + kk); },
            [&](int kk) { return globalRow(b, kvh, tile + kk, g.kvHeads, g.cacheLen); });
    }

    // Local part (rows >= G): tiles of slots. Every thread reads the tile's positions itself (the
    // same values, so the skip is block-uniform): a tile missing every query's window costs no barrier.
    WarpAttention<DPL> loc;
    loc.init();
    bool const mixed = r >= g.globalRows; // block-uniform
    int32_t const localRows = g.rows - g.globalRows;
    int64_t const* lpos = p.localPos + static_cast<int64_t>(b) * g.localSlots;
    for (int32_t tile = 0; mixed && tile < g.localSlots; tile += kKeyTile)
    {
        int const tileLen = min(kKeyTile, g.localSlots - tile);
        int64_t pMin = INT64_MAX;
        int64_t pMax = -1;
        for (int kk = 0; kk < tileLen; ++kk)
        {
            int64_t const pos = lpos[tile + kk];
            if (pos >= 0)
            {
                pMin = min(pMin, pos);
                pMax = max(pMax, pos);
            }
        }
        if (!localTileMayBeValid(pMin, pMax, tMin, tMax, g.window))
        {
            continue; // block-uniform
        }
        attendTile<true>(loc, sm, p.keyLocal, p.valueLocal, tileLen, nQ, D, g.scale, g.window,
            [&](int kk) { return lpos[tile + kk]; },
            [&](int kk) { return localRow(b, r - g.globalRows, kvh, tile + kk, localRows, g.kvHeads, g.localSlots); });
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
        float gate = 0.0F; // global-only rows: g = 0
        if (mixed)
        {
            float gl = 0.0F;
#pragma unroll
            for (int i = 0; i < DPL; ++i)
            {
                int const d = lane + 32 * i;
                gl += d < D ? sm.q[q * D + d] * toFloat(p.gateWeight[static_cast<int64_t>(h) * D + d]) : 0.0F;
            }
            gate = gateFromLogit(warpSum(gl) + toFloat(p.gateBias[h]));
        }
        float const fG = finalizeFactor(glob.st[qi]);
        float const fL = finalizeFactor(loc.st[qi]);
#pragma unroll
        for (int i = 0; i < DPL; ++i)
        {
            int const d = lane + 32 * i;
            if (d < D)
            {
                float const yG = glob.acc[qi][i] * fG;
                p.output[qv * D + d] = fromFloat<T>(mixed ? gateBlend(gate, loc.acc[qi][i] * fL, yG) : yG);
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
        gateBias, output, nullptr, dims, dims.heads / dims.kvHeads, 1, 1};
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

int64_t numQueryVectors(GswaDims const& d)
{
    return static_cast<int64_t>(d.batch) * d.rows * d.heads * d.queries;
}

size_t prefillSmemBytes(int D)
{
    return attentionSmemBytes(kPrefillQueriesPerBlock, D);
}

template <typename T>
cudaError_t preparePrefill(int D)
{
    size_t const smem = prefillSmemBytes(D);
    if (smem <= kDefaultSmemBytes)
    {
        return cudaSuccess;
    }
    return dispatchDpl(D, [&](auto dpl) -> cudaError_t {
        constexpr int DPL = decltype(dpl)::value;
        return cudaFuncSetAttribute(
            gswaPrefillKernel<T, DPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    });
}

} // namespace

char const* gswaCheckDims(GswaDims const& d)
{
    if (d.batch < 0 || d.rows < 0 || d.queries < 0 || d.cacheLen < 0 || d.localSlots < 0)
    {
        return "negative tensor dimension";
    }
    if (d.globalRows < 0 || d.globalRows > d.rows)
    {
        return "global_rows G must be in [0, R]";
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

cudaError_t gswaPrepareKernels(int32_t headDim)
{
    if (headDim < 1 || headDim > kMaxHeadDim)
    {
        return cudaErrorInvalidValue;
    }
    cudaError_t err = preparePrefill<float>(headDim);
    if (err == cudaSuccess)
    {
        err = preparePrefill<__half>(headDim);
    }
    if (err == cudaSuccess)
    {
        err = preparePrefill<__nv_bfloat16>(headDim);
    }
    return err;
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
    int32_t const numU = dims.rows * p.nRep * dims.queries; // query vectors per KV group
    p.queriesPerBlock = decodeQueriesPerBlock(numU, dims.headDim);
    int const groups = (numU + p.queriesPerBlock - 1) / p.queriesPerBlock;
    int const threads = 32 * ((p.queriesPerBlock + kQueriesPerWarp - 1) / kQueriesPerWarp);
    size_t const smem = attentionSmemBytes(p.queriesPerBlock, dims.headDim); // <= 48 KiB by construction
    return dispatchDpl(dims.headDim, [&](auto dpl) -> cudaError_t {
        constexpr int DPL = decltype(dpl)::value;
        auto const splitKernel = gswaDecodeSplitKernel<T, DPL>;
        auto const combineKernel = gswaDecodeCombineKernel<T, DPL>;
        dim3 const splitGrid(p.numSplits, dims.batch * dims.kvHeads, groups);
        PLT_LAUNCH(splitKernel, splitGrid, threads, smem, stream, p);
        cudaError_t const err = cudaGetLastError();
        if (err != cudaSuccess)
        {
            return err;
        }
        auto const combineBlocks = static_cast<unsigned>((numQueryVectors(dims) + kCombineWarps - 1) / kCombineWarps);
        PLT_LAUNCH(combineKernel, combineBlocks, kCombineThreads, 0, stream, p);
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
    int const tiles = (p.nRep * dims.queries + kPrefillQueriesPerBlock - 1) / kPrefillQueriesPerBlock;
    size_t const smem = prefillSmemBytes(dims.headDim); // > 48 KiB (D > 253) needs gswaPrepareKernels
    return dispatchDpl(dims.headDim, [&](auto dpl) -> cudaError_t {
        constexpr int DPL = decltype(dpl)::value;
        auto const prefillKernel = gswaPrefillKernel<T, DPL>;
        dim3 const grid(tiles, dims.batch * dims.rows * dims.kvHeads);
        PLT_LAUNCH(prefillKernel, grid, kPrefillThreads, smem, stream, p);
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

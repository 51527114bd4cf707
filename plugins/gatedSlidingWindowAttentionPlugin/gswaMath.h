/*
 * G-SWA math shared by the CUDA kernels and the host-side test harness.
 *
 * Everything that decides a result lives here as __host__ __device__ functions: key validity
 * (causal / window masks), split-K ranges, tile skipping, online-softmax updates, the merge of
 * split partials, the gate and the dtype conversions. The kernels only add the parallel
 * decomposition (warps, shared-memory tiles); plugins/tests/gswa_host_harness.cpp runs the same
 * functions on the CPU against the torch reference (plt_deploy/ops/gswa.py).
 *
 * No TensorRT type here. Compiles with nvcc and with a host C++17 compiler (-I<cuda>/include).
 */
#ifndef PLT_GSWA_MATH_H
#define PLT_GSWA_MATH_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define GSWA_HD __host__ __device__ __forceinline__
#else
#define GSWA_HD inline
#endif

namespace plt
{
namespace gswa
{

// Tiling constants shared by kernels and harness.
constexpr int kKeyTile = 32;                    // keys per shared-memory tile = one key per lane
constexpr int kQueriesPerWarp = 4;              // query vectors owned by one warp (registers)
constexpr int kPrefillWarps = 4;                // prefill block: 4 warps ...
constexpr int kPrefillQueriesPerBlock = kPrefillWarps * kQueriesPerWarp; // ... of 16 query vectors
constexpr int kDecodeMaxQueriesPerBlock = 64;   // decode block: up to 16 warps, all rows x heads of a KV group
constexpr int kCombineWarps = 4;                // combine block: one warp per query vector
constexpr int kMaxHeadDim = 256;                // D <= 256: each lane keeps ceil(D / 32) <= 8 dims
constexpr int kDecodeMaxQueries = 4;            // S <= 4 uses the split-K decode path, larger S the prefill path
constexpr int kMinKeysPerSplit = 128;           // decode: a split covers at least this many cache slots
constexpr int kMaxSplits = 32;                  // decode: at most this many splits per query
constexpr size_t kDefaultSmemBytes = 48 * 1024; // dynamic shared memory without the opt-in attribute

// ---- dtype conversions (fp32 accumulation for every input type) ---------------------------------

GSWA_HD float toFloat(float x)
{
    return x;
}
GSWA_HD float toFloat(__half x)
{
    return __half2float(x);
}
GSWA_HD float toFloat(__nv_bfloat16 x)
{
    return __bfloat162float(x);
}

template <typename T>
GSWA_HD T fromFloat(float x);
template <>
GSWA_HD float fromFloat<float>(float x)
{
    return x;
}
template <>
GSWA_HD __half fromFloat<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
GSWA_HD __nv_bfloat16 fromFloat<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

GSWA_HD float negInf()
{
    return -INFINITY;
}

GSWA_HD float gswaExp(float x)
{
    return expf(x); // full-precision expf on host and device (not the __expf intrinsic)
}

// ---- masks and ranges ----------------------------------------------------------------------------

//! Number of valid shared-cache slots for a query at position t: slots j in [0, min(T, t + 1)).
GSWA_HD int32_t globalKeyCount(int64_t t, int32_t cacheLen)
{
    if (t < 0)
    {
        return 0;
    }
    return t + 1 < static_cast<int64_t>(cacheLen) ? static_cast<int32_t>(t + 1) : cacheLen;
}

//! Global slot j (position j) is valid for a query at t iff j <= t.
GSWA_HD bool globalKeyValid(int64_t j, int64_t t)
{
    return j <= t;
}

//! Local slot holding position p is valid for a query at t iff p >= 0 and t - window < p <= t.
GSWA_HD bool localKeyValid(int64_t p, int64_t t, int32_t window)
{
    return p >= 0 && p <= t && p > t - window;
}

//! A tile of local slots whose positions lie in [pMin, pMax] (empty slots excluded) can hold a
//! valid key for some query with position in [tMin, tMax] iff the ranges overlap.
GSWA_HD bool localTileMayBeValid(int64_t pMin, int64_t pMax, int64_t tMin, int64_t tMax, int32_t window)
{
    return pMin <= pMax && pMax > tMin - window && pMin <= tMax;
}

//! Number of decode splits over a cache of T slots (depends on T only, so the workspace bound
//! computed from the max T at build time holds for every runtime shape).
GSWA_HD int32_t decodeNumSplits(int32_t cacheLen)
{
    int32_t const n = (cacheLen + kMinKeysPerSplit - 1) / kMinKeysPerSplit;
    return n < 1 ? 1 : (n > kMaxSplits ? kMaxSplits : n);
}

//! Slots [begin, end) of split `split` out of `numSplits` over T slots (contiguous, equal chunks).
GSWA_HD void splitKeyRange(int32_t cacheLen, int32_t numSplits, int32_t split, int32_t& begin, int32_t& end)
{
    int32_t const chunk = (cacheLen + numSplits - 1) / numSplits;
    begin = split * chunk < cacheLen ? split * chunk : cacheLen;
    end = begin + chunk < cacheLen ? begin + chunk : cacheLen;
}

// ---- online softmax ------------------------------------------------------------------------------

//! Running softmax state of one query over the keys seen so far: max score m (-inf = none yet)
//! and sum l of exp(score - m). The matching accumulator acc[D] = sum exp(score - m) * v.
struct SoftmaxState
{
    float m;
    float l;
};

GSWA_HD SoftmaxState emptyState()
{
    return SoftmaxState{negInf(), 0.0F};
}

//! Start a new tile whose valid scores have maximum tileMax (-inf if none is valid): raise the
//! running max and return the factor by which the caller must scale its accumulator.
GSWA_HD float onlineRescale(SoftmaxState& st, float tileMax)
{
    float const mNew = st.m > tileMax ? st.m : tileMax;
    float const alpha = st.m == negInf() ? 0.0F : gswaExp(st.m - mNew);
    st.l *= alpha;
    st.m = mNew;
    return alpha;
}

//! Weight of one key after onlineRescale: exp(score - m), 0 for masked keys.
GSWA_HD float onlineWeight(SoftmaxState const& st, float score, bool valid)
{
    return valid ? gswaExp(score - st.m) : 0.0F;
}

//! Add the sum of a tile's weights to the running sum (after onlineRescale for that tile).
GSWA_HD void onlineAddTileSum(SoftmaxState& st, float weightSum)
{
    st.l += weightSum;
}

//! Merge partial b into a (split-K combine). Returns a's and b's accumulator factors in ca, cb:
//! acc = ca * acc_a + cb * acc_b.
GSWA_HD SoftmaxState mergeStates(SoftmaxState a, SoftmaxState b, float& ca, float& cb)
{
    float const m = a.m > b.m ? a.m : b.m;
    ca = a.m == negInf() ? 0.0F : gswaExp(a.m - m);
    cb = b.m == negInf() ? 0.0F : gswaExp(b.m - m);
    return SoftmaxState{m, a.l * ca + b.l * cb};
}

//! Factor turning the accumulator into the attention output: 1 / l, or 0 if no key was valid.
GSWA_HD float finalizeFactor(SoftmaxState st)
{
    return st.l > 0.0F ? 1.0F / st.l : 0.0F;
}

// ---- gate ------------------------------------------------------------------------------------------

//! g = sigmoid(q . gate_weight[h] + gate_bias[h]) from the precomputed logit.
GSWA_HD float gateFromLogit(float logit)
{
    return 1.0F / (1.0F + gswaExp(-logit));
}

//! out = g * y_local + (1 - g) * y_global
GSWA_HD float gateBlend(float g, float yLocal, float yGlobal)
{
    return g * yLocal + (1.0F - g) * yGlobal;
}

// ---- index math (all tensors contiguous, row-major) -------------------------------------------------

//! Query vector index of (b, r, h, s) in query/output [B, R, Hq, S, D] (times D = element offset).
GSWA_HD int64_t queryVector(int32_t b, int32_t r, int32_t h, int32_t s, int32_t R, int32_t Hq, int32_t S)
{
    return ((static_cast<int64_t>(b) * R + r) * Hq + h) * S + s;
}

//! Row of key/value_global [B, Hkv, T, D] for (b, kvh, j).
GSWA_HD int64_t globalRow(int32_t b, int32_t kvh, int32_t j, int32_t Hkv, int32_t T)
{
    return (static_cast<int64_t>(b) * Hkv + kvh) * T + j;
}

//! Row of key/value_local [B, R - G, Hkv, W, D] for (b, local row lr = r - G, kvh, i); localRows = R - G.
GSWA_HD int64_t localRow(int32_t b, int32_t lr, int32_t kvh, int32_t i, int32_t localRows, int32_t Hkv, int32_t W)
{
    return ((static_cast<int64_t>(b) * localRows + lr) * Hkv + kvh) * W + i;
}

//! Decode packing: the u-th query vector of KV group (b, kvh), u in [0, R * nRep * S), s fastest.
//! All of them read the same shared-cache slice, so one block serves all of them (up to
//! decodeQueriesPerBlock) and loads each K/V tile once for all rows and heads.
GSWA_HD void decodeUnpack(int32_t u, int32_t nRep, int32_t S, int32_t kvh, int32_t& r, int32_t& h, int32_t& s)
{
    s = u % S;
    h = kvh * nRep + (u / S) % nRep;
    r = u / (S * nRep);
}

//! Prefill packing: the u-th query vector of (b, r, kvh), u in [0, nRep * S), s fastest, so a block's
//! queries are consecutive positions of one head (tight causal ranges for tile skipping).
GSWA_HD void prefillUnpack(int32_t u, int32_t nRep, int32_t S, int32_t kvh, int32_t& h, int32_t& s)
{
    s = u % S;
    h = kvh * nRep + u / S;
}

//! Workspace for decode partials: per query vector and split, (m, l) then acc[D], all fp32.
GSWA_HD int64_t decodeWorkspaceFloats(int64_t numQueryVectors, int32_t numSplits, int32_t headDim)
{
    return numQueryVectors * numSplits * (2 + static_cast<int64_t>(headDim));
}

//! Dynamic shared memory of an attention block with nq query vectors (layout: BlockSmem in the .cu):
//! key positions [32] and query positions [nq] (int64), queries [nq][D] and one K-or-V tile [32][D + 1] (fp32).
GSWA_HD size_t attentionSmemBytes(int32_t nq, int32_t headDim)
{
    return sizeof(int64_t) * static_cast<size_t>(kKeyTile + nq)
        + sizeof(float) * (static_cast<size_t>(nq) * headDim + static_cast<size_t>(kKeyTile) * (headDim + 1));
}

//! Query vectors per decode block for U query vectors per KV group: all of them if they fit in
//! kDecodeMaxQueriesPerBlock and the default 48 KiB of shared memory (no opt-in needed for decode).
GSWA_HD int32_t decodeQueriesPerBlock(int32_t numU, int32_t headDim)
{
    int32_t nq = numU < kDecodeMaxQueriesPerBlock ? numU : kDecodeMaxQueriesPerBlock;
    while (nq > 1 && attentionSmemBytes(nq, headDim) > kDefaultSmemBytes)
    {
        --nq;
    }
    return nq < 1 ? 1 : nq;
}

} // namespace gswa
} // namespace plt

#endif // PLT_GSWA_MATH_H

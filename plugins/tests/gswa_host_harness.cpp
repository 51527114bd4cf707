// Host-side check of the G-SWA kernels' math (gswaMath.h) on the shared test vectors.
//
// Build: g++ -std=c++17 -O2 -I<cuda>/include -I plugins/gatedSlidingWindowAttentionPlugin \
//            plugins/tests/gswa_host_harness.cpp -o gswa_host_harness
// Run:   gswa_host_harness <dir>
//   <dir>/manifest.txt: one case per line: name dtype B R Hq Hkv S D T W window scale
//   <dir>/<name>.<input>.bin: raw contract inputs (dtype bits, int64 positions), written by
//   tests/test_kernels.py from tests/data/gswa_vectors.safetensors.
// Writes <dir>/<name>.<path>.bin (raw output in the case's dtype) for every path:
//   plain            two-pass softmax per query (the obviously-correct path)
//   decode_splitsN   the decode kernels' decomposition: query groups x N cache splits, 32-key tiles
//                    with online softmax -> partials -> merge + per-slot local window + gate
//   prefill          the prefill kernel's decomposition: 16-query blocks, 32-key tiles up to the
//                    block's causal end, local tiles skipped outside the block's windows
// The pytest test compares every file with the torch reference's expected output.
#include "gswaMath.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using namespace plt::gswa;

namespace
{

struct Case
{
    std::string name, dtype;
    int B, R, Hq, Hkv, S, D, T, W, window;
    float scale;
};

template <typename E>
std::vector<E> readBin(std::string const& path, size_t count)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
    {
        throw std::runtime_error("cannot open " + path);
    }
    std::vector<E> out(count);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(count * sizeof(E)));
    if (f.gcount() != static_cast<std::streamsize>(count * sizeof(E)) || f.peek() != EOF)
    {
        throw std::runtime_error(path + ": size does not match the manifest shape");
    }
    return out;
}

template <typename E>
void writeBin(std::string const& path, std::vector<E> const& data)
{
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<char const*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(E)));
}

//! The case's inputs converted to fp32 with the kernels' toFloat, plus positions.
struct Inputs
{
    std::vector<float> q, kg, vg, kl, vl, gw, gb; // contract layouts, see gatedSlidingWindowAttentionKernel.h
    std::vector<int64_t> qpos, lpos;
};

template <typename T>
std::vector<float> readFloat(std::string const& path, size_t count)
{
    std::vector<T> raw = readBin<T>(path, count);
    std::vector<float> out(count);
    std::transform(raw.begin(), raw.end(), out.begin(), [](T x) { return toFloat(x); });
    return out;
}

template <typename T>
Inputs readInputs(std::string const& dir, Case const& c)
{
    std::string const pre = dir + "/" + c.name + ".";
    size_t const D = c.D;
    Inputs in;
    in.q = readFloat<T>(pre + "query.bin", size_t(c.B) * c.R * c.Hq * c.S * D);
    in.kg = readFloat<T>(pre + "key_global.bin", size_t(c.B) * c.Hkv * c.T * D);
    in.vg = readFloat<T>(pre + "value_global.bin", size_t(c.B) * c.Hkv * c.T * D);
    in.kl = readFloat<T>(pre + "key_local.bin", size_t(c.B) * c.R * c.Hkv * c.W * D);
    in.vl = readFloat<T>(pre + "value_local.bin", size_t(c.B) * c.R * c.Hkv * c.W * D);
    in.qpos = readBin<int64_t>(pre + "query_pos.bin", size_t(c.B) * c.S);
    in.lpos = readBin<int64_t>(pre + "local_pos.bin", size_t(c.B) * c.W);
    in.gw = readFloat<T>(pre + "gate_weight.bin", size_t(c.Hq) * D);
    in.gb = readFloat<T>(pre + "gate_bias.bin", size_t(c.Hq));
    return in;
}

float dot(float const* a, float const* b, int D)
{
    float s = 0.0F;
    for (int d = 0; d < D; ++d)
    {
        s += a[d] * b[d];
    }
    return s;
}

//! Online-softmax state of one query plus its accumulator, updated tile by tile like a warp does.
struct QueryAttention
{
    SoftmaxState st = emptyState();
    std::vector<float> acc;

    explicit QueryAttention(int D)
        : acc(D, 0.0F)
    {
    }

    //! One tile: keys k = 0..n-1 with rows key(k)/value(k) and validity valid(k).
    template <typename Key, typename Val, typename Valid>
    void tile(float const* q, int n, int D, float scale, Key key, Val value, Valid valid)
    {
        std::vector<float> score(n, negInf());
        float tileMax = negInf();
        for (int k = 0; k < n; ++k)
        {
            if (valid(k))
            {
                score[k] = scale * dot(q, key(k), D);
                tileMax = std::max(tileMax, score[k]);
            }
        }
        float const alpha = onlineRescale(st, tileMax);
        float sum = 0.0F;
        for (float& a : acc)
        {
            a *= alpha;
        }
        for (int k = 0; k < n; ++k)
        {
            float const w = onlineWeight(st, score[k], valid(k));
            sum += w;
            for (int d = 0; d < D && w != 0.0F; ++d)
            {
                acc[d] += w * value(k)[d];
            }
        }
        onlineAddTileSum(st, sum);
    }
};

struct Harness
{
    Case const& c;
    Inputs const& in;
    int nRep;

    float const* qRow(int64_t qv) const
    {
        return in.q.data() + qv * c.D;
    }
    float const* kgRow(int b, int kvh, int j) const
    {
        return in.kg.data() + globalRow(b, kvh, j, c.Hkv, c.T) * c.D;
    }
    float const* vgRow(int b, int kvh, int j) const
    {
        return in.vg.data() + globalRow(b, kvh, j, c.Hkv, c.T) * c.D;
    }
    float const* klRow(int b, int r, int kvh, int i) const
    {
        return in.kl.data() + localRow(b, r, kvh, i, c.R, c.Hkv, c.W) * c.D;
    }
    float const* vlRow(int b, int r, int kvh, int i) const
    {
        return in.vl.data() + localRow(b, r, kvh, i, c.R, c.Hkv, c.W) * c.D;
    }
    int64_t qpos(int b, int s) const
    {
        return in.qpos[int64_t(b) * c.S + s];
    }
    int64_t lpos(int b, int i) const
    {
        return in.lpos[int64_t(b) * c.W + i];
    }

    //! Gate and blend of one query vector into out (fp32 -> T with the kernels' fromFloat).
    template <typename T>
    void finish(std::vector<T>& out, int64_t qv, int h, SoftmaxState gst, std::vector<float> const& accG,
        SoftmaxState lst, std::vector<float> const& accL) const
    {
        float const gate = gateFromLogit(dot(qRow(qv), in.gw.data() + int64_t(h) * c.D, c.D) + in.gb[h]);
        float const fG = finalizeFactor(gst);
        float const fL = finalizeFactor(lst);
        for (int d = 0; d < c.D; ++d)
        {
            out[qv * c.D + d] = fromFloat<T>(gateBlend(gate, accL[d] * fL, accG[d] * fG));
        }
    }

    //! Plain path: full score rows, two-pass softmax, per query vector.
    template <typename T>
    std::vector<T> plain() const
    {
        std::vector<T> out(size_t(c.B) * c.R * c.Hq * c.S * c.D);
        for (int b = 0; b < c.B; ++b)
            for (int r = 0; r < c.R; ++r)
                for (int h = 0; h < c.Hq; ++h)
                    for (int s = 0; s < c.S; ++s)
                    {
                        int64_t const qv = queryVector(b, r, h, s, c.R, c.Hq, c.S);
                        int const kvh = h / nRep;
                        int64_t const t = qpos(b, s);
                        float y[2][256] = {};
                        for (int part = 0; part < 2; ++part) // 0 = global, 1 = local
                        {
                            int const n = part == 0 ? c.T : c.W;
                            std::vector<float> sc(n);
                            std::vector<bool> ok(n);
                            float mx = negInf();
                            for (int k = 0; k < n; ++k)
                            {
                                ok[k] = part == 0 ? globalKeyValid(k, t) : localKeyValid(lpos(b, k), t, c.window);
                                sc[k] = c.scale * dot(qRow(qv), part == 0 ? kgRow(b, kvh, k) : klRow(b, r, kvh, k), c.D);
                                mx = ok[k] ? std::max(mx, sc[k]) : mx;
                            }
                            double den = 0.0;
                            for (int k = 0; k < n; ++k)
                            {
                                if (!ok[k])
                                    continue;
                                float const e = std::exp(sc[k] - mx);
                                den += e;
                                float const* v = part == 0 ? vgRow(b, kvh, k) : vlRow(b, r, kvh, k);
                                for (int d = 0; d < c.D; ++d)
                                    y[part][d] += e * v[d];
                            }
                            for (int d = 0; d < c.D; ++d)
                                y[part][d] = den > 0.0 ? float(y[part][d] / den) : 0.0F;
                        }
                        float const gate = gateFromLogit(dot(qRow(qv), in.gw.data() + int64_t(h) * c.D, c.D) + in.gb[h]);
                        for (int d = 0; d < c.D; ++d)
                            out[qv * c.D + d] = fromFloat<T>(gateBlend(gate, y[1][d], y[0][d]));
                    }
        return out;
    }

    //! Decode path: gswaDecodeSplitKernel blocks then gswaDecodeCombineKernel warps.
    template <typename T>
    std::vector<T> decode(int numSplits) const
    {
        int64_t const numQv = int64_t(c.B) * c.R * c.Hq * c.S;
        // partials [numQv][numSplits] (m, l, acc[D]) as the workspace holds them
        std::vector<float> partials(decodeWorkspaceFloats(numQv, numSplits, c.D));
        int const nU = c.R * nRep * c.S;
        for (int split = 0; split < numSplits; ++split)
            for (int b = 0; b < c.B; ++b)
                for (int kvh = 0; kvh < c.Hkv; ++kvh)
                    for (int uBase = 0; uBase < nU; uBase += kQueriesPerBlock)
                    {
                        int const nQ = std::min(kQueriesPerBlock, nU - uBase);
                        int32_t maxCount = 0;
                        for (int q = 0; q < nQ; ++q)
                        {
                            int r, h, s;
                            decodeUnpack(uBase + q, nRep, c.S, kvh, r, h, s);
                            maxCount = std::max(maxCount, globalKeyCount(qpos(b, s), c.T));
                        }
                        int32_t begin, end;
                        splitKeyRange(c.T, numSplits, split, begin, end);
                        end = std::min(end, maxCount);
                        for (int q = 0; q < nQ; ++q)
                        {
                            int r, h, s;
                            decodeUnpack(uBase + q, nRep, c.S, kvh, r, h, s);
                            int64_t const qv = queryVector(b, r, h, s, c.R, c.Hq, c.S);
                            int64_t const t = qpos(b, s);
                            QueryAttention att(c.D);
                            for (int32_t tile = begin; tile < end; tile += kKeyTile)
                            {
                                int const n = std::min(kKeyTile, end - tile);
                                att.tile(qRow(qv), n, c.D, c.scale, [&](int k) { return kgRow(b, kvh, tile + k); },
                                    [&](int k) { return vgRow(b, kvh, tile + k); },
                                    [&](int k) { return globalKeyValid(tile + k, t); });
                            }
                            float* part = partials.data() + (qv * numSplits + split) * (2 + c.D);
                            part[0] = att.st.m;
                            part[1] = att.st.l;
                            std::copy(att.acc.begin(), att.acc.end(), part + 2);
                        }
                    }

        std::vector<T> out(size_t(numQv) * c.D);
        for (int64_t qv = 0; qv < numQv; ++qv)
        {
            // qv -> (b, r, h, s) of [B, R, Hq, S]
            int const s = int(qv % c.S), h = int((qv / c.S) % c.Hq);
            int const r = int((qv / (int64_t(c.S) * c.Hq)) % c.R), b = int(qv / (int64_t(c.S) * c.Hq * c.R));
            int const kvh = h / nRep;
            SoftmaxState gst = emptyState();
            std::vector<float> accG(c.D, 0.0F);
            for (int split = 0; split < numSplits; ++split)
            {
                float const* part = partials.data() + (qv * numSplits + split) * (2 + c.D);
                float ca, cb;
                gst = mergeStates(gst, SoftmaxState{part[0], part[1]}, ca, cb);
                for (int d = 0; d < c.D; ++d)
                    accG[d] = ca * accG[d] + cb * part[2 + d];
            }
            int64_t const t = qpos(b, s);
            SoftmaxState lst = emptyState();
            std::vector<float> accL(c.D, 0.0F);
            for (int slot = 0; slot < c.W; ++slot)
            {
                if (!localKeyValid(lpos(b, slot), t, c.window))
                    continue;
                float const score = c.scale * dot(qRow(qv), klRow(b, r, kvh, slot), c.D);
                float const alpha = onlineRescale(lst, score);
                float const w = onlineWeight(lst, score, true);
                onlineAddTileSum(lst, w);
                for (int d = 0; d < c.D; ++d)
                    accL[d] = alpha * accL[d] + w * vlRow(b, r, kvh, slot)[d];
            }
            finish(out, qv, h, gst, accG, lst, accL);
        }
        return out;
    }

    //! Prefill path: gswaPrefillKernel blocks.
    template <typename T>
    std::vector<T> prefill() const
    {
        std::vector<T> out(size_t(c.B) * c.R * c.Hq * c.S * c.D);
        int const nU = nRep * c.S;
        for (int b = 0; b < c.B; ++b)
            for (int r = 0; r < c.R; ++r)
                for (int kvh = 0; kvh < c.Hkv; ++kvh)
                    for (int uBase = 0; uBase < nU; uBase += kQueriesPerBlock)
                    {
                        int const nQ = std::min(kQueriesPerBlock, nU - uBase);
                        int64_t tMin = INT64_MAX, tMax = INT64_MIN;
                        for (int q = 0; q < nQ; ++q)
                        {
                            int h, s;
                            prefillUnpack(uBase + q, nRep, c.S, kvh, h, s);
                            tMin = std::min(tMin, qpos(b, s));
                            tMax = std::max(tMax, qpos(b, s));
                        }
                        int32_t const end = globalKeyCount(tMax, c.T);
                        for (int q = 0; q < nQ; ++q)
                        {
                            int h, s;
                            prefillUnpack(uBase + q, nRep, c.S, kvh, h, s);
                            int64_t const qv = queryVector(b, r, h, s, c.R, c.Hq, c.S);
                            int64_t const t = qpos(b, s);
                            QueryAttention glob(c.D), loc(c.D);
                            for (int32_t tile = 0; tile < end; tile += kKeyTile)
                            {
                                int const n = std::min(kKeyTile, end - tile);
                                glob.tile(qRow(qv), n, c.D, c.scale, [&](int k) { return kgRow(b, kvh, tile + k); },
                                    [&](int k) { return vgRow(b, kvh, tile + k); },
                                    [&](int k) { return globalKeyValid(tile + k, t); });
                            }
                            for (int32_t tile = 0; tile < c.W; tile += kKeyTile)
                            {
                                int const n = std::min(kKeyTile, c.W - tile);
                                int64_t pMin = INT64_MAX, pMax = -1;
                                for (int k = 0; k < n; ++k)
                                {
                                    int64_t const p = lpos(b, tile + k);
                                    if (p >= 0)
                                    {
                                        pMin = std::min(pMin, p);
                                        pMax = std::max(pMax, p);
                                    }
                                }
                                if (!localTileMayBeValid(pMin, pMax, tMin, tMax, c.window))
                                    continue;
                                loc.tile(qRow(qv), n, c.D, c.scale, [&](int k) { return klRow(b, r, kvh, tile + k); },
                                    [&](int k) { return vlRow(b, r, kvh, tile + k); },
                                    [&](int k) { return localKeyValid(lpos(b, tile + k), t, c.window); });
                            }
                            finish(out, qv, h, glob.st, glob.acc, loc.st, loc.acc);
                        }
                    }
        return out;
    }
};

template <typename T>
void runCase(std::string const& dir, Case const& c)
{
    Inputs const in = readInputs<T>(dir, c);
    Harness const hz{c, in, c.Hq / c.Hkv};
    std::string const pre = dir + "/" + c.name + ".";
    writeBin(pre + "plain.bin", hz.plain<T>());
    writeBin(pre + "prefill.bin", hz.prefill<T>());
    // The decode kernels' own split count, one split, and a count that leaves uneven/empty splits.
    for (int n : {decodeNumSplits(c.T), 1, 7})
    {
        writeBin(pre + "decode_splits" + std::to_string(n) + ".bin", hz.decode<T>(n));
    }
    std::printf("%s: ok (decodeNumSplits=%d)\n", c.name.c_str(), decodeNumSplits(c.T));
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s <dir with manifest.txt>\n", argv[0]);
        return 2;
    }
    try
    {
        std::string const dir = argv[1];
        std::ifstream manifest(dir + "/manifest.txt");
        if (!manifest)
        {
            throw std::runtime_error("cannot open " + dir + "/manifest.txt");
        }
        std::string line;
        while (std::getline(manifest, line))
        {
            if (line.empty())
                continue;
            std::istringstream ls(line);
            Case c;
            if (!(ls >> c.name >> c.dtype >> c.B >> c.R >> c.Hq >> c.Hkv >> c.S >> c.D >> c.T >> c.W >> c.window >> c.scale))
            {
                throw std::runtime_error("bad manifest line: " + line);
            }
            if (c.D < 1 || c.D > kMaxHeadDim || c.Hkv < 1 || c.Hq % c.Hkv != 0 || c.window < 1)
            {
                throw std::runtime_error("unsupported sizes in: " + line);
            }
            if (c.dtype == "float32")
                runCase<float>(dir, c);
            else if (c.dtype == "float16")
                runCase<__half>(dir, c);
            else if (c.dtype == "bfloat16")
                runCase<__nv_bfloat16>(dir, c);
            else
                throw std::runtime_error("unknown dtype " + c.dtype);
        }
    }
    catch (std::exception const& e)
    {
        std::fprintf(stderr, "gswa_host_harness: %s\n", e.what());
        return 1;
    }
    return 0;
}

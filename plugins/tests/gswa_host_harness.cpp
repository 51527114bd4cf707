// Runs the real G-SWA CUDA kernels on the CPU (plugins/tests/cuda_cpu_model.h) through the project's
// launchers, next to a float64 reference, on cases written by tests/test_kernels.py.
//
// Build: tests/test_kernels.py::harness_command (also an AddressSanitizer + UBSan variant); in short
//   g++ -std=c++17 -O2 -I<cuda>/include -I<plugin dir> -I plugins/tests -include cuda_cpu_model.h
//       -x c++ gatedSlidingWindowAttentionKernel.cu -x none cuda_cpu_model.cpp gswa_host_harness.cpp
// Run:   gswa_host_harness <dir> [manifest file name, default manifest.txt]
//   manifest: one case per line: name dtype B R G Hq Hkv S D T W window scale atol rtol
//   <dir>/<name>.<input>.bin: raw contract inputs (dtype bits, int64 positions).
// Writes, per case:
//   <name>.reference.bin      float64 reference (the contract's semantics, every sum in double)
//   <name>.<path>.bin         kernel output in the case's dtype, for every path:
//     auto                    launchGswa (decode when S <= kDecodeMaxQueries, else prefill)
//     prefill                 launchGswaPrefill
//     decode_splitsN          launchGswaDecode with N splits (the kernels' own count, 1 and 7)
//   <name>.launches.txt       the kernels each path launched: "path kernel gx gy gz threads smem"
// Every path runs in three thread/block resume orders with two shared-memory fill patterns; the
// outputs must be bitwise equal or the harness fails. A launcher error fails the harness (exit 1);
// an output farther than atol + rtol * |ref| from the float64 reference too (exit 3, after all cases).
#include "cuda_cpu_model.h" // first: it defines what CUDA's headers must not (also force-included)

#include "gatedSlidingWindowAttentionKernel.h"
#include "gswaMath.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
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
    int B, R, G, Hq, Hkv, S, D, T, W, window;
    float scale;
    double atol, rtol; // allowed |out - ref| <= atol + rtol * |ref|
};

int gMismatches = 0;

//! Reports (and counts) a path whose output is not within the case's tolerance of the reference.
template <typename T>
void checkAgainst(Case const& c, std::string const& path, std::vector<T> const& out, std::vector<double> const& ref)
{
    double worst = 0.0;
    size_t at = 0;
    bool bad = false;
    for (size_t i = 0; i < out.size(); ++i)
    {
        double const got = static_cast<double>(toFloat(out[i]));
        double const err = std::fabs(got - ref[i]);
        if (!(err <= c.atol + c.rtol * std::fabs(ref[i]))) // NaN fails too
        {
            bad = true;
            if (!(err <= worst))
            {
                worst = err;
                at = i;
            }
        }
    }
    if (bad)
    {
        ++gMismatches;
        std::printf("MISMATCH %s/%s: |out - ref| = %.3g at element %zu (out %.6g, ref %.6g), atol %.3g rtol %.3g\n",
            c.name.c_str(), path.c_str(), worst, at, static_cast<double>(toFloat(out[at])), ref[at], c.atol, c.rtol);
    }
}

std::vector<unsigned char> readBytes(std::string const& path, size_t bytes)
{
    std::ifstream f(path, std::ios::binary);
    if (!f)
    {
        throw std::runtime_error("cannot open " + path);
    }
    std::vector<unsigned char> out(bytes);
    f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(bytes));
    if (f.gcount() != static_cast<std::streamsize>(bytes) || f.peek() != EOF)
    {
        throw std::runtime_error(path + ": size does not match the manifest shape");
    }
    return out;
}

template <typename E>
std::vector<E> readBin(std::string const& path, size_t count)
{
    std::vector<unsigned char> const raw = readBytes(path, count * sizeof(E));
    std::vector<E> out(count);
    std::memcpy(out.data(), raw.data(), raw.size());
    return out;
}

template <typename E>
void writeBin(std::string const& path, std::vector<E> const& data)
{
    std::string const tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        f.write(reinterpret_cast<char const*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(E)));
        if (!f)
        {
            throw std::runtime_error("cannot write " + tmp);
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
    {
        throw std::runtime_error("cannot rename " + tmp);
    }
}

template <typename T>
struct Inputs
{
    std::vector<T> q, kg, vg, kl, vl, gw, gb; // layouts: gatedSlidingWindowAttentionKernel.h
    std::vector<int64_t> qpos, lpos;
};

template <typename T>
Inputs<T> readInputs(std::string const& dir, Case const& c)
{
    std::string const pre = dir + "/" + c.name + ".";
    size_t const D = c.D;
    Inputs<T> in;
    in.q = readBin<T>(pre + "query.bin", size_t(c.B) * c.R * c.Hq * c.S * D);
    in.kg = readBin<T>(pre + "key_global.bin", size_t(c.B) * c.Hkv * c.T * D);
    in.vg = readBin<T>(pre + "value_global.bin", size_t(c.B) * c.Hkv * c.T * D);
    in.kl = readBin<T>(pre + "key_local.bin", size_t(c.B) * (c.R - c.G) * c.Hkv * c.W * D);
    in.vl = readBin<T>(pre + "value_local.bin", size_t(c.B) * (c.R - c.G) * c.Hkv * c.W * D);
    in.qpos = readBin<int64_t>(pre + "query_pos.bin", size_t(c.B) * c.S);
    in.lpos = readBin<int64_t>(pre + "local_pos.bin", size_t(c.B) * c.W);
    in.gw = readBin<T>(pre + "gate_weight.bin", size_t(c.Hq) * D);
    in.gb = readBin<T>(pre + "gate_bias.bin", size_t(c.Hq));
    return in;
}

// ---- float64 reference: the contract's semantics, written out plainly ---------------------------------

template <typename T>
double f64(T x)
{
    return static_cast<double>(toFloat(x));
}

//! softmax(scale * q . k_i) @ v over the valid keys i (0 if none); rows of k/v are D apart.
template <typename T, typename Valid>
void attend64(T const* q, T const* k, T const* v, int n, int D, double scale, Valid valid, double* y)
{
    std::vector<double> score(n);
    double mx = -INFINITY;
    for (int i = 0; i < n; ++i)
    {
        if (valid(i))
        {
            double s = 0.0;
            for (int d = 0; d < D; ++d)
            {
                s += f64(q[d]) * f64(k[int64_t(i) * D + d]);
            }
            score[i] = scale * s;
            mx = std::max(mx, score[i]);
        }
    }
    double den = 0.0;
    std::fill(y, y + D, 0.0);
    for (int i = 0; i < n; ++i)
    {
        if (!valid(i))
        {
            continue;
        }
        double const e = std::exp(score[i] - mx);
        den += e;
        for (int d = 0; d < D; ++d)
        {
            y[d] += e * f64(v[int64_t(i) * D + d]);
        }
    }
    for (int d = 0; d < D; ++d)
    {
        y[d] = den > 0.0 ? y[d] / den : 0.0;
    }
}

template <typename T>
std::vector<double> reference(Case const& c, Inputs<T> const& in)
{
    int const D = c.D;
    int const nRep = c.Hq / c.Hkv;
    std::vector<double> out(size_t(c.B) * c.R * c.Hq * c.S * D);
    std::vector<double> yG(D), yL(D);
    for (int b = 0; b < c.B; ++b)
        for (int r = 0; r < c.R; ++r)
            for (int h = 0; h < c.Hq; ++h)
                for (int s = 0; s < c.S; ++s)
                {
                    int const kvh = h / nRep;
                    int64_t const t = in.qpos[int64_t(b) * c.S + s];
                    int64_t const qv = ((int64_t(b) * c.R + r) * c.Hq + h) * c.S + s;
                    T const* q = in.q.data() + qv * D;
                    int64_t const g0 = (int64_t(b) * c.Hkv + kvh) * c.T * D;
                    attend64(q, in.kg.data() + g0, in.vg.data() + g0, c.T, D, c.scale,
                        [&](int j) { return j <= t; }, yG.data());
                    double* o = out.data() + qv * D;
                    if (r < c.G)
                    {
                        std::copy(yG.begin(), yG.end(), o); // global-only row: g = 0
                        continue;
                    }
                    int64_t const l0 = ((int64_t(b) * (c.R - c.G) + (r - c.G)) * c.Hkv + kvh) * c.W * D;
                    attend64(q, in.kl.data() + l0, in.vl.data() + l0, c.W, D, c.scale,
                        [&](int i) {
                            int64_t const p = in.lpos[int64_t(b) * c.W + i];
                            return p >= 0 && p <= t && p > t - c.window;
                        },
                        yL.data());
                    double logit = f64(in.gb[h]);
                    for (int d = 0; d < D; ++d)
                    {
                        logit += f64(q[d]) * f64(in.gw[int64_t(h) * D + d]);
                    }
                    double const g = 1.0 / (1.0 + std::exp(-logit));
                    for (int d = 0; d < D; ++d)
                    {
                        o[d] = g * yL[d] + (1.0 - g) * yG[d];
                    }
                }
    return out;
}

// ---- the kernels through their launchers ------------------------------------------------------------------

GswaDims dimsOf(Case const& c)
{
    GswaDims d{};
    d.batch = c.B;
    d.rows = c.R;
    d.heads = c.Hq;
    d.kvHeads = c.Hkv;
    d.queries = c.S;
    d.headDim = c.D;
    d.cacheLen = c.T;
    d.localSlots = c.W;
    d.window = c.window;
    d.scale = c.scale;
    d.globalRows = c.G;
    return d;
}

//! Runs one path (a launcher call) in every resume order; returns its output, bitwise equal in all.
template <typename T, typename Launch>
std::vector<T> runPath(Case const& c, std::string const& path, size_t outCount, size_t workspaceBytes, Launch launch,
    std::string& launches)
{
    struct Run
    {
        cudacpu::ResumeOrder order;
        int fill;
        char const* what;
    };
    Run const runs[] = {
        {cudacpu::ResumeOrder::kForward, 0, "forward order, 0xFF fill"},
        {cudacpu::ResumeOrder::kReverse, 1, "reverse order, 0x7FF40000 fill"},
        {cudacpu::ResumeOrder::kShuffled, 1, "shuffled order, 0x7FF40000 fill"},
    };
    std::vector<T> first;
    for (Run const& run : runs)
    {
        cudacpu::Options o;
        o.order = run.order;
        o.fillPattern = run.fill;
        o.seed = 12345;
        cudacpu::setOptions(o);
        cudacpu::clearLaunchLog();
        std::vector<T> out(outCount);
        std::memset(static_cast<void*>(out.data()), 0xFF, out.size() * sizeof(T)); // unwritten outputs stay NaN
        std::vector<unsigned char> ws(workspaceBytes);
        if (!ws.empty())
        {
            std::memset(ws.data(), 0xFF, ws.size()); // unwritten partials are NaN
        }
        cudaError_t const err = launch(out.data(), ws.empty() ? nullptr : ws.data(), ws.size());
        if (err != cudaSuccess)
        {
            throw std::runtime_error(c.name + "/" + path + ": launcher returned " + std::to_string(int(err)) + " ("
                + cudaGetErrorString(err) + ")");
        }
        if (first.empty())
        {
            first = out;
            for (int i = 0; i < cudacpu::launchCount(); ++i)
            {
                cudacpu::LaunchRecord const& r = cudacpu::launchRecord(i);
                launches += path + " " + r.kernel + " " + std::to_string(r.grid.x) + " " + std::to_string(r.grid.y)
                    + " " + std::to_string(r.grid.z) + " " + std::to_string(r.block.x * r.block.y * r.block.z) + " "
                    + std::to_string(r.smem) + "\n";
            }
        }
        else if (std::memcmp(first.data(), out.data(), out.size() * sizeof(T)) != 0)
        {
            throw std::runtime_error(c.name + "/" + path + ": output differs between resume orders (" + runs[0].what
                + " vs " + run.what + "): a race or a read of uninitialised shared memory");
        }
    }
    return first;
}

template <typename T>
void runCase(std::string const& dir, Case const& c)
{
    Inputs<T> const in = readInputs<T>(dir, c);
    std::string const pre = dir + "/" + c.name + ".";
    std::vector<double> const ref = reference(c, in);
    writeBin(pre + "reference.bin", ref);
    auto emit = [&](std::string const& path, std::vector<T> const& out) {
        checkAgainst(c, path, out, ref);
        writeBin(pre + path + ".bin", out);
    };

    GswaDims const dims = dimsOf(c);
    if (char const* msg = gswaCheckDims(dims))
    {
        throw std::runtime_error(c.name + ": " + msg);
    }
    if (cudaError_t const err = gswaPrepareKernels(c.D); err != cudaSuccess) // the plugin's configure-time call
    {
        throw std::runtime_error(c.name + ": gswaPrepareKernels failed: " + cudaGetErrorString(err));
    }
    size_t const outCount = size_t(c.B) * c.R * c.Hq * c.S * c.D;
    std::string launches;
    Inputs<T> const& i = in;

    emit("auto",
        runPath<T>(c, "auto", outCount, gswaDecodeWorkspaceBytes(dims),
            [&](T* out, void* ws, size_t wsBytes) {
                return launchGswa<T>(i.q.data(), i.kg.data(), i.vg.data(), i.kl.data(), i.vl.data(), i.qpos.data(),
                    i.lpos.data(), i.gw.data(), i.gb.data(), out, dims, ws, wsBytes, nullptr);
            },
            launches));
    emit("prefill",
        runPath<T>(c, "prefill", outCount, 0,
            [&](T* out, void*, size_t) {
                return launchGswaPrefill<T>(i.q.data(), i.kg.data(), i.vg.data(), i.kl.data(), i.vl.data(),
                    i.qpos.data(), i.lpos.data(), i.gw.data(), i.gb.data(), out, dims, nullptr);
            },
            launches));
    // The kernels' own split count, one split, and a count that leaves uneven or empty splits.
    std::vector<int> splitCounts{decodeNumSplits(c.T)};
    for (int n : {1, 7})
    {
        if (n != splitCounts[0])
        {
            splitCounts.push_back(n);
        }
    }
    for (int n : splitCounts)
    {
        int64_t const qvs = int64_t(c.B) * c.R * c.Hq * c.S;
        size_t const wsBytes = sizeof(float) * size_t(decodeWorkspaceFloats(qvs, n, c.D));
        std::string const path = "decode_splits" + std::to_string(n);
        emit(path,
            runPath<T>(c, path, outCount, wsBytes,
                [&](T* out, void* ws, size_t bytes) {
                    return launchGswaDecode<T>(i.q.data(), i.kg.data(), i.vg.data(), i.kl.data(), i.vl.data(),
                        i.qpos.data(), i.lpos.data(), i.gw.data(), i.gb.data(), out, dims, n, ws, bytes, nullptr);
                },
                launches));
    }
    std::ofstream(pre + "launches.txt") << launches;
    std::printf("%s: ok\n", c.name.c_str());
    std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv)
{
    if (argc < 2 || argc > 3)
    {
        std::fprintf(stderr, "usage: %s <dir> [manifest file in dir, default manifest.txt]\n", argv[0]);
        return 2;
    }
    try
    {
        std::string const dir = argv[1];
        std::string const manifestPath = dir + "/" + (argc == 3 ? argv[2] : "manifest.txt");
        std::ifstream manifest(manifestPath);
        if (!manifest)
        {
            throw std::runtime_error("cannot open " + manifestPath);
        }
        std::string line;
        while (std::getline(manifest, line))
        {
            if (line.empty())
            {
                continue;
            }
            std::istringstream ls(line);
            Case c;
            if (!(ls >> c.name >> c.dtype >> c.B >> c.R >> c.G >> c.Hq >> c.Hkv >> c.S >> c.D >> c.T >> c.W >> c.window
                    >> c.scale >> c.atol >> c.rtol))
            {
                throw std::runtime_error("bad manifest line: " + line);
            }
            if (c.G < 0 || c.G > c.R || c.Hkv < 1 || c.Hq % c.Hkv != 0)
            {
                throw std::runtime_error("inconsistent sizes in: " + line);
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
    if (gMismatches > 0)
    {
        std::fprintf(stderr, "gswa_host_harness: %d path(s) outside the tolerance of the float64 reference\n",
            gMismatches);
        return 3;
    }
    return 0;
}

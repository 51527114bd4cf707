// CPU execution model of CUDA: fibers, block barrier, warp rendezvous, shared memory, launch checks.
// Interface and semantics: cuda_cpu_model.h and plugins/tests/README.md.
#include "cuda_cpu_model.h"

#include <sys/mman.h>
#include <unistd.h>

#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define CUDACPU_ASAN 1
#else
#define CUDACPU_ASAN 0
#endif

#if !defined(__x86_64__)
#error "cuda_cpu_model.cpp: the fiber switch is written for x86-64"
#endif

// Saves the callee-saved registers on the current stack, stores the stack pointer in *save, and
// continues on the stack `to` (a stack saved by this function or prepared by newFiberStack).
extern "C" void cudacpu_switch(void** save, void* to);
asm(R"(
    .text
    .globl cudacpu_switch
    .type cudacpu_switch, @function
cudacpu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudacpu_switch, .-cudacpu_switch
)");

extern "C" char __start_cudacpu_shared[] __attribute__((weak));
extern "C" char __stop_cudacpu_shared[] __attribute__((weak));

namespace cudacpu
{

uint3 gThreadIdx;
uint3 gBlockIdx;
dim3 gBlockDim;
dim3 gGridDim;

namespace
{

constexpr size_t kStackBytes = CUDACPU_ASAN ? 512 * 1024 : 128 * 1024;
constexpr size_t kDefaultSmemLimit = 48 * 1024;

Options gOptions;
std::vector<LaunchRecord> gLaunches;
cudaError_t gLastError = cudaSuccess;
std::map<void const*, size_t> gSmemOptIn; // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize

enum class State
{
    kRunnable,
    kAtBarrier,
    kAtWarpOp,
    kExited,
};

struct Fiber
{
    void* sp = nullptr;
    unsigned char* stack = nullptr; // lowest usable byte (a PROT_NONE guard page lies below)
    State state = State::kRunnable;
    int line = 0;
    char const* file = "";
    WarpOp op = WarpOp::kSync;
    unsigned mask = 0;
    int arg = 0;
    int width = 32;
    uint64_t bits = 0;
    uint64_t result = 0;
    uint3 idx{};
    void* fakeStack = nullptr; // ASan bookkeeping
};

struct Block
{
    char const* kernel = "";
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    int nThreads = 0;
    std::vector<Fiber> fibers;
    void* schedulerSp = nullptr;
    Fiber* current = nullptr;
    void const* schedulerStackBottom = nullptr; // ASan
    size_t schedulerStackSize = 0;
    void* schedulerFake = nullptr;
    unsigned char* smem = nullptr; // dynamic shared memory of the launch
    size_t smemBytes = 0;
    unsigned char* smemSlackEnd = nullptr; // canary bytes [smem + smemBytes, smemSlackEnd)
};

Block gBlock;
uint32_t gRng = 1;

uint32_t nextRandom()
{
    gRng ^= gRng << 13;
    gRng ^= gRng >> 17;
    gRng ^= gRng << 5;
    return gRng;
}

std::string where(Fiber const& f)
{
    char buf[512];
    char const* what = "";
    switch (f.state)
    {
    case State::kRunnable: what = "running"; break;
    case State::kExited: what = "exited"; break;
    case State::kAtBarrier: what = "at __syncthreads"; break;
    case State::kAtWarpOp:
        what = f.op == WarpOp::kSync ? "at __syncwarp"
                                     : (f.op == WarpOp::kBallot ? "at __ballot_sync" : "at __shfl*_sync");
        break;
    }
    if (f.state == State::kAtBarrier || f.state == State::kAtWarpOp)
    {
        std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) %s %s:%d mask 0x%08x", f.idx.x, f.idx.y, f.idx.z, what,
            f.file, f.line, f.mask);
    }
    else
    {
        std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) %s", f.idx.x, f.idx.y, f.idx.z, what);
    }
    return buf;
}

[[noreturn]] void fail(char const* fmt, ...)
{
    std::fprintf(stderr, "cuda_cpu_model: kernel %s block (%u,%u,%u): ", gBlock.kernel, gBlockIdx.x, gBlockIdx.y,
        gBlockIdx.z);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
    std::fflush(stderr);
    std::abort();
}

void fillPattern(unsigned char* p, size_t n)
{
    if (gOptions.fillPattern == 0)
    {
        std::memset(p, 0xFF, n);
        return;
    }
    unsigned char const word[4] = {0x00, 0x00, 0xF4, 0x7F}; // 0x7FF40000 little-endian
    for (size_t i = 0; i < n; ++i)
    {
        p[i] = word[(reinterpret_cast<uintptr_t>(p + i)) & 3];
    }
}

// ---- fibers -------------------------------------------------------------------------------------------

[[noreturn]] void fiberMain();

void prepareStack(Fiber& f)
{
    // Top of the stack, 16-byte aligned: [top-8] fake return address of fiberMain, [top-16] fiberMain
    // (popped by cudacpu_switch's ret), then the six callee-saved registers.
    auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t{15};
    auto* sp = reinterpret_cast<void**>(top);
    *--sp = nullptr;
    *--sp = reinterpret_cast<void*>(&fiberMain);
    for (int i = 0; i < 6; ++i)
    {
        *--sp = nullptr;
    }
    f.sp = sp;
}

void switchToFiber(Fiber& f)
{
    gBlock.current = &f;
    gThreadIdx = f.idx;
#if CUDACPU_ASAN
    __sanitizer_start_switch_fiber(&gBlock.schedulerFake, f.stack, kStackBytes);
#endif
    cudacpu_switch(&gBlock.schedulerSp, f.sp);
#if CUDACPU_ASAN
    __sanitizer_finish_switch_fiber(gBlock.schedulerFake, nullptr, nullptr);
#endif
    gBlock.current = nullptr;
}

//! Called on a fiber: back to the scheduler until it resumes this fiber (never, once exited).
void yieldToScheduler()
{
    Fiber& f = *gBlock.current;
#if CUDACPU_ASAN
    __sanitizer_start_switch_fiber(f.state == State::kExited ? nullptr : &f.fakeStack, gBlock.schedulerStackBottom,
        gBlock.schedulerStackSize);
#endif
    cudacpu_switch(&f.sp, gBlock.schedulerSp);
#if CUDACPU_ASAN
    __sanitizer_finish_switch_fiber(f.fakeStack, nullptr, nullptr);
#endif
}

void fiberMain()
{
#if CUDACPU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &gBlock.schedulerStackBottom, &gBlock.schedulerStackSize);
#endif
    gBlock.body(gBlock.ctx);
    gBlock.current->state = State::kExited;
    yieldToScheduler();
    std::abort(); // unreachable: an exited fiber is never resumed
}

std::vector<unsigned char*> gStacks; // pool, grows to the largest block seen

unsigned char* stackFor(int i)
{
    long const page = sysconf(_SC_PAGESIZE);
    while (static_cast<int>(gStacks.size()) <= i)
    {
        size_t const total = kStackBytes + page;
        void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
        {
            std::fprintf(stderr, "cuda_cpu_model: cannot map a fiber stack\n");
            std::abort();
        }
        mprotect(m, page, PROT_NONE); // overflow guard
        gStacks.push_back(static_cast<unsigned char*>(m) + page);
    }
    return gStacks[i];
}

// ---- warp rendezvous ----------------------------------------------------------------------------------

char const* opName(WarpOp op)
{
    switch (op)
    {
    case WarpOp::kIdx: return "__shfl_sync";
    case WarpOp::kUp: return "__shfl_up_sync";
    case WarpOp::kDown: return "__shfl_down_sync";
    case WarpOp::kXor: return "__shfl_xor_sync";
    case WarpOp::kSync: return "__syncwarp";
    case WarpOp::kBallot: return "__ballot_sync";
    }
    return "?";
}

//! Source lane of `lane` for a shuffle (CUDA's arithmetic within `width`-lane subsections), or
//! -1 when the lane keeps its own value.
int sourceLane(WarpOp op, int lane, int arg, int width)
{
    int const segStart = lane & ~(width - 1);
    int const segEnd = segStart + width; // exclusive
    switch (op)
    {
    case WarpOp::kIdx: return segStart + (arg & (width - 1));
    case WarpOp::kUp: return lane - arg >= segStart ? lane - arg : -1;
    case WarpOp::kDown: return lane + arg < segEnd ? lane + arg : -1;
    case WarpOp::kXor:
    {
        int const src = lane ^ arg;
        return src < segEnd ? src : -1; // earlier subsections readable, later ones give the own value
    }
    default: return -1;
    }
}

//! Releases every complete warp-op group; fails on a group that can never complete.
bool resolveWarpOps()
{
    bool progress = false;
    int const n = gBlock.nThreads;
    std::vector<Fiber>& fs = gBlock.fibers;
    for (int t = 0; t < n; ++t)
    {
        Fiber const& f = fs[t];
        if (f.state != State::kAtWarpOp)
        {
            continue;
        }
        int const warpBase = t & ~31;
        int const lane = t - warpBase;
        if (((f.mask >> lane) & 1U) == 0)
        {
            fail("%s at %s:%d with mask 0x%08x that does not name the calling lane %d", opName(f.op), f.file, f.line,
                f.mask, lane);
        }
        if (f.op != WarpOp::kSync && f.op != WarpOp::kBallot
            && (f.width < 1 || f.width > 32 || (f.width & (f.width - 1)) != 0))
        {
            fail("%s at %s:%d: width %d is not a power of two in [1, 32]", opName(f.op), f.file, f.line, f.width);
        }
        for (int j = 0; j < 32; ++j)
        {
            if (((f.mask >> j) & 1U) == 0)
            {
                continue;
            }
            if (warpBase + j >= n)
            {
                fail("%s at %s:%d (lane %d): mask 0x%08x names lane %d, which does not exist (block of %d threads)",
                    opName(f.op), f.file, f.line, lane, f.mask, j, n);
            }
            Fiber const& g = fs[warpBase + j];
            if (g.state == State::kExited)
            {
                fail("%s at %s:%d (lane %d): lane %d named in mask 0x%08x has exited", opName(f.op), f.file, f.line,
                    lane, j, f.mask);
            }
            if (g.state != State::kAtWarpOp || g.op != f.op || g.line != f.line || std::strcmp(g.file, f.file) != 0)
            {
                fail("%s at %s:%d (lane %d): lane %d named in the mask waits elsewhere: %s", opName(f.op), f.file,
                    f.line, lane, j, where(g).c_str());
            }
            if (g.mask != f.mask)
            {
                fail("%s at %s:%d: lanes %d and %d pass different masks 0x%08x / 0x%08x", opName(f.op), f.file, f.line,
                    lane, j, f.mask, g.mask);
            }
        }
        // Complete group: compute every member's result, then release them.
        unsigned const mask = f.mask;
        uint64_t ballot = 0;
        for (int j = 0; j < 32; ++j)
        {
            if ((mask >> j) & 1U)
            {
                ballot |= static_cast<uint64_t>(fs[warpBase + j].bits != 0) << j;
            }
        }
        for (int j = 0; j < 32; ++j)
        {
            if (((mask >> j) & 1U) == 0)
            {
                continue;
            }
            Fiber& g = fs[warpBase + j];
            if (g.op == WarpOp::kBallot)
            {
                g.result = ballot;
            }
            else if (g.op == WarpOp::kSync)
            {
                g.result = 0;
            }
            else
            {
                int const src = sourceLane(g.op, j, g.arg, g.width);
                if (src < 0)
                {
                    g.result = g.bits;
                }
                else if (((mask >> src) & 1U) == 0)
                {
                    fail("%s at %s:%d: lane %d reads lane %d, which is not in mask 0x%08x", opName(g.op), g.file,
                        g.line, j, src, mask);
                }
                else
                {
                    g.result = fs[warpBase + src].bits;
                }
            }
        }
        for (int j = 0; j < 32; ++j)
        {
            if ((mask >> j) & 1U)
            {
                fs[warpBase + j].state = State::kRunnable;
            }
        }
        progress = true;
    }
    return progress;
}

//! Releases the block barrier when every thread waits there (at one call site).
bool resolveBarrier()
{
    Fiber const* first = nullptr;
    int exited = 0;
    for (Fiber const& f : gBlock.fibers)
    {
        if (f.state == State::kExited)
        {
            ++exited;
            continue;
        }
        if (f.state != State::kAtBarrier)
        {
            return false;
        }
        if (first == nullptr)
        {
            first = &f;
        }
        else if (f.line != first->line || std::strcmp(f.file, first->file) != 0)
        {
            fail("__syncthreads at different call sites: %s and %s", where(*first).c_str(), where(f).c_str());
        }
    }
    if (first == nullptr)
    {
        return false; // all exited
    }
    if (exited > 0)
    {
        fail("%d thread(s) exited while the others wait at __syncthreads %s:%d (a barrier in divergent code)", exited,
            first->file, first->line);
    }
    for (Fiber& f : gBlock.fibers)
    {
        f.state = State::kRunnable;
    }
    return true;
}

[[noreturn]] void deadlock()
{
    std::string states;
    int shown = 0;
    for (Fiber const& f : gBlock.fibers)
    {
        if (f.state != State::kExited && shown++ < 8)
        {
            states += "\n  " + where(f);
        }
    }
    fail("deadlock: no thread can continue%s", states.c_str());
}

void runBlock(std::vector<int>& order)
{
    int const n = gBlock.nThreads;
    for (int t = 0; t < n; ++t)
    {
        Fiber& f = gBlock.fibers[t];
        f = Fiber{};
        f.stack = stackFor(t);
#if CUDACPU_ASAN
        ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackBytes);
#endif
        f.idx = uint3{static_cast<unsigned>(t % gBlockDim.x), static_cast<unsigned>((t / gBlockDim.x) % gBlockDim.y),
            static_cast<unsigned>(t / (gBlockDim.x * gBlockDim.y))};
        prepareStack(f);
    }
    for (;;)
    {
        if (gOptions.order == ResumeOrder::kShuffled)
        {
            for (int i = n - 1; i > 0; --i)
            {
                std::swap(order[i], order[nextRandom() % (i + 1)]);
            }
        }
        for (int t : order)
        {
            if (gBlock.fibers[t].state == State::kRunnable)
            {
                switchToFiber(gBlock.fibers[t]);
            }
        }
        bool allExited = true;
        for (Fiber const& f : gBlock.fibers)
        {
            allExited = allExited && f.state == State::kExited;
        }
        if (allExited)
        {
            return;
        }
        if (!resolveWarpOps() && !resolveBarrier())
        {
            deadlock();
        }
    }
}

void checkSlack()
{
    for (unsigned char* p = gBlock.smem + gBlock.smemBytes; p < gBlock.smemSlackEnd; ++p)
    {
        unsigned char expect;
        if (gOptions.fillPattern == 0)
        {
            expect = 0xFF;
        }
        else
        {
            unsigned char const word[4] = {0x00, 0x00, 0xF4, 0x7F};
            expect = word[reinterpret_cast<uintptr_t>(p) & 3];
        }
        if (*p != expect)
        {
            fail("write at byte %td of dynamic shared memory, which has only %zu bytes", p - gBlock.smem,
                gBlock.smemBytes);
        }
    }
}

//! Dynamic shared memory of exactly `bytes` (16-byte aligned). Without ASan it ends at most 15
//! canary bytes before a PROT_NONE page; with ASan it is an exact heap block.
struct SmemAllocation
{
    unsigned char* base = nullptr;
    size_t mapped = 0;
    void* heap = nullptr;

    unsigned char* allocate(size_t bytes, unsigned char*& slackEnd)
    {
#if CUDACPU_ASAN
        if (posix_memalign(&heap, 16, bytes == 0 ? 1 : bytes) != 0)
        {
            std::abort();
        }
        slackEnd = static_cast<unsigned char*>(heap) + bytes;
        return static_cast<unsigned char*>(heap);
#else
        size_t const page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        size_t const rounded = (bytes + 15) & ~size_t{15};
        size_t const dataPages = (rounded + page - 1) / page;
        mapped = (dataPages + 1) * page;
        void* m = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
        {
            std::abort();
        }
        base = static_cast<unsigned char*>(m);
        unsigned char* guard = base + dataPages * page;
        mprotect(guard, page, PROT_NONE);
        slackEnd = guard;
        return guard - rounded;
#endif
    }

    ~SmemAllocation()
    {
        if (base != nullptr)
        {
            munmap(base, mapped);
        }
        std::free(heap);
    }
};

unsigned char* gSmemHi = nullptr; // end of the current launch's dynamic shared memory

#if !CUDACPU_ASAN
void onSegv(int sig, siginfo_t* info, void*)
{
    auto* addr = static_cast<unsigned char*>(info->si_addr);
    char const* what = "";
    if (gSmemHi != nullptr && addr >= gSmemHi && addr < gSmemHi + 65536)
    {
        what = " (past the end of dynamic shared memory)";
    }
    for (unsigned char* s : gStacks)
    {
        if (addr >= s - 4096 && addr < s)
        {
            what = " (fiber stack overflow)";
        }
    }
    char buf[256];
    int const len = std::snprintf(buf, sizeof buf,
        "cuda_cpu_model: kernel %s block (%u,%u,%u) thread (%u,%u,%u): %s at %p%s\n",
        gBlock.kernel, gBlockIdx.x, gBlockIdx.y, gBlockIdx.z, gThreadIdx.x, gThreadIdx.y, gThreadIdx.z,
        sig == SIGSEGV ? "segmentation fault" : "bus error", info->si_addr, what);
    if (len > 0)
    {
        ssize_t ignored = write(2, buf, static_cast<size_t>(len));
        (void) ignored;
    }
    signal(SIGABRT, SIG_DFL);
    std::abort();
}
#endif

//! Without ASan (which has its own): a fault in a guard page is reported with the kernel and thread.
void installSignalHandler()
{
#if !CUDACPU_ASAN
    static bool installed = false;
    if (installed)
    {
        return;
    }
    installed = true;
    static std::vector<unsigned char> altStack(64 * 1024);
    stack_t ss{};
    ss.ss_sp = altStack.data();
    ss.ss_size = altStack.size();
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = onSegv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
#endif
}

cudaError_t setError(cudaError_t e)
{
    gLastError = e;
    return e;
}

} // namespace

void setOptions(Options const& o)
{
    gOptions = o;
    gRng = o.seed == 0 ? 1 : o.seed;
}

Options const& options()
{
    return gOptions;
}

int launchCount()
{
    return static_cast<int>(gLaunches.size());
}

LaunchRecord const& launchRecord(int i)
{
    return gLaunches.at(static_cast<size_t>(i));
}

void clearLaunchLog()
{
    gLaunches.clear();
}

void syncthreads(int line, char const* file)
{
    Fiber* f = gBlock.current;
    if (f == nullptr)
    {
        std::fprintf(stderr, "cuda_cpu_model: __syncthreads outside a kernel\n");
        std::abort();
    }
    f->state = State::kAtBarrier;
    f->line = line;
    f->file = file;
    f->mask = 0;
    yieldToScheduler();
}

uint64_t warpExchange(WarpOp op, unsigned mask, uint64_t bits, int arg, int width, int line, char const* file)
{
    Fiber* f = gBlock.current;
    if (f == nullptr)
    {
        std::fprintf(stderr, "cuda_cpu_model: %s outside a kernel\n", opName(op));
        std::abort();
    }
    f->state = State::kAtWarpOp;
    f->op = op;
    f->mask = mask;
    f->bits = bits;
    f->arg = arg;
    f->width = width;
    f->line = line;
    f->file = file;
    yieldToScheduler();
    return f->result;
}

void* dynamicShared()
{
    if (gBlock.current == nullptr)
    {
        std::fprintf(stderr, "cuda_cpu_model: dynamic shared memory outside a kernel\n");
        std::abort();
    }
    return gBlock.smem;
}

bool runLaunch(void const* kernel, char const* name, dim3 grid, dim3 block, size_t smem, void (*body)(void*), void* ctx)
{
    if (gBlock.current != nullptr)
    {
        std::fprintf(stderr, "cuda_cpu_model: launch from device code is not modelled\n");
        std::abort();
    }
    uint64_t const threads = static_cast<uint64_t>(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    {
        setError(cudaErrorInvalidConfiguration);
        return false;
    }
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647U || grid.y > 65535 || grid.z > 65535)
    {
        setError(cudaErrorInvalidConfiguration);
        return false;
    }
    size_t const staticBytes = static_cast<size_t>(__stop_cudacpu_shared - __start_cudacpu_shared);
    auto const optIn = gSmemOptIn.find(kernel);
    size_t const limit = optIn != gSmemOptIn.end() ? optIn->second : kDefaultSmemLimit - staticBytes;
    if (smem > limit)
    {
        setError(cudaErrorInvalidValue); // CUDA refuses the launch: too much dynamic shared memory
        return false;
    }
    installSignalHandler();
    gLaunches.push_back(LaunchRecord{name, grid, block, smem});

    SmemAllocation alloc;
    gBlock = Block{};
    gBlock.kernel = name;
    gBlock.body = body;
    gBlock.ctx = ctx;
    gBlock.nThreads = static_cast<int>(threads);
    gBlock.fibers.resize(threads);
    gBlock.smemBytes = smem;
    gBlock.smem = alloc.allocate(smem, gBlock.smemSlackEnd);
    gSmemHi = gBlock.smemSlackEnd;
    gBlockDim = block;
    gGridDim = grid;

    std::vector<int> order(threads);
    for (uint64_t i = 0; i < threads; ++i)
    {
        order[i] = gOptions.order == ResumeOrder::kReverse ? static_cast<int>(threads - 1 - i) : static_cast<int>(i);
    }
    uint64_t const numBlocks = static_cast<uint64_t>(grid.x) * grid.y * grid.z;
    std::vector<uint64_t> blockOrder(numBlocks);
    for (uint64_t i = 0; i < numBlocks; ++i)
    {
        blockOrder[i] = gOptions.order == ResumeOrder::kReverse ? numBlocks - 1 - i : i;
    }
    if (gOptions.order == ResumeOrder::kShuffled)
    {
        for (uint64_t i = numBlocks; i > 1; --i)
        {
            std::swap(blockOrder[i - 1], blockOrder[nextRandom() % i]);
        }
    }
    for (uint64_t lin : blockOrder)
    {
        gBlockIdx = uint3{static_cast<unsigned>(lin % grid.x), static_cast<unsigned>((lin / grid.x) % grid.y),
            static_cast<unsigned>(lin / (static_cast<uint64_t>(grid.x) * grid.y))};
        fillPattern(gBlock.smem, static_cast<size_t>(gBlock.smemSlackEnd - gBlock.smem));
        if (staticBytes > 0)
        {
            fillPattern(reinterpret_cast<unsigned char*>(__start_cudacpu_shared), staticBytes);
        }
        runBlock(order);
        checkSlack();
    }
    gSmemHi = nullptr;
    return true;
}

} // namespace cudacpu

// ---- the CUDA runtime calls the kernels' host code makes ----------------------------------------------

extern "C" cudaError_t cudaGetLastError()
{
    cudaError_t const e = cudacpu::gLastError;
    cudacpu::gLastError = cudaSuccess;
    return e;
}

extern "C" cudaError_t cudaPeekAtLastError()
{
    return cudacpu::gLastError;
}

extern "C" char const* cudaGetErrorString(cudaError_t error)
{
    switch (error)
    {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "error (cuda_cpu_model)";
    }
}

extern "C" cudaError_t cudaFuncSetAttribute(void const* func, cudaFuncAttribute attr, int value)
{
    using namespace cudacpu;
    if (func == nullptr)
    {
        return setError(cudaErrorInvalidDeviceFunction);
    }
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize)
    {
        size_t const staticBytes = static_cast<size_t>(__stop_cudacpu_shared - __start_cudacpu_shared);
        if (value < 0 || static_cast<size_t>(value) + staticBytes > gOptions.optInSmemLimit)
        {
            return setError(cudaErrorInvalidValue);
        }
        gSmemOptIn[func] = static_cast<size_t>(value);
        return cudaSuccess;
    }
    if (attr == cudaFuncAttributePreferredSharedMemoryCarveout)
    {
        return value >= -1 && value <= 100 ? cudaSuccess : setError(cudaErrorInvalidValue);
    }
    return setError(cudaErrorInvalidValue);
}

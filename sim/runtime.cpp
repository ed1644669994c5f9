// The block scheduler of the kernel simulator: a block's threads are fibers of the OS thread
// that runs the launch, switched only where CUDA lets threads wait for each other (barriers and
// warp collectives), in an order chosen by the launch's seed. Between two such points a fiber runs
// alone, so a missing __syncthreads shows up as a read of a value that, in this order, nobody has
// written yet (or a 0xff poison), and any rule of cuda_sim.h that is broken is reported with the
// kernel, block, thread and source lines, then the process aborts.
//
// Fibers: a hand-written x86-64 context switch (the callee-saved registers; a few ns: ucontext's
// swapcontext makes two system calls per switch), from one thread straight to the next. Stacks are mmap'd with a guard
// page below each and reused by every block of the OS thread. With AddressSanitizer the switches
// are annotated (__sanitizer_start/finish_switch_fiber).
#include "runtime.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define RLVR_SIM_ASAN 1
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if !defined(__x86_64__)
#error "the kernel simulator's context switch is written for x86-64"
#endif

namespace rlvr_sim {

thread_local ThreadRegs* current_thread __attribute__((tls_model("initial-exec"))) = nullptr;
thread_local LaunchRegs* current_launch __attribute__((tls_model("initial-exec"))) = nullptr;

void fatal(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    std::fputs("kernel-sim: ", stderr);
    std::vfprintf(stderr, fmt, ap);
    std::fputc('\n', stderr);
    va_end(ap);
    std::fflush(stderr);
    std::abort();
}

// ---- Kernel registry -------------------------------------------------------------------------

static std::vector<const KernelEntry*>& registry() {
    static std::vector<const KernelEntry*> r;
    return r;
}

const KernelEntry* find_kernel(const char* name) {
    for (const KernelEntry* k : registry())
        if (std::strcmp(k->name, name) == 0) return k;
    return nullptr;
}
size_t kernel_count() { return registry().size(); }
const KernelEntry* kernel_at(size_t i) { return registry()[i]; }

}  // namespace rlvr_sim

extern "C" void rlvr_sim_register(const rlvr_sim::KernelEntry* entries, size_t n) {
    for (size_t i = 0; i < n; ++i) rlvr_sim::registry().push_back(entries + i);
}

// ---- Context switch ------------------------------------------------------------------------------

extern "C" void rlvr_sim_switch(void** save_sp, void* to_sp);
extern "C" void rlvr_sim_fiber_start();
extern "C" [[noreturn]] void rlvr_sim_fiber_main(void* fiber);
// save_sp: where to store the current stack pointer; to_sp: the stack pointer to resume. The
// frame holds rbp rbx r12-r15, the callee-saved registers of the SysV ABI. MXCSR and the x87
// control word are callee-saved too, but nothing here changes them, so every fiber shares the OS
// thread's (restoring them costs more than the rest of the switch: fldcw serialises).
asm(R"(
    .text
    .p2align 4
    .globl rlvr_sim_switch
    .hidden rlvr_sim_switch
    .type rlvr_sim_switch, @function
rlvr_sim_switch:
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
    .size rlvr_sim_switch, .-rlvr_sim_switch

    .p2align 4
    .globl rlvr_sim_fiber_start
    .hidden rlvr_sim_fiber_start
    .type rlvr_sim_fiber_start, @function
rlvr_sim_fiber_start:
    movq %r12, %rdi
    call rlvr_sim_fiber_main
    ud2
    .size rlvr_sim_fiber_start, .-rlvr_sim_fiber_start
)");

namespace rlvr_sim {
namespace {

constexpr size_t STACK_BYTES = 256 * 1024;  // per thread of a block; ASan frames are large
constexpr size_t MAX_THREADS = 1024;

enum class State : uint8_t { Runnable, Barrier, Warp, Exited };

struct Fiber {
    ThreadRegs regs;  // threadIdx
    unsigned index;   // linear thread index
    State state;
    const char* file;  // where it waits
    int line;
    uint64_t result;  // of its last warp collective
    void* sp;
    char* stack_lo;
};

struct Warp {
    bool pending;
    WarpOp op;
    unsigned mask, arrived, bytes;
    const char* file;
    int line;
    uint64_t val[32];
    int param[32];
};

const char* op_name(WarpOp op) {
    static const char* names[] = {"__shfl_sync",       "__shfl_up_sync",    "__shfl_down_sync",
                                  "__shfl_xor_sync",   "__ballot_sync",     "__reduce_max_sync",
                                  "__reduce_min_sync", "__reduce_or_sync",  "__reduce_and_sync",
                                  "__reduce_add_sync", "__syncwarp"};
    return names[op];
}

// splitmix64: the seeded thread order.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
};

// Everything of the block being run on this OS thread.
struct Runner {
    const LaunchSpec* spec = nullptr;
    LaunchRegs regs{};
    Fiber fibers[MAX_THREADS];
    Warp warps[MAX_THREADS / 32];
    unsigned n = 0, live = 0, at_barrier = 0, exited = 0;
    // Runnable threads: a lane mask per warp, and the warps that have any. The scheduler keeps
    // running one warp (lanes in seeded order) until none of its lanes can run, then picks
    // another warp in seeded order: warps interleave at every barrier and whenever a warp waits.
    uint32_t ready[MAX_THREADS / 32] = {};
    uint32_t warps_ready = 0;
    int cur_warp = -1;
    Rng rng{0};
    Fiber* running = nullptr;
    void* main_sp = nullptr;
#if RLVR_SIM_ASAN
    const void* main_stack_lo = nullptr;
    size_t main_stack_size = 0;
#endif
    char* stacks = nullptr;  // MAX_THREADS stacks, each with a guard page below
    unsigned char* dyn = nullptr;
    size_t dyn_bytes = 0;
    void* tls = nullptr;  // this OS thread's copy of the kernels' __shared__ variables
    size_t tls_bytes = 0;
};

thread_local Runner* runner __attribute__((tls_model("initial-exec"))) = nullptr;

[[noreturn]] void report(const char* what, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(const char* what, const char* fmt, ...) {
    Runner& r = *runner;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char who[32] = "";
    if (r.running) std::snprintf(who, sizeof who, ", thread %u", r.running->index);
    fatal("%s in kernel %s (block %u of %u, %u threads, thread-order seed %llu%s): %s", what, r.spec->kernel->name,
          r.regs.block_idx.x, r.regs.grid_dim.x, r.n, (unsigned long long)r.spec->seed, who, msg);
}

bool same_site(const char* fa, int la, const char* fb, int lb) {
    return la == lb && (fa == fb || std::strcmp(fa, fb) == 0);
}

// ---- Fibers -------------------------------------------------------------------------------------

// To fiber `to`, or (to = null) to the scheduler on the OS thread's own stack; `save` receives
// the stack pointer to resume the switching side with.
void switch_to(void** save, Fiber* to) {
#if RLVR_SIM_ASAN
    void* fake = nullptr;
    if (to) __sanitizer_start_switch_fiber(&fake, to->stack_lo, STACK_BYTES);
    else __sanitizer_start_switch_fiber(&fake, runner->main_stack_lo, runner->main_stack_size);
#endif
    rlvr_sim_switch(save, to ? to->sp : runner->main_sp);
#if RLVR_SIM_ASAN
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

// The next thread to run: another runnable lane of the current warp, else a lane of another
// warp (seeded order; seed 0: lowest first). Null when nothing is runnable.
// The first set bit of m at or after a seeded position (wrapping): a seeded choice that costs a
// rotate and a count-trailing-zeros; seed 0 always starts at bit 0.
unsigned choose(Runner& r, uint32_t m) {
    const unsigned start = r.spec->seed == 0 ? 0 : (unsigned)(r.rng.next() & 31);
    const uint32_t rot = start == 0 ? m : (m >> start) | (m << (32 - start));
    return ((unsigned)__builtin_ctz(rot) + start) & 31;
}
Fiber* pick(Runner& r) {
    if (r.cur_warp < 0 || r.ready[r.cur_warp] == 0) {
        if (r.warps_ready == 0) return nullptr;
        r.cur_warp = (int)choose(r, r.warps_ready);
    }
    const unsigned w = (unsigned)r.cur_warp;
    const uint32_t m = r.ready[w];
    const unsigned lane = choose(r, m);
    r.ready[w] = m & ~(1u << lane);
    if (r.ready[w] == 0) r.warps_ready &= ~(1u << w);
    return &r.fibers[w * 32 + lane];
}

void make_runnable(Runner& r, unsigned i) {
    r.fibers[i].state = State::Runnable;
    r.ready[i >> 5] |= 1u << (i & 31);
    r.warps_ready |= 1u << (i >> 5);
}

// Called on the running fiber after it set its waiting state (or exited): straight on to the
// next runnable thread, or back to the scheduler when there is none. Returns when resumed.
void block_running(void** save) {
    Runner& r = *runner;
    Fiber* next = pick(r);
    if (next != nullptr) {
        r.running = next;
        current_thread = &next->regs;
    }
    switch_to(save, next);
}

}  // namespace
}  // namespace rlvr_sim

// First code a fiber runs: the kernel, then back to the scheduler for good.
extern "C" void rlvr_sim_fiber_main(void* arg) {
    using namespace rlvr_sim;
    (void)arg;
#if RLVR_SIM_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    Runner& r = *runner;
    r.spec->kernel->launch(r.spec->params);
    Fiber* f = r.running;
    f->state = State::Exited;
    f->file = nullptr;
    --r.live;
    ++r.exited;
    Fiber* next = pick(r);
    if (next != nullptr) {
        r.running = next;
        current_thread = &next->regs;
    }
#if RLVR_SIM_ASAN
    if (next) __sanitizer_start_switch_fiber(nullptr, next->stack_lo, STACK_BYTES);
    else __sanitizer_start_switch_fiber(nullptr, r.main_stack_lo, r.main_stack_size);
#endif
    void* dead;
    rlvr_sim_switch(&dead, next ? next->sp : r.main_sp);
    __builtin_unreachable();
}

namespace rlvr_sim {
namespace {

Runner& this_runner() {
    if (runner == nullptr) {
        runner = new Runner();
        const size_t page = (size_t)sysconf(_SC_PAGESIZE);
        const size_t slot = STACK_BYTES + page;
        void* m = mmap(nullptr, slot * MAX_THREADS, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) fatal("cannot map %zu bytes of fiber stacks", slot * MAX_THREADS);
        runner->stacks = static_cast<char*>(m);
        for (size_t i = 0; i < MAX_THREADS; ++i) mprotect(runner->stacks + i * slot, page, PROT_NONE);  // guard
#if RLVR_SIM_ASAN
        pthread_attr_t attr;
        void* lo = nullptr;
        size_t size = 0;
        if (pthread_getattr_np(pthread_self(), &attr) == 0) {
            pthread_attr_getstack(&attr, &lo, &size);
            pthread_attr_destroy(&attr);
        }
        runner->main_stack_lo = lo;
        runner->main_stack_size = size;
#endif
    }
    return *runner;
}

// This OS thread's block of the kernels module's thread-local storage: exactly the kernels'
// static __shared__ variables (librlvr_sim_kernels.so has no other thread_local).
void find_shared_tls(Runner& r) {
    struct Found {
        void* data;
        size_t size;
    } found{nullptr, 0};
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) -> int {
            if (info->dlpi_name == nullptr || std::strstr(info->dlpi_name, "librlvr_sim_kernels") == nullptr) return 0;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                if (info->dlpi_phdr[i].p_type == PT_TLS) {
                    auto* f = static_cast<Found*>(out);
                    f->data = info->dlpi_tls_data;
                    f->size = info->dlpi_phdr[i].p_memsz;
                }
            }
            return 1;
        },
        &found);
    r.tls = found.data;
    r.tls_bytes = found.size;
}

void prepare_fiber(Runner& r, unsigned i, size_t page) {
    Fiber& f = r.fibers[i];
    const dim3 bd = r.regs.block_dim;
    f.index = i;
    f.regs.tid = make_uint3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
    f.state = State::Runnable;
    f.file = nullptr;
    f.line = 0;
    f.stack_lo = r.stacks + i * (STACK_BYTES + page) + page;
#if RLVR_SIM_ASAN
    // The last thread on this stack left by a switch, not a return: its frames' redzones are
    // still poisoned.
    __asan_unpoison_memory_region(f.stack_lo, STACK_BYTES);
#endif
    // A frame for rlvr_sim_switch to "return" into rlvr_sim_fiber_start with r12 = the fiber.
    // Stack tops staggered by 64-byte lines: at the same page offset, the frames of a warp's 32
    // threads would all compete for one L1 set.
    uintptr_t top = ((uintptr_t)(f.stack_lo + STACK_BYTES) - (i % 64) * 64) & ~(uintptr_t)15;
    uint64_t* s = reinterpret_cast<uint64_t*>(top);
    s[-1] = (uint64_t)(uintptr_t)&rlvr_sim_fiber_start;  // return address
    s[-2] = 0;                                           // rbp
    s[-3] = 0;                                           // rbx
    s[-4] = (uint64_t)(uintptr_t)&f;                     // r12
    s[-5] = 0;                                           // r13
    s[-6] = 0;                                           // r14
    s[-7] = 0;                                           // r15
    f.sp = &s[-7];
}

// Where every thread of the block waits, for a report.
std::string where_all(const Runner& r) {
    std::string s;
    const Fiber* prev = nullptr;
    unsigned first = 0;
    auto flush = [&](unsigned end) {
        if (prev == nullptr) return;
        char buf[256];
        const char* st = prev->state == State::Barrier ? "__syncthreads at"
                         : prev->state == State::Warp  ? "a warp collective at"
                         : prev->state == State::Exited ? "exited"
                                                        : "runnable";
        if (prev->file)
            std::snprintf(buf, sizeof buf, "\n    threads %u..%u: %s %s:%d", first, end - 1, st, prev->file, prev->line);
        else
            std::snprintf(buf, sizeof buf, "\n    threads %u..%u: %s", first, end - 1, st);
        s += buf;
    };
    for (unsigned i = 0; i < r.n; ++i) {
        const Fiber& f = r.fibers[i];
        if (prev == nullptr || f.state != prev->state || f.line != prev->line ||
            (f.file != prev->file && (!f.file || !prev->file || std::strcmp(f.file, prev->file) != 0))) {
            flush(i);
            prev = &f;
            first = i;
        }
    }
    flush(r.n);
    return s;
}

// Nothing is runnable: release a barrier every live thread reached at one source line, or report.
void resolve(Runner& r) {
    for (unsigned w = 0; w < r.n / 32; ++w) {
        if (r.warps[w].pending) {
            r.running = nullptr;
            report("deadlock", "%s at %s:%d (mask 0x%08x) in warp %u is waiting for lanes 0x%08x that never arrive "
                   "(divergent code, a barrier or an exit between them):%s",
                   op_name(r.warps[w].op), r.warps[w].file, r.warps[w].line, r.warps[w].mask, w,
                   r.warps[w].mask & ~r.warps[w].arrived, where_all(r).c_str());
        }
    }
    if (r.at_barrier == 0) return;
    if (r.exited > 0) {
        r.running = nullptr;
        report("__syncthreads reached by part of the block", "%u threads wait at a barrier, %u have exited:%s",
               r.at_barrier, r.exited, where_all(r).c_str());
    }
    const Fiber* first = nullptr;
    for (unsigned i = 0; i < r.n; ++i) {
        const Fiber& f = r.fibers[i];
        if (first == nullptr) first = &f;
        if (!same_site(f.file, f.line, first->file, first->line)) {
            r.running = nullptr;
            report("threads at different __syncthreads", "thread %u waits at %s:%d, thread %u at %s:%d:%s",
                   first->index, first->file, first->line, f.index, f.file, f.line, where_all(r).c_str());
        }
    }
    for (unsigned i = 0; i < r.n; ++i) make_runnable(r, i);
    r.at_barrier = 0;
    r.cur_warp = -1;  // the first warp after a barrier is a seeded choice too
}

void run_block(Runner& r) {
    const unsigned n = r.n;
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (unsigned i = 0; i < n; ++i) prepare_fiber(r, i, page);
    for (unsigned w = 0; w < n / 32; ++w) r.warps[w].pending = false, r.ready[w] = 0;
    r.warps_ready = 0;
    r.cur_warp = -1;
    r.live = n;
    r.at_barrier = 0;
    r.exited = 0;
    for (unsigned i = 0; i < n; ++i) make_runnable(r, i);
    while (r.live > 0) {
        Fiber* f = pick(r);
        if (f == nullptr) {
            resolve(r);
            f = pick(r);
            if (f == nullptr) {
                r.running = nullptr;
                report("deadlock", "no thread can run:%s", where_all(r).c_str());
            }
        }
        r.running = f;
        current_thread = &f->regs;
        switch_to(&r.main_sp, f);  // returns when no thread is runnable (or all have exited)
    }
    r.running = nullptr;
    current_thread = nullptr;
}

}  // namespace

// ---- What kernel code calls ------------------------------------------------------------------------

void barrier(const char* file, int line) {
    Runner& r = *runner;
    Fiber* f = r.running;
    f->state = State::Barrier;
    f->file = file;
    f->line = line;
    ++r.at_barrier;
    block_running(&f->sp);
}

// Every lane's result of a completed collective, into its fiber; the waiting lanes become
// runnable (the last lane in, `self`, goes on running).
static void complete(Runner& r, Warp& w, unsigned wi, unsigned self) {
    auto from = [&](unsigned lane, int src) -> uint64_t {
        if (src < 0 || src > 31 || !(w.mask >> src & 1u))
            report("shuffle from a lane outside the mask",
                   "lane %u of warp %u reads lane %d in %s at %s:%d, which mask 0x%08x does not name", lane, wi, src,
                   op_name(w.op), w.file, w.line, w.mask);
        return w.val[src];
    };
    uint64_t all = 0;  // the reductions' one result
    if (w.op >= BALLOT && w.op != SYNCWARP) {
        all = w.op == REDUCE_MIN || w.op == REDUCE_AND ? 0xffffffffull : 0ull;
        for (unsigned l = 0; l < 32; ++l) {
            if (!(w.mask >> l & 1u)) continue;
            const uint32_t v = (uint32_t)w.val[l];
            switch (w.op) {
                case BALLOT: all |= (uint64_t)(v != 0) << l; break;
                case REDUCE_MAX: all = all > v ? all : v; break;
                case REDUCE_MIN: all = all < v ? all : v; break;
                case REDUCE_OR: all |= v; break;
                case REDUCE_AND: all &= v; break;
                case REDUCE_ADD: all = (uint32_t)(all + v); break;
                default: break;
            }
        }
    }
    for (unsigned l = 0; l < 32; ++l) {
        if (!(w.mask >> l & 1u)) continue;
        const int p = w.param[l], i = (int)l;
        uint64_t res;
        switch (w.op) {
            case SHFL_IDX: res = from(l, p & 31); break;
            case SHFL_UP: res = i - p >= 0 ? from(l, i - p) : w.val[l]; break;
            case SHFL_DOWN: res = i + p < 32 ? from(l, i + p) : w.val[l]; break;
            case SHFL_XOR: res = (i ^ p) < 32 ? from(l, i ^ p) : w.val[l]; break;
            default: res = all; break;
        }
        Fiber& g = r.fibers[wi * 32 + l];
        g.result = res;
        if (l != self) make_runnable(r, g.index);
    }
    w.pending = false;
}

uint64_t warp_collective(WarpOp op, unsigned mask, uint64_t bits, unsigned bytes, int param, const char* file,
                         int line) {
    Runner& r = *runner;
    Fiber* f = r.running;
    const unsigned lane = f->index & 31, wi = f->index >> 5;
    Warp& w = r.warps[wi];
    if (!(mask >> lane & 1u))
        report("lane outside its own mask", "lane %u calls %s at %s:%d with mask 0x%08x, which does not name it",
               lane, op_name(op), file, line, mask);
    if (!w.pending) {
        w.pending = true;
        w.op = op;
        w.mask = mask;
        w.bytes = bytes;
        w.file = file;
        w.line = line;
        w.arrived = 0;
    } else if (w.op != op || w.mask != mask || !same_site(w.file, w.line, file, line)) {
        report("lanes of a warp at different collectives",
               "lane %u calls %s at %s:%d with mask 0x%08x while lanes 0x%08x of warp %u wait in %s at %s:%d with "
               "mask 0x%08x (divergent warp)",
               lane, op_name(op), file, line, mask, w.arrived, wi, op_name(w.op), w.file, w.line, w.mask);
    }
    w.val[lane] = bits;
    w.param[lane] = param;
    w.arrived |= 1u << lane;
    if ((w.arrived & w.mask) == w.mask) {
        complete(r, w, wi, lane);
        return f->result;
    }
    f->state = State::Warp;
    f->file = file;
    f->line = line;
    block_running(&f->sp);
    return f->result;
}

void trap(const char* file, int line) { report("__trap()", "called at %s:%d", file, line); }

unsigned dynamic_smem_size() { return runner->spec->shared_bytes; }
void* dynamic_shared() { return runner->dyn; }

// The launch being run on this OS thread (for the memory checks in driver.cpp).
const LaunchSpec* running_launch() { return runner ? runner->spec : nullptr; }
bool in_shared(uintptr_t p, size_t bytes) {
    Runner* r = runner;
    if (r == nullptr) return false;
    auto inside = [&](const void* base, size_t size) {
        const uintptr_t b = (uintptr_t)base;
        return p >= b && p + bytes <= b + size;
    };
    return inside(r->dyn, r->dyn_bytes) || inside(r->tls, r->tls_bytes);
}

void run_launch(const LaunchSpec& spec) {
    Runner& r = this_runner();
    if (r.tls == nullptr) find_shared_tls(r);
    const unsigned threads = spec.block.x * spec.block.y * spec.block.z;
    if (threads == 0 || threads > MAX_THREADS || threads % 32 != 0)
        fatal("kernel %s: %u threads per block (the simulator runs 32..1024, a multiple of 32)", spec.kernel->name,
              threads);
    r.spec = &spec;
    r.n = threads;
    r.rng = Rng{spec.seed};
    r.regs.block_dim = spec.block;
    r.regs.grid_dim = spec.grid;
    r.dyn_bytes = spec.shared_bytes;
    r.dyn = static_cast<unsigned char*>(std::malloc(spec.shared_bytes > 0 ? spec.shared_bytes : 1));
    LaunchRegs* saved = current_launch;
    current_launch = &r.regs;
    for (unsigned z = 0; z < spec.grid.z; ++z) {
        for (unsigned y = 0; y < spec.grid.y; ++y) {
            for (unsigned x = 0; x < spec.grid.x; ++x) {
                r.regs.block_idx = make_uint3(x, y, z);
                // Shared memory starts as garbage on the GPU: make it loud garbage.
                std::memset(r.dyn, 0xff, spec.shared_bytes);
                if (r.tls) std::memset(r.tls, 0xff, r.tls_bytes);
                run_block(r);
            }
        }
    }
    current_launch = saved;
    std::free(r.dyn);
    r.dyn = nullptr;
    r.dyn_bytes = 0;
    r.spec = nullptr;
}

}  // namespace rlvr_sim

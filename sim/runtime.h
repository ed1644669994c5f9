// The interface between the simulated driver (driver.cpp) and the block scheduler
// (runtime.cpp). Not seen by kernel code: that sees only cuda_sim.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "cuda_sim.h"

namespace rlvr_sim {

// One device allocation (host memory standing in for device memory).
struct Alloc {
    uintptr_t base;
    size_t size;
    bool mapped;  // mmap'd (large, NORESERVE) rather than malloc'd
};

// The allocation holding [p, p + bytes), or null (driver.cpp).
const Alloc* find_alloc(uintptr_t p);

// A kernel launch as cuLaunchKernel describes it.
struct LaunchSpec {
    const KernelEntry* kernel;
    dim3 grid, block;
    unsigned shared_bytes;
    void** params;
    uint64_t seed;  // thread order: 0 = in thread-index order, else a seeded random order
    uint64_t id;    // launch number in this process
};

// Runs every block of the launch on the calling OS thread, one block after another; each block's
// threads are fibers switched only at barriers and warp collectives. A broken rule (see
// cuda_sim.h) prints a report and aborts the process.
void run_launch(const LaunchSpec& spec);

// The kernels registered by librlvr_sim_kernels.so (kernels_*.cpp), by entry-point name.
const KernelEntry* find_kernel(const char* name);
size_t kernel_count();
const KernelEntry* kernel_at(size_t i);

// An H200's order of magnitude of device memory (driver.cpp, memory.cpp).
constexpr size_t TOTAL_MEMORY = 140ull << 30;
// The calling thread has a CUDA context bound (driver.cpp).
bool context_current();
// The launch this OS thread runs, if any; whether [p, p + bytes) is this thread's shared memory
// (runtime.cpp).
const LaunchSpec* running_launch();
bool in_shared(uintptr_t p, size_t bytes);

// printf to stderr, prefixed with "kernel-sim: ", then abort().
[[noreturn]] void fatal(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace rlvr_sim

extern "C" void rlvr_sim_register(const rlvr_sim::KernelEntry* entries, size_t n);

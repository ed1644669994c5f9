// Device memory of the simulated driver: host allocations, the driver's memory functions, and the
// global-memory checks of cuda_sim.h (bounds, alignment, non-coherent reads of memory the same
// launch writes).
#include <cuda.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

#include "runtime.h"

using namespace rlvr_sim;

namespace {

constexpr size_t MAP_THRESHOLD = 256ull << 20;  // larger allocations: mmap, pages only when touched

CUresult need_context() { return context_current() ? CUDA_SUCCESS : CUDA_ERROR_INVALID_CONTEXT; }

// ---- Allocations ---------------------------------------------------------------------------------
std::shared_mutex alloc_lock;
std::map<uintptr_t, Alloc> allocs;
size_t allocated = 0;

// Per launch (and OS thread): which bytes were read through the non-coherent path, by 4 KiB page,
// two bytes per bit (the narrowest element the kernels use).
struct NcPages {
    std::unordered_map<uint64_t, std::vector<uint64_t>> pages;
    uint64_t last_page = ~0ull;
    std::vector<uint64_t>* last = nullptr;
    uint64_t launch = ~0ull;  // LaunchSpec::id
    const Alloc* cached[8] = {};  // the allocations this launch touched last (a kernel reads a few)
    unsigned next = 0;
};
// A pointer, not an object: a thread_local with a constructor is reached through an init guard
// and __tls_get_addr on every access, which the check of every load cannot afford.
thread_local NcPages* nc_pages __attribute__((tls_model("initial-exec"))) = nullptr;

}  // namespace

// ---- The memory checks of cuda_sim.h ----------------------------------------------------------------

const Alloc* rlvr_sim::find_alloc(uintptr_t p) {
    std::shared_lock<std::shared_mutex> g(alloc_lock);
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return nullptr;
    --it;
    return p < it->second.base + it->second.size ? &it->second : nullptr;
}

void rlvr_sim::check_global(const void* ptr, size_t bytes, size_t align, bool nc_read, bool write, const char* file,
                            int line) {
    const uintptr_t p = (uintptr_t)ptr;
    if (write && !nc_read && in_shared(p, bytes)) return;  // a shared-memory atomic: the common case
    const LaunchSpec* spec = running_launch();
    if (nc_pages == nullptr) nc_pages = new NcPages();
    NcPages& nc = *nc_pages;
    const uint64_t id = spec ? spec->id : ~0ull;
    if (nc.launch != id) {  // a new launch on this OS thread: forget the last one's reads
        nc.pages.clear();
        nc.last_page = ~0ull;
        nc.last = nullptr;
        nc.launch = id;
        for (const Alloc*& c : nc.cached) c = nullptr;
    }
    const Alloc* a = nullptr;
    for (const Alloc* c : nc.cached) {
        if (c != nullptr && p >= c->base && p + bytes <= c->base + c->size) {
            a = c;
            break;
        }
    }
    if (a == nullptr) {
        a = find_alloc(p);
        if (a == nullptr) {
            if (in_shared(p, bytes)) return;  // a shared-memory atomic
            fatal("kernel %s: %zu-byte %s at %p (%s:%d) is outside every device allocation",
                  spec ? spec->kernel->name : "?", bytes, write ? "write" : "read", ptr, file, line);
        }
        if (p + bytes > a->base + a->size)
            fatal("kernel %s: %zu-byte %s at %p (%s:%d) runs %zu bytes past the end of a %zu-byte allocation",
                  spec ? spec->kernel->name : "?", bytes, write ? "write" : "read", ptr, file, line,
                  (size_t)(p + bytes - (a->base + a->size)), a->size);
        nc.cached[nc.next++ % 8] = a;
    }
    if (p % align != 0)
        fatal("kernel %s: misaligned %zu-byte %s at %p (%s:%d)", spec ? spec->kernel->name : "?", bytes,
              write ? "write" : "read", ptr, file, line);
    if (!nc_read && !write) return;
    // Two bytes per bit, 4 KiB pages: the access's bits, one page at a time.
    for (uintptr_t q = p & ~(uintptr_t)1; q < p + bytes;) {
        const uint64_t page = q >> 12;
        const uintptr_t end = std::min<uintptr_t>(p + bytes, (page + 1) << 12);
        std::vector<uint64_t>* bits = nc.last;
        if (page != nc.last_page) {
            auto it = nc.pages.find(page);
            if (it == nc.pages.end()) {
                if (!nc_read) {
                    q = end;
                    continue;
                }
                it = nc.pages.emplace(page, std::vector<uint64_t>(32, 0)).first;
            }
            bits = &it->second;
            nc.last_page = page;
            nc.last = bits;
        }
        for (; q < end;) {
            const unsigned bit = (unsigned)((q & 4095) >> 1), word = bit >> 6;
            const unsigned n = (unsigned)std::min<uintptr_t>((end - q + 1) >> 1, 64 - (bit & 63));
            const uint64_t m = (n == 64 ? ~0ull : ((1ull << n) - 1)) << (bit & 63);
            if (nc_read) {
                (*bits)[word] |= m;
            } else if ((*bits)[word] & m) {
                fatal("kernel %s: writes %p (%s:%d), which the same launch read through the non-coherent path "
                      "(__ldg): the read-only cache may hold the old value",
                      spec ? spec->kernel->name : "?", (void*)q, file, line);
            }
            q += 2ull * n;
        }
    }
}

extern "C" {

// Memory: host memory; small blocks from malloc (AddressSanitizer sees their bounds), large ones
// mmap'd without reserve so that untouched pages cost nothing. New memory is 0xff, as garbage.
CUresult cuMemAlloc(CUdeviceptr* p, size_t bytes) {
    if (CUresult r = need_context()) return r;
    if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    void* m = nullptr;
    const bool mapped = bytes >= MAP_THRESHOLD;
    if (mapped) {
        m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) return CUDA_ERROR_OUT_OF_MEMORY;
    } else {
        if (posix_memalign(&m, 256, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
        std::memset(m, 0xff, bytes);
    }
    std::unique_lock<std::shared_mutex> g(alloc_lock);
    allocs[(uintptr_t)m] = Alloc{(uintptr_t)m, bytes, mapped};
    allocated += bytes;
    *p = (CUdeviceptr)(uintptr_t)m;
    return CUDA_SUCCESS;
}
// Stream-ordered allocation (what cudarc uses on devices with memory pools) accepts 0 bytes and
// gives a null pointer, which cuMemFreeAsync accepts back; cuMemAlloc refuses 0 bytes.
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream) {
    if (bytes == 0) {
        if (CUresult r = need_context()) return r;
        *p = 0;
        return CUDA_SUCCESS;
    }
    return cuMemAlloc(p, bytes);
}

CUresult cuMemFree(CUdeviceptr p) {
    std::unique_lock<std::shared_mutex> g(alloc_lock);
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end()) return CUDA_ERROR_INVALID_VALUE;
    const Alloc a = it->second;
    allocs.erase(it);
    allocated -= a.size;
    g.unlock();
    if (a.mapped) munmap((void*)a.base, a.size);
    else std::free((void*)a.base);
    return CUDA_SUCCESS;
}
CUresult cuMemFreeAsync(CUdeviceptr p, CUstream) { return p == 0 ? CUDA_SUCCESS : cuMemFree(p); }

CUresult cuMemGetInfo(size_t* free_bytes, size_t* total) {
    if (CUresult r = need_context()) return r;
    std::shared_lock<std::shared_mutex> g(alloc_lock);
    *total = TOTAL_MEMORY;
    *free_bytes = TOTAL_MEMORY - allocated;
    return CUDA_SUCCESS;
}

// Copies check that the device side is one allocation (what the real driver does too).
static CUresult device_range(CUdeviceptr p, size_t bytes) {
    if (bytes == 0) return CUDA_SUCCESS;
    const Alloc* a = find_alloc((uintptr_t)p);
    if (a == nullptr || (uintptr_t)p + bytes > a->base + a->size) return CUDA_ERROR_INVALID_VALUE;
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void* src, size_t n) {
    if (CUresult r = device_range(dst, n)) return r;
    std::memcpy((void*)(uintptr_t)dst, src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t n, CUstream) { return cuMemcpyHtoD(dst, src, n); }
CUresult cuMemcpyDtoH(void* dst, CUdeviceptr src, size_t n) {
    if (CUresult r = device_range(src, n)) return r;
    std::memcpy(dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoH(dst, src, n); }
CUresult cuMemcpyDtoD(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    if (CUresult r = device_range(dst, n)) return r;
    if (CUresult r = device_range(src, n)) return r;
    std::memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}
CUresult cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream) { return cuMemcpyDtoD(dst, src, n); }
CUresult cuMemsetD8(CUdeviceptr dst, unsigned char v, size_t n) {
    if (CUresult r = device_range(dst, n)) return r;
    char* p = reinterpret_cast<char*>((uintptr_t)dst);
    const Alloc* a = find_alloc((uintptr_t)dst);
    if (v == 0 && a->mapped) {
        // Zeroing whole pages of a private anonymous mapping: give them back (they read as zero
        // and cost no memory until written), so an 8 GiB alloc_zeros costs nothing.
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        const uintptr_t lo = ((uintptr_t)p + page - 1) & ~(page - 1), hi = ((uintptr_t)p + n) & ~(page - 1);
        if (lo < hi && madvise((void*)lo, hi - lo, MADV_DONTNEED) == 0) {
            std::memset(p, 0, lo - (uintptr_t)p);
            std::memset((void*)hi, 0, (uintptr_t)p + n - hi);
            return CUDA_SUCCESS;
        }
    }
    std::memset(p, v, n);
    return CUDA_SUCCESS;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream) { return cuMemsetD8(dst, v, n); }
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream) {
    if (CUresult r = device_range(dst, n * 4)) return r;
    auto* p = reinterpret_cast<unsigned int*>((uintptr_t)dst);
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return CUDA_SUCCESS;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int) {
    *p = std::malloc(bytes ? bytes : 1);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void* p) {
    std::free(p);
    return CUDA_SUCCESS;
}

}  // extern "C"

// The host build of kernels/plain_read.cu and its entry points for the simulated driver.
#include "plain_read.cu"

#include "runtime.h"

static const rlvr_sim::KernelEntry entries[] = {
    RLVR_SIM_KERNEL(plain_read_f32),
    RLVR_SIM_KERNEL(plain_read_bf16),
    RLVR_SIM_KERNEL(plain_read_f16),
};
__attribute__((constructor)) static void register_entries() {
    rlvr_sim_register(entries, sizeof entries / sizeof *entries);
}

// The host build of kernels/token_stats.cu and its entry points for the simulated driver.
#include "token_stats.cu"

#include "runtime.h"

static const rlvr_sim::KernelEntry entries[] = {
    RLVR_SIM_KERNEL(token_stats_f32),      RLVR_SIM_KERNEL(token_stats_bf16),
    RLVR_SIM_KERNEL(token_stats_f16),      RLVR_SIM_KERNEL(token_stats_topp_f32),
    RLVR_SIM_KERNEL(token_stats_topp_bf16), RLVR_SIM_KERNEL(token_stats_topp_f16),
    RLVR_SIM_KERNEL(token_stats_kept_f32),  RLVR_SIM_KERNEL(token_stats_kept_bf16),
    RLVR_SIM_KERNEL(token_stats_kept_f16),
};
__attribute__((constructor)) static void register_entries() {
    rlvr_sim_register(entries, sizeof entries / sizeof *entries);
}

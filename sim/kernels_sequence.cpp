// The host build of kernels/sequence.cu and its entry points for the simulated driver.
#include "sequence.cu"

#include "runtime.h"

static const rlvr_sim::KernelEntry entries[] = {
    RLVR_SIM_KERNEL(seq_counts),      RLVR_SIM_KERNEL(agg_weights),      RLVR_SIM_KERNEL(seq_log_ppl),
    RLVR_SIM_KERNEL(ppl_weight),      RLVR_SIM_KERNEL(grpo_advantages),  RLVR_SIM_KERNEL(shape_advantages),
    RLVR_SIM_KERNEL(token_advantages),
};
__attribute__((constructor)) static void register_entries() {
    rlvr_sim_register(entries, sizeof entries / sizeof *entries);
}

// The host build of kernels/grpo.cu and its entry points for the simulated driver.
#include "grpo.cu"

#include "runtime.h"

#define RLVR_SIM_GRPO(NAME)                                                                              \
    RLVR_SIM_KERNEL(grpo_forward_##NAME), RLVR_SIM_KERNEL(grpo_forward_topp_##NAME),                     \
        RLVR_SIM_KERNEL(grpo_fused_##NAME), RLVR_SIM_KERNEL(grpo_fused_topp_##NAME),                     \
        RLVR_SIM_KERNEL(grpo_backward_##NAME)

static const rlvr_sim::KernelEntry entries[] = {
    RLVR_SIM_GRPO(f32), RLVR_SIM_GRPO(bf16), RLVR_SIM_GRPO(f16),
    RLVR_SIM_KERNEL(sum_chunks_f64), RLVR_SIM_KERNEL(grpo_loss_final),
};
__attribute__((constructor)) static void register_entries() {
    rlvr_sim_register(entries, sizeof entries / sizeof *entries);
}

// Advantage kernels for ppo_gae.py (GAE) and p3o.py (P3O).
//
// Memory layout: float32, contiguous, row-major, the env index fastest everywhere,
// so that neighbouring threads (neighbouring envs) read neighbouring addresses.
//   per-step arrays     [T, N]      element (t, env)     at  t * N + env
//   per-horizon arrays  [T, H, N]   element (t, k, env)  at  (t * H + k) * N + env
//   bootstrap mu        [H, N]      element (k, env)     at  k * N + env
// Flags (terminations, truncations) are 0.0 / 1.0 floats: flag[t, env] says that the step
// taken at t ended the episode.
//
// The same source builds two ways (see p3o_kernel_loader.py): with nvcc, where the per-element
// functions run inside CUDA kernels, and with a plain C++ compiler, where they run in a host
// loop. Both call the very same functions below, so the CPU build checks the GPU arithmetic.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#ifdef __CUDACC__
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#define HOST_DEVICE __host__ __device__
#else
#define HOST_DEVICE
#endif

// ---------------------------------------------------------------------------------------------
// GAE: one env, walked backwards over the rollout.
//   delta_t = r_t + gamma * V(s_{t+1}) * [not terminated] - V(s_t)
//   A_t     = delta_t + gamma * lambda * A_{t+1} * [episode did not end at t]
// After a truncation, V(s_{t+1}) is final_values[t, env], the value of the final observation.
// ---------------------------------------------------------------------------------------------
HOST_DEVICE inline void gae_env(int env, int T, int N, float gamma, float lam,
                                const float* rewards, const float* values,
                                const float* terminations, const float* truncations,
                                const float* next_value, const float* final_values,
                                float* advantages) {
    float next_v = next_value[env];  // V of the observation after the rollout
    float next_adv = 0.0f;
    for (int t = T - 1; t >= 0; --t) {
        const int i = t * N + env;
        float bootstrap = next_v;
        float carry = next_adv;
        if (terminations[i] != 0.0f) {
            bootstrap = 0.0f;
            carry = 0.0f;
        } else if (truncations[i] != 0.0f) {
            bootstrap = final_values[i];
            carry = 0.0f;
        }
        const float delta = rewards[i] + gamma * bootstrap - values[i];
        next_adv = delta + gamma * lam * carry;
        advantages[i] = next_adv;
        next_v = values[i];
    }
}

// ---------------------------------------------------------------------------------------------
// P3O's lambda-surprise (p3o.py --surprise-lambda): one predicted reward's chain, walked backwards.
// The surprise y_{t+k} - mu_t[k] telescopes into what each later step revealed about y_{t+k}:
//   d_t[0] = r_t - mu_t[0],   d_t[k] = mu_{t+1}[k-1] - mu_t[k]   (k >= 1)
//   where mu_{t+1}[k-1] is 0 if the step taken at t terminated the episode (known zeros) and
//   mu_next[k-1] at the rollout's last step t = T - 1 (the bootstrap);
//   surprise_t[k] = d_t[k] + lambda * surprise_{t+1}[k-1]   (no carry after an episode end or
//   past the rollout), so lambda = 1 gives y_{t+k} - mu_t[k] and lambda = 0 the one-step change;
//   except where y_{t+k} is a known zero (a termination at a step t .. t+k-1): there
//   surprise_t[k] = 0 - mu_t[k], the observed surprise, undiscounted at any lambda.
// Every (t, k) with the same j = t + k (the step whose reward they predict) lies on one chain:
// this function walks the chain of j for one env, from t = min(j, T-1) down to max(0, j-H+1).
// Entries a row does not use (after a truncation inside it) are written as 0.
// ---------------------------------------------------------------------------------------------
HOST_DEVICE inline void p3o_surprise_chain(int j, int env, int T, int N, int H, float lam,
                                           const float* rewards, const float* terminations,
                                           const float* truncations, const float* mu,
                                           const float* mu_next, float* surprise) {
    float carry = 0.0f;       // surprise_{t+1}[k-1], 0 where nothing follows
    bool known_zero = false;  // a termination at a step t .. j-1: y_j is a known zero
    const int t_first = j < T ? j : T - 1;
    const int t_last = j - H + 1 > 0 ? j - H + 1 : 0;
    for (int t = t_first; t >= t_last; --t) {
        const int k = j - t;
        const int i = t * N + env;
        const int o = (t * H + k) * N + env;
        float e;
        if (k == 0) {
            e = rewards[i] - mu[o];
        } else if (terminations[i] != 0.0f || known_zero) {
            e = 0.0f - mu[o];  // the episode has ended before j: the observed surprise, kept whole
            known_zero = true;
        } else if (truncations[i] != 0.0f) {
            e = 0.0f;  // the row stops at k = 0: this entry is not used
        } else if (t == T - 1) {
            e = mu_next[(k - 1) * N + env] - mu[o];
        } else {
            e = mu[((t + 1) * H + k - 1) * N + env] - mu[o] + lam * carry;
        }
        surprise[o] = e;
        carry = e;
    }
}

// ---------------------------------------------------------------------------------------------
// P3O: one (t, env) row over the horizon k = 0 .. H-1.
//   y_{t+k} = r_{t+k}                 inside the rollout, same episode        (known, live)
//           = 0                       after a termination                     (known)
//           = mu_next[t+k-T]          past the rollout's end (bootstrap)      (not known)
//   the row stops after a truncation: later k are neither known nor used.
//   A_t = sum_k weight[k] * (y_{t+k} - mu_t[k]) / norm_t   (or surprise_t[k] in place of
//         y_{t+k} - mu_t[k] when a lambda-surprise is given),
//   norm_t = sum (or max) of weight[k] over the row's usable k; A_t = 0 where norm_t = 0;
//   norm_t = 1 with normalize == false (weights that are already shares in [0, 1]: p3o.py's
//   --weight-rule action).
// weight is the unnormalized P3O weight (docs/p3o.md): one value per k ([H]) or one per
// (t, k, env) ([T, H, N]); the bindings check that it is finite and >= 0.
// With weight == nullptr the row writes only targets, known and live (p3o_targets).
// ---------------------------------------------------------------------------------------------
HOST_DEVICE inline void p3o_row(int t, int env, int T, int N, int H,
                                bool per_state_weight, bool normalize, bool normalize_max,
                                const float* rewards, const float* terminations,
                                const float* truncations, const float* mu,
                                const float* mu_next, const float* weight, const float* surprise,
                                float* advantages, float* targets, float* known, float* live) {
    float weighted_error = 0.0f;
    float norm = 0.0f;
    bool terminated = false;  // a termination inside the row: the rest is known zeros
    bool stopped = false;     // a truncation inside the row: the rest is unknown
    for (int k = 0; k < H; ++k) {
        const int o = (t * H + k) * N + env;
        if (stopped) {
            targets[o] = 0.0f;
            known[o] = 0.0f;
            if (live) live[o] = 0.0f;
            continue;
        }
        const int j = t + k;  // the step whose reward mu_t[k] predicts
        float y;
        float is_known = 1.0f;
        float is_live = 0.0f;
        if (terminated) {
            y = 0.0f;
        } else if (j < T) {
            y = rewards[j * N + env];
            is_live = 1.0f;
            if (terminations[j * N + env] != 0.0f) terminated = true;
            else if (truncations[j * N + env] != 0.0f) stopped = true;
        } else {
            y = mu_next[(j - T) * N + env];
            is_known = 0.0f;
        }
        targets[o] = y;
        known[o] = is_known;
        if (live) live[o] = is_live;
        if (weight) {
            const float weight_k = per_state_weight ? weight[o] : weight[k];
            weighted_error += weight_k * (surprise ? surprise[o] : y - mu[o]);
            norm = normalize_max ? fmaxf(norm, weight_k) : norm + weight_k;
        }
    }
    if (!weight) return;
    if (!normalize) norm = 1.0f;
    advantages[t * N + env] = norm > 0.0f ? weighted_error / norm : 0.0f;
}

#ifdef __CUDACC__
__global__ void gae_kernel(int T, int N, float gamma, float lam, const float* rewards,
                           const float* values, const float* terminations,
                           const float* truncations, const float* next_value,
                           const float* final_values, float* advantages) {
    const int env = blockIdx.x * blockDim.x + threadIdx.x;
    if (env < N)
        gae_env(env, T, N, gamma, lam, rewards, values, terminations, truncations, next_value,
                final_values, advantages);
}

__global__ void p3o_kernel(int T, int N, int H, bool per_state_weight, bool normalize,
                           bool normalize_max,
                           const float* rewards, const float* terminations,
                           const float* truncations, const float* mu, const float* mu_next,
                           const float* weight, const float* surprise, float* advantages,
                           float* targets, float* known, float* live) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // = t * N + env
    if (idx < T * N)
        p3o_row(idx / N, idx % N, T, N, H, per_state_weight, normalize, normalize_max, rewards,
                terminations, truncations, mu, mu_next, weight, surprise, advantages, targets,
                known, live);
}

__global__ void p3o_surprise_kernel(int T, int N, int H, float lam, const float* rewards,
                                    const float* terminations, const float* truncations,
                                    const float* mu, const float* mu_next, float* surprise) {
    const int idx = blockIdx.x * blockDim.x + threadIdx.x;  // = j * N + env
    if (idx < (T + H - 1) * N)
        p3o_surprise_chain(idx / N, idx % N, T, N, H, lam, rewards, terminations, truncations, mu,
                           mu_next, surprise);
}
#endif

// ---------------------------------------------------------------------------------------------
// Python bindings: shape checks, then the CUDA kernel or the host loop by the tensors' device.
// ---------------------------------------------------------------------------------------------
// Messages are built from std::string only: streaming IntArrayRef or Device into TORCH_CHECK
// crashed (segfault) under one torch 2.11 + g++ 13 toolchain instead of raising.
static std::string shape_str(at::IntArrayRef shape) {
    std::string out = "[";
    for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
    return out + "]";
}

static void check_tensor(const torch::Tensor& x, const char* name, at::IntArrayRef shape,
                         const torch::Device& device) {
    TORCH_CHECK(x.scalar_type() == torch::kFloat32, name, " must be float32, got ",
                std::string(c10::toString(x.scalar_type())));
    TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
    TORCH_CHECK(x.sizes() == shape, name, " must have shape ", shape_str(shape), ", got ",
                shape_str(x.sizes()));
    TORCH_CHECK(x.device() == device, name, " is on ", x.device().str(), ", expected ", device.str());
#ifndef __CUDACC__
    TORCH_CHECK(!x.is_cuda(), "this build of p3o_kernel.cu is the CPU build; ", name,
                " is a CUDA tensor");
#endif
}

torch::Tensor gae(torch::Tensor rewards, torch::Tensor values, torch::Tensor terminations,
                  torch::Tensor truncations, torch::Tensor next_value, torch::Tensor final_values,
                  double gamma, double lam) {
    TORCH_CHECK(rewards.dim() == 2, "rewards must be [T, N], got ", shape_str(rewards.sizes()));
    const int T = rewards.size(0), N = rewards.size(1);
    const auto device = rewards.device();
    check_tensor(rewards, "rewards", {T, N}, device);
    check_tensor(values, "values", {T, N}, device);
    check_tensor(terminations, "terminations", {T, N}, device);
    check_tensor(truncations, "truncations", {T, N}, device);
    check_tensor(next_value, "next_value", {N}, device);
    check_tensor(final_values, "final_values", {T, N}, device);
    auto advantages = torch::empty_like(rewards);
#ifdef __CUDACC__
    if (rewards.is_cuda()) {
        const c10::cuda::CUDAGuard guard(device);
        const int threads = 256;
        gae_kernel<<<(N + threads - 1) / threads, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            T, N, (float)gamma, (float)lam, rewards.data_ptr<float>(), values.data_ptr<float>(),
            terminations.data_ptr<float>(), truncations.data_ptr<float>(),
            next_value.data_ptr<float>(), final_values.data_ptr<float>(),
            advantages.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return advantages;
    }
#endif
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        for (int64_t env = begin; env < end; ++env)
            gae_env(env, T, N, (float)gamma, (float)lam, rewards.data_ptr<float>(),
                    values.data_ptr<float>(), terminations.data_ptr<float>(),
                    truncations.data_ptr<float>(), next_value.data_ptr<float>(),
                    final_values.data_ptr<float>(), advantages.data_ptr<float>());
    });
    return advantages;
}

// An empty rollout, horizon or env count leaves nothing to compute and would return tensors
// never written (torch::empty): refuse it.
static void check_sizes(int T, int H, int N, const char* what, const std::string& shape) {
    TORCH_CHECK(T > 0 && H > 0 && N > 0, "T (steps), H (horizon) and N (envs) must each be at least 1; ",
                what, " is ", shape);
}

// The inputs both P3O bindings read: rewards and flags [T, N], bootstrap predictions [H, N].
static void check_row_inputs(const torch::Tensor& rewards, const torch::Tensor& terminations,
                             const torch::Tensor& truncations, const torch::Tensor& mu_next,
                             int T, int N, int H, const torch::Device& device) {
    check_tensor(rewards, "rewards", {T, N}, device);
    check_tensor(terminations, "terminations", {T, N}, device);
    check_tensor(truncations, "truncations", {T, N}, device);
    check_tensor(mu_next, "mu_next", {H, N}, device);
}

// Runs p3o_row for every (t, env): the CUDA kernel for CUDA tensors, else the host loop.
// Optional arrays are nullptr: weight and advantages (targets only), surprise (y - mu), live
// (not wanted).
static void p3o_rows(bool on_cuda, const torch::Device& device, int T, int N, int H,
                     bool per_state, bool normalize, bool normalize_max, const float* rewards,
                     const float* terminations, const float* truncations, const float* mu,
                     const float* mu_next, const float* weight, const float* surprise,
                     float* advantages, float* targets, float* known, float* live) {
#ifdef __CUDACC__
    if (on_cuda) {
        const c10::cuda::CUDAGuard guard(device);
        const int threads = 256;
        p3o_kernel<<<(T * N + threads - 1) / threads, threads, 0,
                     c10::cuda::getCurrentCUDAStream()>>>(
            T, N, H, per_state, normalize, normalize_max, rewards, terminations, truncations, mu,
            mu_next, weight, surprise, advantages, targets, known, live);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
    }
#endif
    at::parallel_for(0, (int64_t)T * N, 256, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx)
            p3o_row(idx / N, idx % N, T, N, H, per_state, normalize, normalize_max, rewards, terminations,
                    truncations, mu, mu_next, weight, surprise, advantages, targets, known, live);
    });
}

// Runs p3o_surprise_chain for every (j, env), j = 0 .. T+H-2: every (t, k) lies on one chain.
static void p3o_surprise_chains(bool on_cuda, const torch::Device& device, int T, int N, int H,
                                float lam, const float* rewards, const float* terminations,
                                const float* truncations, const float* mu, const float* mu_next,
                                float* surprise) {
    const int chains = (T + H - 1) * N;
#ifdef __CUDACC__
    if (on_cuda) {
        const c10::cuda::CUDAGuard guard(device);
        const int threads = 256;
        p3o_surprise_kernel<<<(chains + threads - 1) / threads, threads, 0,
                              c10::cuda::getCurrentCUDAStream()>>>(
            T, N, H, lam, rewards, terminations, truncations, mu, mu_next, surprise);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        return;
    }
#endif
    at::parallel_for(0, (int64_t)chains, 256, [&](int64_t begin, int64_t end) {
        for (int64_t idx = begin; idx < end; ++idx)
            p3o_surprise_chain(idx / N, idx % N, T, N, H, lam, rewards, terminations, truncations,
                               mu, mu_next, surprise);
    });
}

std::vector<torch::Tensor> p3o_advantage(torch::Tensor rewards, torch::Tensor terminations,
                                         torch::Tensor truncations, torch::Tensor mu,
                                         torch::Tensor mu_next, torch::Tensor weight,
                                         bool normalize_max, bool normalize, double lam) {
    TORCH_CHECK(mu.dim() == 3, "mu must be [T, H, N], got ", shape_str(mu.sizes()));
    const int T = mu.size(0), H = mu.size(1), N = mu.size(2);
    check_sizes(T, H, N, "mu [T, H, N]", shape_str(mu.sizes()));
    const auto device = mu.device();
    check_row_inputs(rewards, terminations, truncations, mu_next, T, N, H, device);
    check_tensor(mu, "mu", {T, H, N}, device);
    const bool per_state = weight.dim() == 3;
    check_tensor(weight, "weight", per_state ? at::IntArrayRef({T, H, N}) : at::IntArrayRef({H}),
                 device);
    // A NaN would make a row's norm NaN (sum: advantage 0 by the norm > 0 test; max: NaN), an
    // inf would give inf / inf: either way a silently wrong advantage, so refuse it here.
    TORCH_CHECK((weight >= 0).logical_and(weight.isfinite()).all().item<bool>(),
                "weight must be finite and >= 0 everywhere, got min ",
                std::to_string(weight.min().item<float>()), ", max ",
                std::to_string(weight.max().item<float>()));
    TORCH_CHECK(lam >= 0.0 && lam <= 1.0, "lam (the surprise's lambda) must be in [0, 1], got ",
                std::to_string(lam));
    auto advantages = torch::empty_like(rewards);
    auto targets = torch::empty_like(mu);
    auto known = torch::empty_like(mu);
    // lam = 1 is the observed surprise y - mu, computed in the row itself: no extra pass.
    torch::Tensor surprise;
    if (lam < 1.0) {
        surprise = torch::empty_like(mu);
        p3o_surprise_chains(mu.is_cuda(), device, T, N, H, (float)lam, rewards.data_ptr<float>(),
                            terminations.data_ptr<float>(), truncations.data_ptr<float>(),
                            mu.data_ptr<float>(), mu_next.data_ptr<float>(),
                            surprise.data_ptr<float>());
    }
    p3o_rows(mu.is_cuda(), device, T, N, H, per_state, normalize, normalize_max,
             rewards.data_ptr<float>(),
             terminations.data_ptr<float>(), truncations.data_ptr<float>(), mu.data_ptr<float>(),
             mu_next.data_ptr<float>(), weight.data_ptr<float>(),
             surprise.defined() ? surprise.data_ptr<float>() : nullptr,
             advantages.data_ptr<float>(), targets.data_ptr<float>(), known.data_ptr<float>(),
             nullptr);
    return {advantages, targets, known};
}

// Targets only, no advantage: what p3o.py needs to measure sigma[k] before the advantage.
// live[t, k, env] = 1 where the target is a reward of the rollout inside t's episode.
std::vector<torch::Tensor> p3o_targets(torch::Tensor rewards, torch::Tensor terminations,
                                       torch::Tensor truncations, torch::Tensor mu_next) {
    TORCH_CHECK(rewards.dim() == 2, "rewards must be [T, N], got ", shape_str(rewards.sizes()));
    TORCH_CHECK(mu_next.dim() == 2, "mu_next must be [H, N], got ", shape_str(mu_next.sizes()));
    const int T = rewards.size(0), N = rewards.size(1), H = mu_next.size(0);
    check_sizes(T, H, N, "rewards [T, N] and mu_next [H, N]",
                shape_str(rewards.sizes()) + " and " + shape_str(mu_next.sizes()));
    const auto device = rewards.device();
    check_row_inputs(rewards, terminations, truncations, mu_next, T, N, H, device);
    auto targets = torch::empty({T, H, N}, rewards.options());
    auto known = torch::empty_like(targets);
    auto live = torch::empty_like(targets);
    p3o_rows(rewards.is_cuda(), device, T, N, H, false, false, false, rewards.data_ptr<float>(),
             terminations.data_ptr<float>(), truncations.data_ptr<float>(), nullptr,
             mu_next.data_ptr<float>(), nullptr, nullptr, nullptr, targets.data_ptr<float>(),
             known.data_ptr<float>(), live.data_ptr<float>());
    return {targets, known, live};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("gae", &gae, "GAE advantages [T, N]", py::arg("rewards"), py::arg("values"),
          py::arg("terminations"), py::arg("truncations"), py::arg("next_value"),
          py::arg("final_values"), py::arg("gamma"), py::arg("lam"));
    m.def("p3o_advantage", &p3o_advantage,
          "P3O advantages [T, N], value targets [T, H, N] and known-target mask [T, H, N]",
          py::arg("rewards"), py::arg("terminations"), py::arg("truncations"), py::arg("mu"),
          py::arg("mu_next"), py::arg("weight"), py::arg("normalize_max"),
          py::arg("normalize") = true, py::arg("lam") = 1.0);
    m.def("p3o_targets", &p3o_targets,
          "P3O value targets, known-target mask and live-reward mask, each [T, H, N]",
          py::arg("rewards"), py::arg("terminations"), py::arg("truncations"), py::arg("mu_next"));
}

// kuramoto.cu: fused CUDA kernels of lotsim's CuPy backend (lotsim/dynamics/cupy_backend.py).
//
// Model (docs/physics.md; the torch reference is lotsim/dynamics/core.py):
//
//     dtheta_i/dt = omega_i + K_bi sum_j W_ij sum_m h_m sin(m (theta_j - theta_i) - alpha_m) + sqrt(2D) xi_i
//     mu d2theta_i/dt2 + dtheta_i/dt = (same right-hand side)                       (inertia mu > 0)
//
// The coupling sum uses sin(m th_j - m th_i - a) = s_j cos(m th_i + a) - c_j sin(m th_i + a) with
// s = sin(m th), c = cos(m th): one sincos per node and harmonic per stage (a pass over the nodes), then a
// gather of the precomputed (s, c) over the in-neighbours. cos(m th_i + a) and sin(m th_i + a) come from
// the node's own (s, c) and the host-computed (cos a, sin a), so a stage costs no extra transcendental.
//
// Layouts (row-major, every array is a contiguous device buffer of the real type T unless noted):
//   theta, velocity, acc_*, vel_stage  (B, N)          B replicas (batch), N nodes
//   sc                                 (B, M, N, 2)    (sin m th, cos m th) per replica, harmonic, node
//   harm                               (M, 4)          rows (m, h_m, cos alpha_m, sin alpha_m), h_m != 0
//   omega[b * omega_stride_b + i * omega_stride_n]        strides 0 broadcast: (N,), (B, 1), (B, N), ...
//   coupling[b * coupling_stride_b + i * coupling_stride_n]   per replica K_b, per node K_i, or both
//   neighbour table: index (k, N) int32, weight (k, N) T    TRANSPOSED so that thread i reads
//                    index[kk * N + i] coalesced; padding entries point at i with weight 0
//   CSR: indptr (N + 1) int32, indices (E) int32, values (E) T     row i = in-neighbours j of i
//   mean field: W_ij = scale for j != i, so (W x)_i = scale (sum_j x_j - x_i); sums (B, M, 2) hold
//               sum_j (s_j, c_j) of the stage's input, partials (B, M, gridDim.x, 2) the block sums
//               of its output, reduced by kuramoto_reduce before the next stage (deterministic order).
//
// Kernels (each a template over T = float | double, instantiated by NVRTC name_expressions
// "name<float>" / "name<double>" and explicitly below for the nvcc compile check):
//   kuramoto_sincos             sc = (sin m th, cos m th) of theta (+ mean-field block partials)
//   kuramoto_reduce             sums the block partials of one (replica, harmonic) row per block
//   kuramoto_stage_{neighbour,csr,meanfield}   one fused Runge-Kutta stage (Euler, Heun, RK4,
//                               Euler-Maruyama, stochastic Heun; first order or with inertia)
// Launch configuration: blockDim = (256, 1, 1) for all kernels (any multiple of 32 up to 1024 works);
// node kernels use gridDim = (ceil(N / 256), B), reductions one block per output row. gridDim.y <= 65535
// bounds B; the host checks it.
//
// Fused Runge-Kutta stage (kuramoto_stage_*, one launch per stage, no host sync in between):
//   k      = f(y_s)                      y_s is known only through sc_in (and vel_stage with inertia)
//   acc    = (s == 0 ? 0 : acc) + stage_weight * k
//   s < last:  y_{s+1} = y_0 + next_offset * k (+ noise),  sc_out = sincos(m th_{s+1})
//   s == last: y_0    <- y_0 + final_dt * acc (+ noise),   sc_out = sincos(m th_new)  (ready for the next step)
// RK4: weights (1, 2, 2, 1), offsets (dt/2, dt/2, dt), final_dt = dt/6; Heun: (1, 1), (dt), dt/2;
// Euler: (1), final_dt = dt: the same operation order as core._rk_combine. Stochastic Heun adds the same
// increment sigma * xi (sigma = sqrt(2 D dt)) to the predictor and to the corrector; with inertia the
// increment enters the velocity as sigma * xi / mu, as in the reference.
//
// Noise: xi(b, i, step) ~ N(0, 1) from Philox4x32-10 (Salmon et al., SC'11; Random123 constants) with
// key = seed (64 bit) and counter = (i, b, step_lo, step_hi), then Box-Muller. Counter-based and
// stateless: the increment of a step depends only on (seed, step, b, i), so a resumed run is
// bit-identical, and the predictor and corrector recompute the same xi instead of storing it.
// It is NOT the torch backend's stream (that uses torch.Generator): noisy runs agree statistically.
//
// Global memory traffic of a fused RK4 step, per (replica, node), s = sizeof(T), M harmonics, k table
// entries, assuming each sc element is fetched from DRAM once per stage (neighbours hit L1/L2):
//   per stage: theta_0 s, sc_in 2Ms, sc_out 2Ms, omega s (per node; ~0 if per replica), acc r/w (first
//   stage write only, last stage read only), neighbour table 4k (+ ks unless the weights are uniform);
//   once: theta write s.
//   => (15 + 16M) s + 4 * table bytes. f64, M = 1, square lattice (k = 4, uniform weights): 248 + 64 =
//   312 B/step; f32: 124 + 64 = 188 B/step; with per-edge weights add 4 * 4 * s. Mean field: no table.
//   Inertia adds v_0 (4s), vel_stage (6s), acc_vel (6s), v write (s) = 17s.
//   Plus one sincos pass per step_fn call (not per step).
//
// Compile check (no GPU needed; tested with nvcc 13.0, V13.0.88):
//   nvcc --ptx -std=c++17 -arch=sm_80 -Werror all-warnings cuda/kuramoto.cu -o kuramoto.ptx   (and sm_90)
// Runtime: cupy.RawModule(code=<this file>, options=("-std=c++17",), name_expressions=[...]).
// Host emulation (tests only): g++ -std=c++17 -DLOTSIM_HOST_EMULATION, see cuda/host_emulation.cpp; it
// runs these same kernel bodies thread by thread on the CPU.
//
// No --use_fast_math: phases are unwrapped (they grow like omega t), and __sinf loses accuracy there.

#ifdef LOTSIM_HOST_EMULATION
// ---------------------------------------------------------------------------------------------------
// Host emulation shim: the kernels below become plain C++ functions that host_emulation.cpp calls once per
// emulated thread, with blockIdx/threadIdx set by the caller. No CUDA headers are needed.
#include <cmath>
#define __host__
#define __device__
#define __forceinline__ inline
#define LOTSIM_KERNEL inline
#define LOTSIM_UNROLL
struct float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
struct LotsimDim3 { unsigned int x, y, z; };
static LotsimDim3 blockIdx, threadIdx, blockDim, gridDim;
#else
#define LOTSIM_KERNEL __global__
#define LOTSIM_UNROLL _Pragma("unroll")
#endif

#define LOTSIM_MAX_HARMONICS 8
#define LOTSIM_HD __host__ __device__ __forceinline__

template <typename T> struct LotsimVec2;
template <> struct LotsimVec2<float> { typedef float2 type; };
template <> struct LotsimVec2<double> { typedef double2 type; };

// ---------------------------------------------------------------------------------------------------
// Math helpers (overloads for both real types, host and device)

LOTSIM_HD void lot_sincos(float x, float* s, float* c) {
#ifdef LOTSIM_HOST_EMULATION
  *s = std::sin(x); *c = std::cos(x);
#else
  sincosf(x, s, c);
#endif
}
LOTSIM_HD void lot_sincos(double x, double* s, double* c) {
#ifdef LOTSIM_HOST_EMULATION
  *s = std::sin(x); *c = std::cos(x);
#else
  sincos(x, s, c);
#endif
}
#ifdef LOTSIM_HOST_EMULATION
LOTSIM_HD float lot_sqrt(float x) { return std::sqrt(x); }
LOTSIM_HD double lot_sqrt(double x) { return std::sqrt(x); }
LOTSIM_HD float lot_log(float x) { return std::log(x); }
LOTSIM_HD double lot_log(double x) { return std::log(x); }
LOTSIM_HD float lot_cos(float x) { return std::cos(x); }
LOTSIM_HD double lot_cos(double x) { return std::cos(x); }
#else
LOTSIM_HD float lot_sqrt(float x) { return sqrtf(x); }
LOTSIM_HD double lot_sqrt(double x) { return sqrt(x); }
LOTSIM_HD float lot_log(float x) { return logf(x); }
LOTSIM_HD double lot_log(double x) { return log(x); }
LOTSIM_HD float lot_cos(float x) { return cosf(x); }
LOTSIM_HD double lot_cos(double x) { return cos(x); }
#endif

// ---------------------------------------------------------------------------------------------------
// Philox4x32-10 counter-based generator (Random123 constants and round structure) and Box-Muller.

struct LotsimPhilox { unsigned int v[4]; };

LOTSIM_HD unsigned int lot_mulhi(unsigned int a, unsigned int b) {
  return (unsigned int)(((unsigned long long)a * (unsigned long long)b) >> 32);
}

LOTSIM_HD LotsimPhilox lot_philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                         unsigned int k0, unsigned int k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    const unsigned int hi0 = lot_mulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    const unsigned int hi1 = lot_mulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    const unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
  }
  LotsimPhilox out;
  out.v[0] = c0; out.v[1] = c1; out.v[2] = c2; out.v[3] = c3;
  return out;
}

// Uniforms u1 in (0, 1] (log-safe) and u2 in [0, 1) from the four words; z = sqrt(-2 ln u1) cos(2 pi u2).
LOTSIM_HD float lot_box_muller(const LotsimPhilox& r, float) {
  const float u1 = (float)((r.v[0] >> 8) + 1u) * 5.9604644775390625e-8f;   // 2^-24
  const float u2 = (float)(r.v[2] >> 8) * 5.9604644775390625e-8f;
  return lot_sqrt(-2.0f * lot_log(u1)) * lot_cos(6.283185307179586f * u2);
}
LOTSIM_HD double lot_box_muller(const LotsimPhilox& r, double) {
  const double u1 = ((double)((r.v[0] >> 5) * 67108864ull + (r.v[1] >> 6)) + 1.0) * 1.1102230246251565e-16;
  const double u2 = (double)((r.v[2] >> 5) * 67108864ull + (r.v[3] >> 6)) * 1.1102230246251565e-16;  // 2^-53
  return lot_sqrt(-2.0 * lot_log(u1)) * lot_cos(6.283185307179586 * u2);
}

template <typename T>
LOTSIM_HD T lot_normal(unsigned long long seed, unsigned long long step, int b, int i) {
  const LotsimPhilox r = lot_philox4x32_10((unsigned int)i, (unsigned int)b, (unsigned int)step,
                                           (unsigned int)(step >> 32), (unsigned int)seed,
                                           (unsigned int)(seed >> 32));
  return lot_box_muller(r, T(0));
}

// ---------------------------------------------------------------------------------------------------
// Block reduction of `count` (x, y) pairs held by every thread. Returns true in exactly one thread of
// the block, whose `vals` then hold the block totals. Every thread of the block must call it.
// Summation order is fixed (warp shuffles, then warps in order), so results are deterministic.

template <typename T>
__device__ __forceinline__ bool lot_block_sum(T* vals, int count) {
#ifdef LOTSIM_HOST_EMULATION
  // threads of a block run one after the other: accumulate, and let the last thread report
  static T total[2 * LOTSIM_MAX_HARMONICS];
  for (int v = 0; v < 2 * count; ++v) {
    total[v] = (threadIdx.x == 0 ? T(0) : total[v]) + vals[v];
  }
  if (threadIdx.x + 1 != blockDim.x) return false;
  for (int v = 0; v < 2 * count; ++v) vals[v] = total[v];
  return true;
#else
  __shared__ T warp_sums[32][2 * LOTSIM_MAX_HARMONICS];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
LOTSIM_UNROLL
  for (int v = 0; v < 2 * LOTSIM_MAX_HARMONICS; ++v) {
    if (v < 2 * count) {
      T x = vals[v];
      for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_down_sync(0xffffffffu, x, offset);
      if (lane == 0) warp_sums[warp][v] = x;
    }
  }
  __syncthreads();
  if (threadIdx.x != 0) return false;
  const int warps = (blockDim.x + 31) >> 5;
LOTSIM_UNROLL
  for (int v = 0; v < 2 * LOTSIM_MAX_HARMONICS; ++v) {
    if (v >= 2 * count) break;
    T x = warp_sums[0][v];
    for (int w = 1; w < warps; ++w) x += warp_sums[w][v];
    vals[v] = x;
  }
  return true;
#endif
}

// ---------------------------------------------------------------------------------------------------
// The system (omega, K, harmonics) and the three coupling operators

template <typename T>
struct LotsimSystem {
  const T* omega; long long omega_stride_b; long long omega_stride_n;
  const T* coupling; long long coupling_stride_b; long long coupling_stride_n;
  const T* harm; int n_harm; int n;
};

// Each operator returns S_q = sum_j W_ij s_j and C_q = sum_j W_ij c_j for every harmonic q, where sc_b
// points at the (M, N, 2) block of replica b.
template <typename T>
struct LotsimNeighbourOp {
  const int* index; const T* weight; int k; int uniform; T uniform_weight;
  LOTSIM_HD void aggregate(const T* __restrict__ sc_b, int n, int n_harm, int, int i, T* S, T* C) const {
    typedef typename LotsimVec2<T>::type V2;
    const V2* sc = reinterpret_cast<const V2*>(sc_b);
    for (int kk = 0; kk < k; ++kk) {
      const long long at = (long long)kk * n + i;
      const int j = index[at];
      const T w = uniform ? uniform_weight : weight[at];
LOTSIM_UNROLL
      for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
        if (q < n_harm) {
          const V2 v = sc[(long long)q * n + j];
          S[q] += w * v.x;
          C[q] += w * v.y;
        }
      }
    }
  }
};

template <typename T>
struct LotsimCsrOp {
  const int* indptr; const int* indices; const T* values;
  LOTSIM_HD void aggregate(const T* __restrict__ sc_b, int n, int n_harm, int, int i, T* S, T* C) const {
    typedef typename LotsimVec2<T>::type V2;
    const V2* sc = reinterpret_cast<const V2*>(sc_b);
    const int end = indptr[i + 1];
    for (int e = indptr[i]; e < end; ++e) {
      const int j = indices[e];
      const T w = values[e];
LOTSIM_UNROLL
      for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
        if (q < n_harm) {
          const V2 v = sc[(long long)q * n + j];
          S[q] += w * v.x;
          C[q] += w * v.y;
        }
      }
    }
  }
};

template <typename T>
struct LotsimMeanFieldOp {
  const T* sums; T scale;
  LOTSIM_HD void aggregate(const T* __restrict__ sc_b, int n, int n_harm, int b, int i, T* S, T* C) const {
LOTSIM_UNROLL
    for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
      if (q < n_harm) {
        const long long own = ((long long)q * n + i) * 2;
        const long long row = ((long long)b * n_harm + q) * 2;
        S[q] = scale * (sums[row] - sc_b[own]);
        C[q] = scale * (sums[row + 1] - sc_b[own + 1]);
      }
    }
  }
};

// omega_i + K_bi sum_q h_q (S_q cos(m_q th_i + a_q) - C_q sin(m_q th_i + a_q)) at node i of replica b
template <typename T, typename Op>
LOTSIM_HD T lot_drift(const LotsimSystem<T>& sys, const Op& op, const T* __restrict__ sc, int b, int i) {
  const int n = sys.n, n_harm = sys.n_harm;
  const T* sc_b = sc + (long long)b * n_harm * n * 2;
  T S[LOTSIM_MAX_HARMONICS], C[LOTSIM_MAX_HARMONICS];
LOTSIM_UNROLL
  for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) { S[q] = T(0); C[q] = T(0); }
  op.aggregate(sc_b, n, n_harm, b, i, S, C);
  T total = T(0);
LOTSIM_UNROLL
  for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
    if (q >= n_harm) break;
    const T h = sys.harm[4 * q + 1], cos_a = sys.harm[4 * q + 2], sin_a = sys.harm[4 * q + 3];
    const long long own = ((long long)q * n + i) * 2;
    const T s = sc_b[own], c = sc_b[own + 1];
    const T cos_phase = c * cos_a - s * sin_a;  // cos(m th_i + a)
    const T sin_phase = s * cos_a + c * sin_a;  // sin(m th_i + a)
    total += h * (S[q] * cos_phase - C[q] * sin_phase);
  }
  const T omega = sys.omega[b * sys.omega_stride_b + i * sys.omega_stride_n];
  const T coupling = sys.coupling[b * sys.coupling_stride_b + i * sys.coupling_stride_n];
  return omega + coupling * total;
}

// Writes (sin m th, cos m th) of node i for every harmonic to sc and into vals (for block partials).
template <typename T>
LOTSIM_HD void lot_store_sincos(const LotsimSystem<T>& sys, T theta, T* sc, int b, int i, T* vals) {
LOTSIM_UNROLL
  for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
    if (q >= sys.n_harm) break;
    T s, c;
    lot_sincos(sys.harm[4 * q] * theta, &s, &c);
    const long long at = (((long long)b * sys.n_harm + q) * sys.n + i) * 2;
    sc[at] = s;
    sc[at + 1] = c;
    vals[2 * q] = s;
    vals[2 * q + 1] = c;
  }
}

// Writes the block totals of vals into partials (B, M, gridDim.x, 2); all threads must call it.
template <typename T>
__device__ __forceinline__ void lot_store_partials(T* vals, int n_harm, T* partials, int b) {
  if (lot_block_sum(vals, n_harm)) {
LOTSIM_UNROLL
    for (int q = 0; q < LOTSIM_MAX_HARMONICS; ++q) {
      if (q >= n_harm) break;
      const long long at = (((long long)b * n_harm + q) * gridDim.x + blockIdx.x) * 2;
      partials[at] = vals[2 * q];
      partials[at + 1] = vals[2 * q + 1];
    }
  }
}

// One fused Runge-Kutta stage at node i of replica b (see the header); vals receives the new (s, c).
template <typename T, typename Op>
LOTSIM_HD void lot_stage(const LotsimSystem<T>& sys, const Op& op, T* theta, T* velocity, T* vel_stage,
                         T* acc_theta, T* acc_vel, const T* __restrict__ sc_in, T* sc_out, int stage,
                         int last, T stage_weight, T next_offset, T final_dt, int inertial, T mu, T sigma,
                         unsigned long long seed, unsigned long long step, int b, int i, T* vals) {
  const long long at = (long long)b * sys.n + i;
  const T f = lot_drift(sys, op, sc_in, b, i);
  const T kick = sigma != T(0) ? sigma * lot_normal<T>(seed, step, b, i) : T(0);
  const T theta0 = theta[at];
  T theta_next;
  if (!inertial) {
    const T acc = stage == 0 ? stage_weight * f : acc_theta[at] + stage_weight * f;
    if (!last) {
      theta_next = theta0 + next_offset * f + kick;
      acc_theta[at] = acc;
    } else {
      theta_next = theta0 + final_dt * acc + kick;
      theta[at] = theta_next;
    }
  } else {
    // y = (theta, v), f(y) = (v, (drift(theta) - v) / mu); the noise enters the velocity equation
    const T v0 = velocity[at];
    const T v = stage == 0 ? v0 : vel_stage[at];
    const T kv = (f - v) / mu;
    const T acc_t = stage == 0 ? stage_weight * v : acc_theta[at] + stage_weight * v;
    const T acc_v = stage == 0 ? stage_weight * kv : acc_vel[at] + stage_weight * kv;
    const T kick_v = kick / mu;
    if (!last) {
      theta_next = theta0 + next_offset * v;
      vel_stage[at] = v0 + next_offset * kv + kick_v;
      acc_theta[at] = acc_t;
      acc_vel[at] = acc_v;
    } else {
      theta_next = theta0 + final_dt * acc_t;
      theta[at] = theta_next;
      velocity[at] = v0 + final_dt * acc_v + kick_v;
    }
  }
  lot_store_sincos(sys, theta_next, sc_out, b, i, vals);
}

// ---------------------------------------------------------------------------------------------------
// Kernels

// kuramoto_sincos: sc[b, q, i] = (sin m_q theta[b, i], cos m_q theta[b, i]); with want_partials != 0
// also the block sums into partials (B, M, gridDim.x, 2) for the mean field.
// Reads N s, writes 2MN s. Launch: grid (ceil(N / 256), B), block 256.
template <typename T>
LOTSIM_KERNEL void kuramoto_sincos(const T* __restrict__ theta, T* sc, T* partials, int want_partials,
                                   const T* __restrict__ harm, int n_harm, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  LotsimSystem<T> sys = {};
  sys.harm = harm; sys.n_harm = n_harm; sys.n = n;
  T vals[2 * LOTSIM_MAX_HARMONICS];
LOTSIM_UNROLL
  for (int v = 0; v < 2 * LOTSIM_MAX_HARMONICS; ++v) vals[v] = T(0);
  if (i < n) lot_store_sincos(sys, theta[(long long)b * n + i], sc, b, i, vals);
  if (want_partials) lot_store_partials(vals, n_harm, partials, b);
}

// kuramoto_reduce: out[row] = sum_p partials[row, p] for (x, y) pairs, one block per row.
// Launch: grid (rows,), block 256.
template <typename T>
LOTSIM_KERNEL void kuramoto_reduce(const T* __restrict__ partials, T* out, int n_partials) {
  const long long row = blockIdx.x;
  T vals[2] = {T(0), T(0)};
  for (int p = threadIdx.x; p < n_partials; p += blockDim.x) {
    vals[0] += partials[(row * n_partials + p) * 2];
    vals[1] += partials[(row * n_partials + p) * 2 + 1];
  }
  if (lot_block_sum(vals, 1)) {
    out[row * 2] = vals[0];
    out[row * 2 + 1] = vals[1];
  }
}

// kuramoto_stage_*: one fused Runge-Kutta stage (header). theta/velocity hold y_0 and receive y_new at
// the last stage; vel_stage, acc_theta, acc_vel are (B, N) scratch (velocity, vel_stage and acc_vel
// are unused without inertia); sc_in and sc_out must be different buffers.
// Launch: grid (ceil(N / 256), B), block 256.
template <typename T>
LOTSIM_KERNEL void kuramoto_stage_neighbour(
    T* theta, T* velocity, T* vel_stage, T* acc_theta, T* acc_vel, const T* __restrict__ sc_in, T* sc_out,
    const T* __restrict__ omega, long long omega_stride_b, long long omega_stride_n,
    const T* __restrict__ coupling, long long coupling_stride_b, long long coupling_stride_n,
    const T* __restrict__ harm, int n_harm, int n, const int* __restrict__ nbr_index,
    const T* __restrict__ nbr_weight, int nbr_k, int nbr_uniform, T nbr_uniform_weight, int stage, int last,
    T stage_weight, T next_offset, T final_dt, int inertial, T mu, T sigma, unsigned long long seed,
    unsigned long long step) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (i >= n) return;
  const LotsimSystem<T> sys = {omega, omega_stride_b, omega_stride_n, coupling, coupling_stride_b,
                               coupling_stride_n, harm, n_harm, n};
  const LotsimNeighbourOp<T> op = {nbr_index, nbr_weight, nbr_k, nbr_uniform, nbr_uniform_weight};
  T vals[2 * LOTSIM_MAX_HARMONICS];
  lot_stage(sys, op, theta, velocity, vel_stage, acc_theta, acc_vel, sc_in, sc_out, stage, last,
            stage_weight, next_offset, final_dt, inertial, mu, sigma, seed, step, b, i, vals);
}

template <typename T>
LOTSIM_KERNEL void kuramoto_stage_csr(
    T* theta, T* velocity, T* vel_stage, T* acc_theta, T* acc_vel, const T* __restrict__ sc_in, T* sc_out,
    const T* __restrict__ omega, long long omega_stride_b, long long omega_stride_n,
    const T* __restrict__ coupling, long long coupling_stride_b, long long coupling_stride_n,
    const T* __restrict__ harm, int n_harm, int n, const int* __restrict__ csr_indptr,
    const int* __restrict__ csr_indices, const T* __restrict__ csr_values, int stage, int last,
    T stage_weight, T next_offset, T final_dt, int inertial, T mu, T sigma, unsigned long long seed,
    unsigned long long step) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  if (i >= n) return;
  const LotsimSystem<T> sys = {omega, omega_stride_b, omega_stride_n, coupling, coupling_stride_b,
                               coupling_stride_n, harm, n_harm, n};
  const LotsimCsrOp<T> op = {csr_indptr, csr_indices, csr_values};
  T vals[2 * LOTSIM_MAX_HARMONICS];
  lot_stage(sys, op, theta, velocity, vel_stage, acc_theta, acc_vel, sc_in, sc_out, stage, last,
            stage_weight, next_offset, final_dt, inertial, mu, sigma, seed, step, b, i, vals);
}

// The mean-field stage also writes the block partials of sc_out; kuramoto_reduce turns them into the
// sums the next stage reads. No early return: every thread takes part in the block reduction.
template <typename T>
LOTSIM_KERNEL void kuramoto_stage_meanfield(
    T* theta, T* velocity, T* vel_stage, T* acc_theta, T* acc_vel, const T* __restrict__ sc_in, T* sc_out,
    const T* __restrict__ omega, long long omega_stride_b, long long omega_stride_n,
    const T* __restrict__ coupling, long long coupling_stride_b, long long coupling_stride_n,
    const T* __restrict__ harm, int n_harm, int n, const T* __restrict__ mf_sums, T* mf_partials,
    T mf_scale, int stage, int last, T stage_weight, T next_offset, T final_dt, int inertial, T mu, T sigma,
    unsigned long long seed, unsigned long long step) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x, b = blockIdx.y;
  const LotsimSystem<T> sys = {omega, omega_stride_b, omega_stride_n, coupling, coupling_stride_b,
                               coupling_stride_n, harm, n_harm, n};
  const LotsimMeanFieldOp<T> op = {mf_sums, mf_scale};
  T vals[2 * LOTSIM_MAX_HARMONICS];
LOTSIM_UNROLL
  for (int v = 0; v < 2 * LOTSIM_MAX_HARMONICS; ++v) vals[v] = T(0);
  if (i < n) {
    lot_stage(sys, op, theta, velocity, vel_stage, acc_theta, acc_vel, sc_in, sc_out, stage, last,
              stage_weight, next_offset, final_dt, inertial, mu, sigma, seed, step, b, i, vals);
  }
  lot_store_partials(vals, n_harm, mf_partials, b);
}

// ---------------------------------------------------------------------------------------------------
// Explicit instantiations for the nvcc compile check (NVRTC instantiates through name_expressions).
// Keep in sync with KERNELS in lotsim/dynamics/cuda_kernels.py (tests/test_cuda_compile.py checks it).
#if !defined(__CUDACC_RTC__) && !defined(LOTSIM_HOST_EMULATION)
#define LOTSIM_INSTANTIATE(name)                        \
  template __global__ decltype(name<float>) name<float>; \
  template __global__ decltype(name<double>) name<double>;
LOTSIM_INSTANTIATE(kuramoto_sincos)
LOTSIM_INSTANTIATE(kuramoto_reduce)
LOTSIM_INSTANTIATE(kuramoto_stage_neighbour)
LOTSIM_INSTANTIATE(kuramoto_stage_csr)
LOTSIM_INSTANTIATE(kuramoto_stage_meanfield)
#undef LOTSIM_INSTANTIATE
#endif

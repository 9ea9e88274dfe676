// Fused CPU selective scan (Mamba S6), forward and backward, for ablate/models/ssm.py.
//
// Layout (all fp32, contiguous; the Python wrapper casts and transposes):
//   u, delta: (Bt, G, H, L)   A: (G, H, N)   Bm, Cm: (Bt, G, L, N)  -- time-major per group, so the
//   N states of one step are one contiguous vector.
//   y: (Bt, G, H, L)   last: (Bt, G, H, N)
//   h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = sum_n C_t h_t
// Each (batch, group, channel) row walks L once with its N states in registers; nothing of size
// L x N is materialised. Backward recomputes the states chunk by chunk from stored chunk-boundary
// states (kChunk steps of N floats in an L1-sized buffer) and runs the reverse recurrence.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 64;  // steps recomputed per backward chunk: 64 x N floats stay in L1

// exp(x) to ~1 ulp (Cephes expf): range reduction by ln 2 and a degree-7 polynomial. Plain float
// code, so `omp simd` loops vectorise it; libm's expf would stay scalar without -ffast-math.
#pragma omp declare simd
static inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  float fx = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * x * x + x + 1.0f;
  int32_t bits = (static_cast<int32_t>(fx) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// One row: NS > 0 fixes N at compile time (states in registers), NS == 0 takes n_state.
template <int NS>
void forward_row(const float* u, const float* dl, const float* A, const float* Bm, const float* Cm,
                 float* y, float* last, int64_t L, int64_t n_state, float* h) {
  const int64_t N = NS > 0 ? NS : n_state;
  for (int64_t n = 0; n < N; ++n) h[n] = 0.f;
  for (int64_t t = 0; t < L; ++t) {
    const float dt = dl[t], x = dt * u[t];
    const float* b = Bm + t * N;
    const float* c = Cm + t * N;
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t n = 0; n < N; ++n) {
      h[n] = fast_exp(dt * A[n]) * h[n] + x * b[n];
      acc += c[n] * h[n];
    }
    y[t] = acc;
  }
  for (int64_t n = 0; n < N; ++n) last[n] = h[n];
}

template <int NS>
void backward_row(const float* u, const float* dl, const float* A, const float* Bm, const float* Cm,
                  const float* gy, const float* glast, float* du, float* ddl, float* dA, float* dB, float* dC,
                  int64_t L, int64_t n_state, float* work) {
  const int64_t N = NS > 0 ? NS : n_state;
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;
  float* bound = work;                    // (n_chunks, N): state before each chunk
  float* a = bound + n_chunks * N;        // (kChunk, N): exp(delta_t A) within the chunk
  float* hs = a + kChunk * N;             // (kChunk, N): states within the chunk
  float* carry = hs + kChunk * N;         // (N): a_{t+1} dL/dh_{t+1}
  float* h = carry + N;                   // (N)
  for (int64_t n = 0; n < N; ++n) h[n] = 0.f;
  for (int64_t t = 0; t < L; ++t) {  // pass 1: states at chunk boundaries only
    if (t % kChunk == 0) std::memcpy(bound + (t / kChunk) * N, h, N * sizeof(float));
    const float dt = dl[t], x = dt * u[t];
    const float* b = Bm + t * N;
#pragma omp simd
    for (int64_t n = 0; n < N; ++n) h[n] = fast_exp(dt * A[n]) * h[n] + x * b[n];
  }
  for (int64_t n = 0; n < N; ++n) carry[n] = glast[n];
  for (int64_t c = n_chunks - 1; c >= 0; --c) {  // pass 2: recompute a chunk, then walk it back
    const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
    const float* prev = bound + c * N;
    for (int64_t t = t0; t < t1; ++t) {
      const float dt = dl[t], x = dt * u[t];
      const float* b = Bm + t * N;
      float* at = a + (t - t0) * N;
      float* ht = hs + (t - t0) * N;
#pragma omp simd
      for (int64_t n = 0; n < N; ++n) {
        at[n] = fast_exp(dt * A[n]);
        ht[n] = at[n] * prev[n] + x * b[n];
      }
      prev = ht;
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const float dt = dl[t], ut = u[t], gyt = gy[t];
      const float* b = Bm + t * N;
      const float* cc = Cm + t * N;
      const float* at = a + (t - t0) * N;
      const float* ht = hs + (t - t0) * N;
      const float* hp = t > t0 ? ht - N : bound + c * N;  // h_{t-1}
      float* db = dB + t * N;
      float* dc = dC + t * N;
      float gb = 0.f, ga = 0.f;
#pragma omp simd reduction(+ : gb, ga)
      for (int64_t n = 0; n < N; ++n) {
        const float gn = carry[n] + cc[n] * gyt;  // g_t = a_{t+1} g_{t+1} + C_t gy_t
        dc[n] += gyt * ht[n];
        db[n] += gn * dt * ut;
        gb += gn * b[n];
        const float gA = gn * at[n] * hp[n];  // grad of (delta_t A_n)
        dA[n] += gA * dt;
        ga += gA * A[n];
        carry[n] = at[n] * gn;
      }
      du[t] = gb * dt;
      ddl[t] = gb * ut + ga;
    }
  }
}

void check(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == dim,
              "ablate_scan: ", name, " must be a contiguous CPU float32 tensor with ", dim, " dims, got ",
              t.sizes(), " ", t.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                            const at::Tensor& Bm, const at::Tensor& Cm) {
  check(u, 4, "u"); check(delta, 4, "delta"); check(A, 3, "A"); check(Bm, 4, "Bm"); check(Cm, 4, "Cm");
  const int64_t Bt = u.size(0), G = u.size(1), H = u.size(2), L = u.size(3), N = A.size(2);
  auto y = at::empty_like(u);
  auto last = at::empty({Bt, G, H, N}, u.options());
  const float *pu = u.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pl = last.data_ptr<float>();
  at::parallel_for(0, Bt * G * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(N);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bg = r / H, gh = (bg % G) * H + r % H;
      auto* f = N == 16 ? forward_row<16> : forward_row<0>;
      f(pu + r * L, pd + r * L, pA + gh * N, pB + bg * L * N, pC + bg * L * N, py + r * L, pl + r * N, L, N,
        h.data());
    }
  });
  return {y, last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
    const at::Tensor& gy, const at::Tensor& glast) {
  check(u, 4, "u"); check(delta, 4, "delta"); check(A, 3, "A"); check(Bm, 4, "Bm"); check(Cm, 4, "Cm");
  check(gy, 4, "gy"); check(glast, 4, "glast");
  const int64_t Bt = u.size(0), G = u.size(1), H = u.size(2), L = u.size(3), N = A.size(2);
  // dB, dC sum over the channels of a group and dA over the batch: each task owns one
  // (split, batch, group) slice of channels and writes partial sums that are added up below.
  const int64_t threads = at::get_num_threads();
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(H, (2 * threads + Bt * G - 1) / (Bt * G)));
  auto du = at::empty_like(u), ddelta = at::empty_like(delta);
  auto dA = at::zeros({Bt, G, H, N}, u.options());
  auto dB = at::zeros({splits, Bt, G, L, N}, u.options());
  auto dC = at::zeros({splits, Bt, G, L, N}, u.options());
  const float *pu = u.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>();
  const float *pgy = gy.data_ptr<float>(), *pgl = glast.data_ptr<float>();
  float *pdu = du.data_ptr<float>(), *pdd = ddelta.data_ptr<float>(), *pdA = dA.data_ptr<float>();
  float *pdB = dB.data_ptr<float>(), *pdC = dC.data_ptr<float>();
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;
  at::parallel_for(0, splits * Bt * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work((n_chunks + 2 * kChunk + 2) * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / (Bt * G), bg = task % (Bt * G), g = bg % G;
      const int64_t h0 = s * H / splits, h1 = (s + 1) * H / splits;
      for (int64_t hh = h0; hh < h1; ++hh) {
        const int64_t r = bg * H + hh, gh = g * H + hh;
        auto* f = N == 16 ? backward_row<16> : backward_row<0>;
        f(pu + r * L, pd + r * L, pA + gh * N, pB + bg * L * N, pC + bg * L * N, pgy + r * L, pgl + r * N,
          pdu + r * L, pdd + r * L, pdA + r * N, pdB + task * L * N, pdC + task * L * N, L, N, work.data());
      }
    }
  });
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0)};
}

}  // namespace

TORCH_LIBRARY(ablate_scan_cpp, m) {
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm) -> (Tensor, Tensor)", &scan_fwd);
  m.def("bwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm, Tensor gy, Tensor glast)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)", &scan_bwd);
}

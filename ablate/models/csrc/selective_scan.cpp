// Fused CPU selective scan (Mamba S6), forward and backward, for ablate/models/ssm.py.
//
// Layout (all fp32, contiguous; the Python wrapper casts and transposes):
//   u, delta: (Bt, G, H, L)   A: (G, H, N)   Bm, Cm: (Bt, G, L, N)  -- time-major per group, so the
//   N states of one step are one contiguous vector.
//   y: (Bt, G, H, L)   last: (Bt, G, H, N)
//   h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t;  y_t = sum_n C_t h_t
// Each (batch, group, channel) row walks L once with its N states in registers, kRows channels of a
// group at a time (they share B_t and C_t); nothing of size L x N is materialised. Forward keeps
// the state before every chunk of kChunk steps (1/kChunk of the states); backward recomputes the
// states chunk by chunk from them (kChunk steps in an L1-sized buffer) and runs the reverse
// recurrence.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kChunk = 32;  // steps recomputed per backward chunk: 2 x 32 x kRows x N floats stay in L1
constexpr int kRows = 4;        // channels walked together (see forward_rows)

// Chunks of kChunk steps in L steps (the last one may be partial): forward keeps one state per chunk.
constexpr int64_t chunks(int64_t L) { return (L + kChunk - 1) / kChunk; }

// The N states of a step are processed W at a time as one value of type V: V = Vec16 (GCC vector
// extension: one AVX-512 register, two AVX2 ones) when N is a multiple of 16, else V = float.
// Written out explicitly because gcc's auto-vectoriser leaves these short loops scalar.
typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));
typedef int32_t Int16 __attribute__((vector_size(64)));

template <typename V> struct Lanes;
template <> struct Lanes<float> {
  static constexpr int64_t W = 1;
  using I = int32_t;
  static float sum(float v) { return v; }
  static int32_t to_int(float v) { return static_cast<int32_t>(v); }
};
template <> struct Lanes<Vec16> {
  static constexpr int64_t W = 16;
  using I = Int16;
  static float sum(Vec16 v) {  // pairwise halves: 4 dependent adds instead of 15
    Vec8 a, b;
    std::memcpy(&a, &v, 32);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
    a += b;
    Vec4 c, d;
    std::memcpy(&c, &a, 16);
    std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
    c += d;
    return (c[0] + c[2]) + (c[1] + c[3]);
  }
  static Int16 to_int(Vec16 v) { return __builtin_convertvector(v, Int16); }
};

template <typename V> static inline V load(const float* p) { V v; std::memcpy(&v, p, sizeof(V)); return v; }
template <typename V> static inline void store(float* p, V v) { std::memcpy(p, &v, sizeof(V)); }
template <typename V> static inline V splat(float x) { return V{} + x; }

// exp(x) to ~1 ulp (Cephes expf): round x/ln2 to nearest with the 1.5*2^23 trick, reduce by ln 2 in
// two parts, degree-7 polynomial, scale by 2^n through the exponent bits. Valid for any V.
template <typename V> static inline V fast_exp(V x) {
  using I = typename Lanes<V>::I;
  const V lo = splat<V>(-87.3f), hi = splat<V>(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V fx = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * x * x + x + 1.0f;
  const I bits = (Lanes<V>::to_int(fx) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

// R channels of one (batch, group), walked together: they share B_t and C_t, so each is loaded once
// per step for R channels, and the R recurrences are independent chains the CPU overlaps. Rows of
// channel r start at r*L (u, dl, y) and r*N (A, last): consecutive channels are contiguous in the
// layouts above. h: R*N floats of scratch for the states.
template <typename V, int R>
void forward_rows(const float* __restrict__ u, const float* __restrict__ dl, const float* __restrict__ A,
                  const float* __restrict__ Bm, const float* __restrict__ Cm, float* __restrict__ y,
                  float* __restrict__ last, float* __restrict__ states, int64_t L, int64_t N,
                  float* __restrict__ h) {
  constexpr int64_t W = Lanes<V>::W;
  const int64_t SN = chunks(L) * N;
  std::fill(h, h + R * N, 0.f);
  for (int64_t t = 0; t < L; ++t) {
    if (t % kChunk == 0)
      for (int r = 0; r < R; ++r) std::memcpy(states + r * SN + t / kChunk * N, h + r * N, N * sizeof(float));
    float dt[R], x[R];
    V acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      dt[r] = dl[r * L + t];
      x[r] = dt[r] * u[r * L + t];
      acc[r] = splat<V>(0.f);
    }
    for (int64_t k = 0; k < N; k += W) {
      const V b = load<V>(Bm + t * N + k), c = load<V>(Cm + t * N + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V hk = fast_exp(load<V>(A + r * N + k) * dt[r]) * load<V>(h + r * N + k) + b * x[r];
        store(h + r * N + k, hk);
        acc[r] += c * hk;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) y[r * L + t] = Lanes<V>::sum(acc[r]);
  }
  std::memcpy(last, h, R * N * sizeof(float));
}

// Backward of forward_rows, from the chunk-boundary states it saved (rows at r*n_chunks*N).
// gy, du, ddl: rows at r*L; glast, dA: rows at r*N; dB, dC: (L, N), accumulated (+=) with the sum
// over the R channels. work: backward_work_floats(N, R) floats.
template <typename V, int R>
void backward_rows(const float* __restrict__ u, const float* __restrict__ dl, const float* __restrict__ A,
                   const float* __restrict__ Bm, const float* __restrict__ Cm, const float* __restrict__ states,
                   const float* __restrict__ gy, const float* __restrict__ glast, float* __restrict__ du,
                   float* __restrict__ ddl, float* __restrict__ dA, float* __restrict__ dB, float* __restrict__ dC,
                   int64_t L, int64_t N, float* __restrict__ work) {
  constexpr int64_t W = Lanes<V>::W;
  const int64_t RN = R * N, n_chunks = chunks(L), SN = n_chunks * N;
  float* __restrict__ a = work;                   // (kChunk, R, N): exp(delta_t A) within the chunk
  float* __restrict__ hs = a + kChunk * RN;       // (kChunk, R, N): states within the chunk
  float* __restrict__ carry = hs + kChunk * RN;   // (R, N): a_{t+1} dL/dh_{t+1}
  std::memcpy(carry, glast, RN * sizeof(float));
  for (int64_t c = n_chunks - 1; c >= 0; --c) {  // recompute a chunk, then walk it back
    const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
    for (int64_t t = t0; t < t1; ++t) {
      // h_{t-1} of channel r at prev + r * stride: within the chunk, or the saved boundary state
      const float* prev = t > t0 ? hs + (t - t0 - 1) * RN : states + c * N;
      const int64_t stride = t > t0 ? N : SN;
      float* at = a + (t - t0) * RN;
      float* ht = hs + (t - t0) * RN;
      for (int64_t k = 0; k < N; k += W) {
        const V b = load<V>(Bm + t * N + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float dt = dl[r * L + t];
          const V ak = fast_exp(load<V>(A + r * N + k) * dt);
          store(at + r * N + k, ak);
          store(ht + r * N + k, ak * load<V>(prev + r * stride + k) + b * (dt * u[r * L + t]));
        }
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      float dt[R], dtu[R], ut[R], gyt[R];
      V gb[R], ga[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        dt[r] = dl[r * L + t];
        ut[r] = u[r * L + t];
        dtu[r] = dt[r] * ut[r];
        gyt[r] = gy[r * L + t];
        gb[r] = ga[r] = splat<V>(0.f);
      }
      const float* at = a + (t - t0) * RN;
      const float* ht = hs + (t - t0) * RN;
      const float* hp = t > t0 ? ht - RN : states + c * N;  // h_{t-1} of channel r at hp + r * stride
      const int64_t stride = t > t0 ? N : SN;
      for (int64_t k = 0; k < N; k += W) {
        const V bk = load<V>(Bm + t * N + k), ck = load<V>(Cm + t * N + k);
        V dck = splat<V>(0.f), dbk = splat<V>(0.f);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const int64_t i = r * N + k;
          const V ak = load<V>(at + i), Ak = load<V>(A + i);
          const V gn = load<V>(carry + i) + ck * gyt[r];  // g_t = a_{t+1} g_{t+1} + C_t gy_t
          dck += load<V>(ht + i) * gyt[r];
          dbk += gn * dtu[r];
          gb[r] += gn * bk;
          const V gA = gn * ak * load<V>(hp + r * stride + k);  // grad of (delta_t A_n)
          store(dA + i, load<V>(dA + i) + gA * dt[r]);
          ga[r] += gA * Ak;
          store(carry + i, ak * gn);
        }
        store(dC + t * N + k, load<V>(dC + t * N + k) + dck);
        store(dB + t * N + k, load<V>(dB + t * N + k) + dbk);
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float sgb = Lanes<V>::sum(gb[r]);
        du[r * L + t] = sgb * dt[r];
        ddl[r * L + t] = sgb * ut[r] + Lanes<V>::sum(ga[r]);
      }
    }
  }
}

int64_t backward_work_floats(int64_t N, int64_t R) { return (2 * kChunk + 1) * R * N; }

// The row kernel for N states: multiples of 16 as vectors, any other N one lane at a time.
struct Forward {
  template <typename V, int R> static constexpr auto fn = forward_rows<V, R>;
};
struct Backward {
  template <typename V, int R> static constexpr auto fn = backward_rows<V, R>;
};
template <typename K, int R> auto pick(int64_t N) {
  return N % 16 == 0 ? K::template fn<Vec16, R> : K::template fn<float, R>;
}

void check(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == dim,
              "ablate_scan: ", name, " must be a contiguous CPU float32 tensor with ", dim, " dims, got ",
              t.sizes(), " ", t.scalar_type());
}

// Returns y, the last state, and the states before every chunk of kChunk steps, (Bt, G, H,
// ceil(L / kChunk), N): what backward starts its recomputation from.
std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                        const at::Tensor& A, const at::Tensor& Bm,
                                                        const at::Tensor& Cm) {
  check(u, 4, "u"); check(delta, 4, "delta"); check(A, 3, "A"); check(Bm, 4, "Bm"); check(Cm, 4, "Cm");
  const int64_t Bt = u.size(0), G = u.size(1), H = u.size(2), L = u.size(3), N = A.size(2);
  auto y = at::empty_like(u);
  auto last = at::empty({Bt, G, H, N}, u.options());
  auto states = at::empty({Bt, G, H, chunks(L), N}, u.options());
  const int64_t SN = states.size(3) * N;
  const float *pu = u.data_ptr<float>(), *pd = delta.data_ptr<float>(), *pA = A.data_ptr<float>();
  const float *pB = Bm.data_ptr<float>(), *pC = Cm.data_ptr<float>();
  float *py = y.data_ptr<float>(), *pl = last.data_ptr<float>(), *ps = states.data_ptr<float>();
  const int64_t blocks = (H + kRows - 1) / kRows;  // per (batch, group)
  at::parallel_for(0, Bt * G * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(kRows * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / blocks, h0 = (task % blocks) * kRows, rows = std::min<int64_t>(kRows, H - h0);
      for (int64_t hh = h0; hh < h0 + rows; hh += rows == kRows ? kRows : 1) {
        const int64_t r = bg * H + hh, gh = (bg % G) * H + hh;
        auto* f = rows == kRows ? pick<Forward, kRows>(N) : pick<Forward, 1>(N);
        f(pu + r * L, pd + r * L, pA + gh * N, pB + bg * L * N, pC + bg * L * N, py + r * L, pl + r * N,
          ps + r * SN, L, N, h.data());
      }
    }
  });
  return {y, last, states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
    const at::Tensor& states, const at::Tensor& gy, const at::Tensor& glast) {
  check(u, 4, "u"); check(delta, 4, "delta"); check(A, 3, "A"); check(Bm, 4, "Bm"); check(Cm, 4, "Cm");
  check(states, 5, "states"); check(gy, 4, "gy"); check(glast, 4, "glast");
  const int64_t Bt = u.size(0), G = u.size(1), H = u.size(2), L = u.size(3), N = A.size(2);
  const int64_t SN = chunks(L) * N;
  TORCH_CHECK(states.numel() == Bt * G * H * SN, "ablate_scan: states ", states.sizes(), " are not fwd's for u ",
              u.sizes());
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
  const float *ps = states.data_ptr<float>(), *pgy = gy.data_ptr<float>(), *pgl = glast.data_ptr<float>();
  float *pdu = du.data_ptr<float>(), *pdd = ddelta.data_ptr<float>(), *pdA = dA.data_ptr<float>();
  float *pdB = dB.data_ptr<float>(), *pdC = dC.data_ptr<float>();
  at::parallel_for(0, splits * Bt * G, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(backward_work_floats(N, kRows));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / (Bt * G), bg = task % (Bt * G), g = bg % G;
      const int64_t h0 = s * H / splits, h1 = (s + 1) * H / splits;
      for (int64_t hh = h0; hh < h1;) {
        const bool full = hh + kRows <= h1;
        const int64_t r = bg * H + hh, gh = g * H + hh;
        auto* f = full ? pick<Backward, kRows>(N) : pick<Backward, 1>(N);
        f(pu + r * L, pd + r * L, pA + gh * N, pB + bg * L * N, pC + bg * L * N, ps + r * SN, pgy + r * L,
          pgl + r * N,
          pdu + r * L, pdd + r * L, pdA + r * N, pdB + task * L * N, pdC + task * L * N, L, N, work.data());
        hh += full ? kRows : 1;
      }
    }
  });
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0)};
}

}  // namespace

TORCH_LIBRARY(ablate_scan_cpp, m) {
  m.def("chunk() -> int", [] { return kChunk; });
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm) -> (Tensor, Tensor, Tensor)", &scan_fwd);
  m.def("bwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm, Tensor states, Tensor gy, Tensor glast)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)", &scan_bwd);
}

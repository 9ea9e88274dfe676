// Fused CPU selective scan (Mamba S6), forward and backward, for ablate/models/ssm.py.
//
// Shapes (fp32; u, delta, Bm, Cm may be strided views, the others contiguous):
//   u: (Bt, Gu, H, L), Gu dividing G: group g walks u group g % Gu; with Gu < G several groups walk
//   one input and their outputs are summed, as the 2-D mixer's directions are
//   delta: (Bt, G, H, L) after bias and softplus   A: (G, H, N)   D: (G, H)
//   Bm, Cm: (Bt, G, L, N), the N states of a position contiguous   order: (G, L) int32
//   y: (Bt, Gu, H, L)   last: (Bt, G, H, N)
// Group g walks the positions order[g][0], order[g][1], ... (a permutation of 0..L-1): step t is at
// position p = order[g][t] of u, delta, Bm, Cm and y, so a 2-D scan's directions need no copies.
//   h_t = exp(delta_p A) h_{t-1} + delta_p u_p B_p;  y_p (+)= sum_n C_p h_t + D u_p
// Each (batch, group, channel) row walks L once with its N states in registers, kRows channels of a
// group at a time (they share B and C); nothing of size L x N is materialised. Forward keeps
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

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// exp(x) / 2^fx for fx = round(x / ln 2): x reduced by fx ln 2 in two parts, then the polynomial.
template <typename V> static inline V exp_reduced(V x, V fx) {
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  V p = splat<V>(1.9875691500e-4f);
  p = p * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  return p * x * x + x + 1.0f;
}

// exp(x) to ~1 ulp (Cephes expf): round x/ln2 to nearest with the 1.5*2^23 trick, reduce by ln 2 in
// two parts, degree-7 polynomial (exp_reduced), scale by 2^n through the exponent bits. Valid for any V.
template <typename V> static inline V fast_exp(V x) {
  using I = typename Lanes<V>::I;
  const V lo = splat<V>(-87.3f), hi = splat<V>(88.3f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V fx = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const V p = exp_reduced(x, fx);
  const I bits = (Lanes<V>::to_int(fx) + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(V));
  return p * scale;
}

#if defined(__AVX512F__)
// AVX-512: the same reduction and polynomial, with the scaling by 2^n done by vscalefps, which also
// gives 0 and inf past the float range: no clamps and no integer exponent arithmetic (5 fewer ops).
template <> inline Vec16 fast_exp<Vec16>(Vec16 x) {
  const Vec16 fx = reinterpret_cast<Vec16>(_mm512_roundscale_ps(reinterpret_cast<__m512>(x * 1.44269504088896341f),
                                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  const Vec16 p = exp_reduced(x, fx);
  return reinterpret_cast<Vec16>(_mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(fx)));
}
#endif

// out[r] = the sum of the lanes of v[r], for R rows at once.
template <typename V, int R> static inline void row_sums(const V* v, float* out) {
  for (int r = 0; r < R; ++r) out[r] = Lanes<V>::sum(v[r]);
}
#if defined(__AVX512F__)
// 4 rows of 16 lanes share their shuffles: 6 shuffles and 6 adds for the 4 sums instead of 4 x 7.
template <> inline void row_sums<Vec16, 4>(const Vec16* v, float* out) {
  const __m512 a = reinterpret_cast<__m512>(v[0]), b = reinterpret_cast<__m512>(v[1]);
  const __m512 c = reinterpret_cast<__m512>(v[2]), d = reinterpret_cast<__m512>(v[3]);
  // 128-bit quarters: ab = (a0+a2, a1+a3, b0+b2, b1+b3), cd likewise
  const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
  // quarter r: the 4 partial sums of row r; then sum within each quarter
  __m512 q = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
  q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(1, 0, 3, 2)));
  q = _mm512_add_ps(q, _mm512_permute_ps(q, _MM_SHUFFLE(2, 3, 0, 1)));
  const Vec16 sums = reinterpret_cast<Vec16>(q);
  for (int r = 0; r < 4; ++r) out[r] = sums[4 * r];
}
#endif

// Where R channels of one (batch, group) read their inputs: channel r, position p of u at
// u[r * u_h + p * u_l] (delta likewise), B and C of position p at Bm[p * bc_l], A and D rows at r*N, r.
struct Walk {
  const float *u, *dl, *A, *D, *Bm, *Cm;
  const int32_t* order;
  int64_t u_h, u_l, dl_h, dl_l, bc_l;
};

// R channels walked together: they share B and C, so each is loaded once per step for R channels,
// and the R recurrences are independent chains the CPU overlaps. y: rows at r*L, position-indexed,
// written (or added to, when accumulate) at each step; last: rows at r*N; states: rows at
// r*chunks(L)*N. h: R*N floats of scratch for the states.
template <typename V, int R>
void forward_rows(const Walk& w, float* __restrict__ y, bool accumulate, float* __restrict__ last,
                  float* __restrict__ states, int64_t L, int64_t N, float* __restrict__ h) {
  constexpr int64_t W = Lanes<V>::W;
  const int64_t SN = chunks(L) * N;
  std::fill(h, h + R * N, 0.f);
  for (int64_t t = 0; t < L; ++t) {
    if (t % kChunk == 0)
      for (int r = 0; r < R; ++r) std::memcpy(states + r * SN + t / kChunk * N, h + r * N, N * sizeof(float));
    const int64_t p = w.order[t];
    const float *Bp = w.Bm + p * w.bc_l, *Cp = w.Cm + p * w.bc_l;
    float dt[R], up[R], x[R];
    V acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      dt[r] = w.dl[r * w.dl_h + p * w.dl_l];
      up[r] = w.u[r * w.u_h + p * w.u_l];
      x[r] = dt[r] * up[r];
      acc[r] = splat<V>(0.f);
    }
    for (int64_t k = 0; k < N; k += W) {
      const V b = load<V>(Bp + k), c = load<V>(Cp + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V hk = fast_exp(load<V>(w.A + r * N + k) * dt[r]) * load<V>(h + r * N + k) + b * x[r];
        store(h + r * N + k, hk);
        acc[r] += c * hk;
      }
    }
    float sums[R];
    row_sums<V, R>(acc, sums);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float out = sums[r] + w.D[r] * up[r];
      y[r * L + p] = accumulate ? y[r * L + p] + out : out;
    }
  }
  std::memcpy(last, h, R * N * sizeof(float));
}

// Backward of forward_rows, from the chunk-boundary states it saved (rows at r*chunks(L)*N).
// gy, du: rows at r*L, position-indexed (du written, or added to when accumulate); ddl: delta's
// strides; glast, dA: rows at r*N; dD: one per row; dB, dC: (L, N), position-indexed, accumulated
// (+=) with the sum over the R channels. work: backward_work_floats(N, R) floats.
template <typename V, int R>
void backward_rows(const Walk& w, const float* __restrict__ states, const float* __restrict__ gy,
                   const float* __restrict__ glast, float* __restrict__ du, bool accumulate,
                   float* __restrict__ ddl, float* __restrict__ dA, float* __restrict__ dD,
                   float* __restrict__ dB, float* __restrict__ dC, int64_t L, int64_t N, float* __restrict__ work) {
  constexpr int64_t W = Lanes<V>::W;
  const int64_t RN = R * N, n_chunks = chunks(L), SN = n_chunks * N;
  float* __restrict__ a = work;                   // (kChunk, R, N): exp(delta A) within the chunk
  float* __restrict__ hs = a + kChunk * RN;       // (kChunk, R, N): states within the chunk
  float* __restrict__ carry = hs + kChunk * RN;   // (R, N): a_{t+1} dL/dh_{t+1}
  std::memcpy(carry, glast, RN * sizeof(float));
  float dDr[R] = {};
  for (int64_t c = n_chunks - 1; c >= 0; --c) {  // recompute a chunk, then walk it back
    const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
    for (int64_t t = t0; t < t1; ++t) {
      // h_{t-1} of channel r at prev + r * stride: within the chunk, or the saved boundary state
      const int64_t p = w.order[t];
      const float* prev = t > t0 ? hs + (t - t0 - 1) * RN : states + c * N;
      const int64_t stride = t > t0 ? N : SN;
      float* at = a + (t - t0) * RN;
      float* ht = hs + (t - t0) * RN;
      for (int64_t k = 0; k < N; k += W) {
        const V b = load<V>(w.Bm + p * w.bc_l + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float dt = w.dl[r * w.dl_h + p * w.dl_l];
          const V ak = fast_exp(load<V>(w.A + r * N + k) * dt);
          store(at + r * N + k, ak);
          store(ht + r * N + k, ak * load<V>(prev + r * stride + k) + b * (dt * w.u[r * w.u_h + p * w.u_l]));
        }
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t p = w.order[t];
      float dt[R], dtu[R], ut[R], gyt[R];
      V gb[R], ga[R];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        dt[r] = w.dl[r * w.dl_h + p * w.dl_l];
        ut[r] = w.u[r * w.u_h + p * w.u_l];
        dtu[r] = dt[r] * ut[r];
        gyt[r] = gy[r * L + p];
        dDr[r] += gyt[r] * ut[r];
        gb[r] = ga[r] = splat<V>(0.f);
      }
      const float* at = a + (t - t0) * RN;
      const float* ht = hs + (t - t0) * RN;
      const float* hp = t > t0 ? ht - RN : states + c * N;  // h_{t-1} of channel r at hp + r * stride
      const int64_t stride = t > t0 ? N : SN;
      const float *Bp = w.Bm + p * w.bc_l, *Cp = w.Cm + p * w.bc_l;
      float *dBp = dB + p * N, *dCp = dC + p * N;
      for (int64_t k = 0; k < N; k += W) {
        const V bk = load<V>(Bp + k), ck = load<V>(Cp + k);
        V dck = splat<V>(0.f), dbk = splat<V>(0.f);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const int64_t i = r * N + k;
          const V ak = load<V>(at + i), Ak = load<V>(w.A + i);
          const V gn = load<V>(carry + i) + ck * gyt[r];  // g_t = a_{t+1} g_{t+1} + C_t gy_t
          dck += load<V>(ht + i) * gyt[r];
          dbk += gn * dtu[r];
          gb[r] += gn * bk;
          const V gA = gn * ak * load<V>(hp + r * stride + k);  // grad of (delta_t A_n)
          store(dA + i, load<V>(dA + i) + gA * dt[r]);
          ga[r] += gA * Ak;
          store(carry + i, ak * gn);
        }
        store(dCp + k, load<V>(dCp + k) + dck);
        store(dBp + k, load<V>(dBp + k) + dbk);
      }
      float sgbs[R], sgas[R];
      row_sums<V, R>(gb, sgbs);
      row_sums<V, R>(ga, sgas);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const float sgb = sgbs[r];
        const float g_u = sgb * dt[r] + gyt[r] * w.D[r];
        du[r * L + p] = accumulate ? du[r * L + p] + g_u : g_u;
        ddl[r * w.dl_h + p * w.dl_l] = sgb * ut[r] + sgas[r];
      }
    }
  }
  for (int r = 0; r < R; ++r) dD[r] = dDr[r];
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

// contiguous, dense (any order of strides, no gaps: written back with the same strides) or strided.
enum class Strides { contiguous, dense, any };
void check(const at::Tensor& t, int64_t dim, const char* name, Strides want = Strides::contiguous) {
  const bool ok = want == Strides::any || (want == Strides::dense ? t.is_non_overlapping_and_dense() : t.is_contiguous());
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == dim && ok, "ablate_scan: ", name,
              " must be a ", want == Strides::contiguous ? "contiguous " : want == Strides::dense ? "dense " : "",
              "CPU float32 tensor with ", dim, " dims, got ", t.sizes(), " strides ", t.strides(), " ", t.scalar_type());
}

// The inputs' shapes and strides, checked once for fwd and bwd.
struct Layout {
  int64_t Bt, G, H, L, N, Gu;  // Gu < G: several groups walk one input, their outputs summed
  Layout(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& D,
         const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& order) {
    check(u, 4, "u", Strides::any); check(delta, 4, "delta", Strides::dense); check(A, 3, "A"); check(D, 2, "D");
    check(Bm, 4, "Bm", Strides::any); check(Cm, 4, "Cm", Strides::any);
    Bt = delta.size(0), G = delta.size(1), H = delta.size(2), L = delta.size(3), N = A.size(2), Gu = u.size(1);
    TORCH_CHECK(u.size(0) == Bt && Gu > 0 && G % Gu == 0 && u.size(2) == H && u.size(3) == L,
                "ablate_scan: u ", u.sizes(), " does not fit delta ", delta.sizes());
    TORCH_CHECK(A.size(0) == G && A.size(1) == H && D.size(0) == G && D.size(1) == H,
                "ablate_scan: A ", A.sizes(), " or D ", D.sizes(), " do not fit delta ", delta.sizes());
    for (const at::Tensor* m : {&Bm, &Cm})
      TORCH_CHECK(m->size(0) == Bt && m->size(1) == G && m->size(2) == L && m->size(3) == N && (N == 1 || m->stride(3) == 1) &&
                      (L == 1 || Bm.stride(2) == Cm.stride(2)),
                  "ablate_scan: Bm/Cm ", m->sizes(), " strides ", m->strides(), " must be (Bt, G, L, N) with unit "
                  "stride over N and one stride over L");
    TORCH_CHECK(order.device().is_cpu() && order.scalar_type() == at::kInt && order.is_contiguous() &&
                    order.dim() == 2 && order.size(0) == G && order.size(1) == L,
                "ablate_scan: order must be a contiguous int32 (G, L) tensor, got ", order.sizes());
  }
  // The walk of channel h of (batch b, group g); its rows follow at the strides in the struct.
  Walk walk(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& D,
            const at::Tensor& Bm, const at::Tensor& Cm, const at::Tensor& order, int64_t b, int64_t g,
            int64_t h) const {
    const int64_t gu = g % Gu;
    return Walk{u.data_ptr<float>() + b * u.stride(0) + gu * u.stride(1) + h * u.stride(2),
                delta.data_ptr<float>() + b * delta.stride(0) + g * delta.stride(1) + h * delta.stride(2),
                A.data_ptr<float>() + (g * H + h) * N,
                D.data_ptr<float>() + g * H + h,
                Bm.data_ptr<float>() + b * Bm.stride(0) + g * Bm.stride(1),
                Cm.data_ptr<float>() + b * Cm.stride(0) + g * Cm.stride(1),
                order.data_ptr<int32_t>() + g * L,
                u.stride(2), u.stride(3), delta.stride(2), delta.stride(3), Bm.stride(2)};
  }
  int64_t u_row(int64_t b, int64_t g, int64_t h) const { return ((b * Gu + g % Gu) * H + h) * L; }
  int64_t row(int64_t b, int64_t g, int64_t h) const { return (b * G + g) * H + h; }
};

// Returns y, the last state, and the states before every chunk of kChunk steps, (Bt, G, H,
// chunks(L), N): what backward starts its recomputation from. One task per (batch, block of kRows
// channels) walks every group, so shared outputs are summed without races.
std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_fwd(const at::Tensor& u, const at::Tensor& delta,
                                                        const at::Tensor& A, const at::Tensor& Bm,
                                                        const at::Tensor& Cm, const at::Tensor& D,
                                                        const at::Tensor& order) {
  const Layout s(u, delta, A, D, Bm, Cm, order);
  const int64_t L = s.L, N = s.N, H = s.H;
  auto y = at::empty({s.Bt, s.Gu, H, L}, u.options().memory_format(at::MemoryFormat::Contiguous));
  auto last = at::empty({s.Bt, s.G, H, N}, u.options());
  auto states = at::empty({s.Bt, s.G, H, chunks(L), N}, u.options());
  const int64_t SN = chunks(L) * N;
  float *py = y.data_ptr<float>(), *pl = last.data_ptr<float>(), *ps = states.data_ptr<float>();
  const int64_t blocks = (H + kRows - 1) / kRows;  // per batch item
  at::parallel_for(0, s.Bt * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> h(kRows * N);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, h0 = (task % blocks) * kRows, rows = std::min<int64_t>(kRows, H - h0);
      for (int64_t g = 0; g < s.G; ++g)
        for (int64_t hh = h0; hh < h0 + rows; hh += rows == kRows ? kRows : 1) {
          auto* f = rows == kRows ? pick<Forward, kRows>(N) : pick<Forward, 1>(N);
          const int64_t r = s.row(b, g, hh);
          f(s.walk(u, delta, A, D, Bm, Cm, order, b, g, hh), py + s.u_row(b, g, hh), g >= s.Gu,
            pl + r * N, ps + r * SN, L, N, h.data());
        }
    }
  });
  return {y, last, states};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> scan_bwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
    const at::Tensor& D, const at::Tensor& order, const at::Tensor& states, const at::Tensor& gy,
    const at::Tensor& glast) {
  const Layout s(u, delta, A, D, Bm, Cm, order);
  const int64_t Bt = s.Bt, G = s.G, H = s.H, L = s.L, N = s.N, SN = chunks(L) * N;
  check(states, 5, "states"); check(gy, 4, "gy"); check(glast, 4, "glast");
  TORCH_CHECK(states.numel() == Bt * G * H * SN, "ablate_scan: states ", states.sizes(), " are not fwd's for delta ",
              delta.sizes());
  TORCH_CHECK(gy.sizes() == at::IntArrayRef({Bt, s.Gu, H, L}), "ablate_scan: gy ", gy.sizes(), " is not y's shape");
  // dB, dC sum over the channels of a group and dA, dD over the batch: each task owns one
  // (split, batch) slice of channel blocks, walks every group, and writes partial sums added up below.
  const int64_t blocks = (H + kRows - 1) / kRows;
  const int64_t splits = std::max<int64_t>(1, std::min<int64_t>(blocks, (2 * at::get_num_threads() + Bt - 1) / Bt));
  auto du = at::empty({Bt, s.Gu, H, L}, u.options().memory_format(at::MemoryFormat::Contiguous));
  auto ddelta = at::empty_like(delta);  // delta's strides: written where delta is read
  auto dA = at::zeros({Bt, G, H, N}, u.options());
  auto dD = at::empty({Bt, G, H}, u.options());
  auto dB = at::zeros({splits, Bt, G, L, N}, u.options());
  auto dC = at::zeros({splits, Bt, G, L, N}, u.options());
  const float *ps = states.data_ptr<float>(), *pgy = gy.data_ptr<float>(), *pgl = glast.data_ptr<float>();
  float *pdu = du.data_ptr<float>(), *pdd = ddelta.data_ptr<float>(), *pdA = dA.data_ptr<float>();
  float *pdD = dD.data_ptr<float>(), *pdB = dB.data_ptr<float>(), *pdC = dC.data_ptr<float>();
  at::parallel_for(0, splits * Bt, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> work(backward_work_floats(N, kRows));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t sp = task / Bt, b = task % Bt;
      const int64_t h0 = std::min(H, sp * blocks / splits * kRows), h1 = std::min(H, (sp + 1) * blocks / splits * kRows);
      for (int64_t g = 0; g < G; ++g)
        for (int64_t hh = h0; hh < h1;) {
          const bool full = hh + kRows <= h1;
          const int64_t r = s.row(b, g, hh), ur = s.u_row(b, g, hh), part = (task * G + g) * L * N;
          const Walk w = s.walk(u, delta, A, D, Bm, Cm, order, b, g, hh);
          auto* f = full ? pick<Backward, kRows>(N) : pick<Backward, 1>(N);
          f(w, ps + r * SN, pgy + ur, pgl + r * N, pdu + ur, g >= s.Gu,
            pdd + (w.dl - delta.data_ptr<float>()), pdA + r * N, pdD + r, pdB + part, pdC + part, L, N, work.data());
          hh += full ? kRows : 1;
        }
    }
  });
  return {du, ddelta, dA.sum(0), dB.sum(0), dC.sum(0), dD.sum(0)};
}

}  // namespace

TORCH_LIBRARY(ablate_scan_cpp, m) {
  m.def("chunk() -> int", [] { return kChunk; });
  m.def("fwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm, Tensor D, Tensor order)"
        " -> (Tensor, Tensor, Tensor)", &scan_fwd);
  m.def("bwd(Tensor u, Tensor delta, Tensor A, Tensor Bm, Tensor Cm, Tensor D, Tensor order, Tensor states,"
        " Tensor gy, Tensor glast) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)", &scan_bwd);
}

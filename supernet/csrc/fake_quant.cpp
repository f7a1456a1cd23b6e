// The mixed-precision fake quantizers of supernet/fused.py as native CPU kernels (float and
// double), each direction in one pass:
// - activations: Σ_b p_b·LSQ_b(x) and its backward over the tensor. Optionally x is first clamped
//   to [lo, hi] (the ReLU or ReLU6 before the quantizer, fused: its backward zeroes the gradient
//   where x is not strictly inside, as the eager prologue does). The backward also finishes the
//   step and probability gradients, so the caller runs no op of its own on them.
// - weights: Σ_b p_b·Q_b(w) per output channel (symmetric, scale from the channel's peak), and
//   its backward (straight-through: ∂/∂w = grad·Σ_b p_b; ∂/∂p_b = ⟨grad, Q_b(w)⟩).
//
// The values mirror the eager torch ops (act_forward, act_backward, weight_forward,
// weight_backward) float op by float op, in their order, so the forwards and grad_x are
// bit-identical; build with -fno-fast-math -ffp-contract=off (no reassociation, no fused
// multiply-add) and -fno-trapping-math (no value changes; lets the compares in the loops
// vectorise). The reductions take double products, summed in double (the activations' in 8
// lanes per chunk, combined in a fixed order): deterministic for a given thread count. On x86-64
// with AVX2, float32 activations run 8 elements at a time, with the same floats and sums.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// x86-64 with GCC: an AVX2 build of the chunk loops besides the baseline one, picked at load
// time by the CPU (the same floats: no FMA contraction either way)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HWNAS_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define HWNAS_CLONES
#endif

namespace {

constexpr int64_t kBlock = 512;      // elements per inner loop (their slope stays in L1)
constexpr int kLanes = 8;            // partial sums per reduction, so the loops vectorise
constexpr int64_t kMinPerThread = 1 << 15;
constexpr int kMaxBits = 16;         // bit-widths in one mix (more: the caller falls back)

// x + 1.5·2^m − 1.5·2^m rounds to the nearest integer, ties to even, for |x| < 2^(m−1)
// (m: mantissa bits), as nearbyint does in the default rounding mode, and vectorises.
template <typename T> struct Magic;
template <> struct Magic<float> {
  static constexpr float add = 12582912.0f;          // 1.5·2^23
  static constexpr double limit = 4194304.0;         // 2^22
};
template <> struct Magic<double> {
  static constexpr double add = 6755399441055744.0;  // 1.5·2^52
  static constexpr double limit = 2251799813685248.0;  // 2^51
};

template <typename T, bool kMagic>
inline T round_even(T v) {
  if constexpr (kMagic) {
    return std::copysign((std::fabs(v) + Magic<T>::add) - Magic<T>::add, v);  // keeps −0
  } else {
    return std::nearbyint(v);
  }
}

// torch.clamp: NaN passes through
template <typename T>
inline T clamp(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

template <typename T>
struct Mix {
  int nb;
  T steps[kMaxBits];  // |s| floored at MIN_STEP
  const T* probs;
  const T* qn;
  const T* qp;
  const uint8_t* is_float;
  const T* clip;   // {lo, hi} of the clamp before quantizing, or null
  // whether the codes of bit-width b fit the vectorised rounding
  bool magic(int b) const { return static_cast<double>(qn[b]) + 1 < Magic<T>::limit; }
};

// out = Σ_b term_b, term_b = ((clamp(round(x/s)) · s) · p) or p·x, added in the order of b
template <typename T, bool kMagic>
void forward_term(const T* x, T* out, int64_t len, T s, T p, T qn, T qp, bool first) {
  // rounding after a clamp to one past the range gives the same codes, and keeps |x/s| small
  const T wlo = -qn - 1, whi = qp + 1;
  for (int64_t i = 0; i < len; ++i) {
    T v = x[i] / s;
    if constexpr (kMagic) v = clamp(v, wlo, whi);
    const T term = (clamp(round_even<T, kMagic>(v), -qn, qp) * s) * p;
    out[i] = first ? term : out[i] + term;
  }
}

// the quantizer's input over a block: x itself, or clamp(x, lo, hi) written to buf
template <typename T>
inline const T* prologue(const T* x, T* buf, int64_t len, const Mix<T>& m) {
  if (m.clip == nullptr) return x;
  const T lo = m.clip[0], hi = m.clip[1];
  for (int64_t i = 0; i < len; ++i) buf[i] = clamp(x[i], lo, hi);
  return buf;
}

template <typename T>
HWNAS_CLONES void forward_chunk(const T* x, T* out, int64_t n, const Mix<T>& m) {
  T clipped[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const T* xb = prologue(x + start, clipped, len, m);
    T* ob = out + start;
    for (int b = 0; b < m.nb; ++b) {
      const bool first = b == 0;
      const T p = m.probs[b];
      if (m.is_float[b]) {
        for (int64_t i = 0; i < len; ++i) ob[i] = first ? p * xb[i] : ob[i] + p * xb[i];
      } else if (m.magic(b)) {
        forward_term<T, true>(xb, ob, len, m.steps[b], p, m.qn[b], m.qp[b], first);
      } else {
        forward_term<T, false>(xb, ob, len, m.steps[b], p, m.qn[b], m.qp[b], first);
      }
    }
  }
}

struct Sums {
  double codes[kMaxBits][kLanes];  // Σ grad·code
  double lsq[kMaxBits][kLanes];    // Σ grad·(code − keep·x/s)
};

// Σ v[i] into kLanes partial sums (lane = i mod kLanes), a loop that vectorises
inline void accumulate(const double* v, int64_t len, double* acc) {
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += v[i + l];
  }
  for (int l = 0; i < len; ++i, ++l) acc[l] += v[i];
}

// one quantised bit-width over a block: slope += keep·p; grad·code and grad·(code − keep·x/s)
// as double products (exact for float)
template <typename T, bool kMagic>
void backward_term(const T* g, const T* x, T* slope, int64_t len, T s, T p, T qn, T qp,
                   bool first, double* by_code, double* by_lsq) {
  for (int64_t i = 0; i < len; ++i) {
    const T scaled = x[i] / s;
    const T clipped = clamp(scaled, -qn, qp);
    const T keep = static_cast<T>(clipped == scaled);
    const T code = round_even<T, kMagic>(clipped);
    const double gd = static_cast<double>(g[i]);
    by_code[i] = gd * static_cast<double>(code);
    by_lsq[i] = gd * static_cast<double>(code - scaled * keep);
    const T inside = keep * p;
    slope[i] = first ? inside : slope[i] + inside;
  }
}

template <typename T>
HWNAS_CLONES void backward_chunk(const T* g, const T* x, T* gx, int64_t n, const Mix<T>& m, Sums& sums) {
  for (int b = 0; b < m.nb; ++b) {
    for (int l = 0; l < kLanes; ++l) sums.codes[b][l] = sums.lsq[b][l] = 0.0;
  }
  T slope[kBlock], clipped[kBlock];
  double by_code[kBlock], by_lsq[kBlock];
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const T* gb = g + start;
    const T* xb = prologue(x + start, clipped, len, m);
    for (int b = 0; b < m.nb; ++b) {
      const bool first = b == 0;
      const T p = m.probs[b];
      if (m.is_float[b]) {
        for (int64_t i = 0; i < len; ++i) {
          by_code[i] = static_cast<double>(gb[i]) * static_cast<double>(xb[i]);
          slope[i] = first ? p : slope[i] + p;
        }
      } else {
        if (m.magic(b)) {
          backward_term<T, true>(gb, xb, slope, len, m.steps[b], p, m.qn[b], m.qp[b], first,
                                 by_code, by_lsq);
        } else {
          backward_term<T, false>(gb, xb, slope, len, m.steps[b], p, m.qn[b], m.qp[b], first,
                                  by_code, by_lsq);
        }
        accumulate(by_lsq, len, sums.lsq[b]);
      }
      accumulate(by_code, len, sums.codes[b]);
    }
    T* ob = gx + start;
    if (m.clip == nullptr) {
      for (int64_t i = 0; i < len; ++i) ob[i] = gb[i] * slope[i];
    } else {  // the clamp's gradient: zero unless lo < x < hi (a select, as torch.where)
      const T lo = m.clip[0], hi = m.clip[1];
      const T* raw = x + start;
      for (int64_t i = 0; i < len; ++i) {
        const T through = gb[i] * slope[i];
        ob[i] = (raw[i] > lo && raw[i] < hi) ? through : T(0);
      }
    }
  }
}

// -- float32 with AVX2 and FMA (x86-64, picked at run time): the chunk loops above, 8 elements
// per step and every bit-width of the mix in that step, so each element is read and written
// once. Each float value is the scalar loops' float ops in their order (no contraction), and
// the sums take the same exact double products into the same lanes (element i into lane
// i mod 8) in the same order, so the results are the scalar loops' bit for bit. A mix of NB
// bit-widths (1 to 4, else any) has its loop unrolled. (Float products summed in float runs
// made the backward about 1.6× faster still, but missed the reference's gradients by more
// than 1e-6.)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HWNAS_AVX2 1
#define HWNAS_AVX2_FN __attribute__((target("avx2,fma")))
#define HWNAS_AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) inline

bool avx2_allowed = true;  // hwnas_use_avx2(0) turns the AVX2 loops off (the tests' scalar runs)

bool has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes && avx2_allowed;
}

// the scalar clamp for lo <= hi: lo where v < lo, else hi where v > hi, else v. max/min return
// their second operand when either is NaN or both are zeros, so NaN and −0 pass through as v.
HWNAS_AVX2_INLINE __m256 clamp8(__m256 v, __m256 lo, __m256 hi) {
  return _mm256_min_ps(hi, _mm256_max_ps(lo, v));
}

// round_even<float, true>: copysign((|v| + 1.5·2^23) − 1.5·2^23, v)
HWNAS_AVX2_INLINE __m256 round8(__m256 v) {
  const __m256 sign = _mm256_set1_ps(-0.0f), add = _mm256_set1_ps(Magic<float>::add);
  const __m256 r = _mm256_sub_ps(_mm256_add_ps(_mm256_andnot_ps(sign, v), add), add);
  return _mm256_or_ps(r, _mm256_and_ps(v, sign));
}

// acc[0..1] += g[0..1]·v in double: lanes 0–3 and 4–7. One fused multiply-add each: the
// product of two floats is exact in double, so fma rounds once where mul+add rounded the same
// sum once too (the scalar loops' values, bit for bit)
HWNAS_AVX2_INLINE void accumulate8(__m256d* acc, const __m256d* g, __m256 v) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
  acc[0] = _mm256_fmadd_pd(g[0], lo, acc[0]);
  acc[1] = _mm256_fmadd_pd(g[1], hi, acc[1]);
}

// a mix's constants broadcast, once per chunk
struct Mix8 {
  __m256 p[kMaxBits], s[kMaxBits], wlo[kMaxBits], whi[kMaxBits], qlo[kMaxBits], qhi[kMaxBits];
  __m256 lo, hi;
  HWNAS_AVX2_FN explicit Mix8(const Mix<float>& m) {
    for (int b = 0; b < m.nb; ++b) {
      p[b] = _mm256_set1_ps(m.probs[b]);
      s[b] = _mm256_set1_ps(m.steps[b]);
      wlo[b] = _mm256_set1_ps(-m.qn[b] - 1);
      whi[b] = _mm256_set1_ps(m.qp[b] + 1);
      qlo[b] = _mm256_set1_ps(-m.qn[b]);
      qhi[b] = _mm256_set1_ps(m.qp[b]);
    }
    lo = _mm256_set1_ps(m.clip ? m.clip[0] : 0.0f);
    hi = _mm256_set1_ps(m.clip ? m.clip[1] : 0.0f);
  }
};

template <int NB>
HWNAS_AVX2_INLINE void forward8(const float* x, float* out, int64_t whole, const Mix<float>& m,
                                const Mix8& v) {
  const int nb = NB > 0 ? NB : m.nb;
  for (int64_t i = 0; i < whole; i += 8) {
    __m256 xv = _mm256_loadu_ps(x + i);
    if (m.clip) xv = clamp8(xv, v.lo, v.hi);
    __m256 acc = _mm256_setzero_ps();
    for (int b = 0; b < nb; ++b) {
      __m256 term;
      if (m.is_float[b]) {
        term = _mm256_mul_ps(v.p[b], xv);
      } else {
        const __m256 r = clamp8(_mm256_div_ps(xv, v.s[b]), v.wlo[b], v.whi[b]);
        term = _mm256_mul_ps(_mm256_mul_ps(clamp8(round8(r), v.qlo[b], v.qhi[b]), v.s[b]),
                             v.p[b]);
      }
      acc = b == 0 ? term : _mm256_add_ps(acc, term);
    }
    _mm256_storeu_ps(out + i, acc);
  }
}

HWNAS_AVX2_FN void forward_chunk_avx2(const float* x, float* out, int64_t n,
                                      const Mix<float>& m) {
  const int64_t whole = n / 8 * 8;
  const Mix8 v(m);
  switch (m.nb) {
    case 1: forward8<1>(x, out, whole, m, v); break;
    case 2: forward8<2>(x, out, whole, m, v); break;
    case 3: forward8<3>(x, out, whole, m, v); break;
    case 4: forward8<4>(x, out, whole, m, v); break;
    default: forward8<0>(x, out, whole, m, v);
  }
  if (whole < n) forward_chunk(x + whole, out + whole, n - whole, m);
}

template <int NB>
HWNAS_AVX2_INLINE void backward8(const float* g, const float* x, float* gx, int64_t whole,
                                 const Mix<float>& m, const Mix8& v, Sums& sums) {
  constexpr int kAcc = NB > 0 ? NB : kMaxBits;
  const int nb = NB > 0 ? NB : m.nb;
  __m256d codes[kAcc][2], lsq[kAcc][2];
  for (int b = 0; b < nb; ++b) {
    codes[b][0] = codes[b][1] = lsq[b][0] = lsq[b][1] = _mm256_setzero_pd();
  }
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < whole; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i), raw = _mm256_loadu_ps(x + i);
    const __m256 xv = m.clip ? clamp8(raw, v.lo, v.hi) : raw;
    const __m256d gd[2] = {_mm256_cvtps_pd(_mm256_castps256_ps128(gv)),
                           _mm256_cvtps_pd(_mm256_extractf128_ps(gv, 1))};
    __m256 slope = zero;
    for (int b = 0; b < nb; ++b) {
      __m256 inside;
      if (m.is_float[b]) {
        accumulate8(codes[b], gd, xv);
        inside = v.p[b];
      } else {
        const __m256 scaled = _mm256_div_ps(xv, v.s[b]);
        const __m256 clipped = clamp8(scaled, v.qlo[b], v.qhi[b]);
        const __m256 keep = _mm256_and_ps(_mm256_cmp_ps(clipped, scaled, _CMP_EQ_OQ), one);
        const __m256 code = round8(clipped);
        accumulate8(codes[b], gd, code);
        accumulate8(lsq[b], gd, _mm256_sub_ps(code, _mm256_mul_ps(scaled, keep)));
        inside = _mm256_mul_ps(keep, v.p[b]);
      }
      slope = b == 0 ? inside : _mm256_add_ps(slope, inside);
    }
    __m256 through = _mm256_mul_ps(gv, slope);
    if (m.clip) {  // the clamp's gradient: zero unless lo < x < hi
      const __m256 open = _mm256_and_ps(_mm256_cmp_ps(raw, v.lo, _CMP_GT_OQ),
                                        _mm256_cmp_ps(raw, v.hi, _CMP_LT_OQ));
      through = _mm256_blendv_ps(zero, through, open);
    }
    _mm256_storeu_ps(gx + i, through);
  }
  for (int b = 0; b < nb; ++b) {
    _mm256_storeu_pd(sums.codes[b], codes[b][0]);
    _mm256_storeu_pd(sums.codes[b] + 4, codes[b][1]);
    _mm256_storeu_pd(sums.lsq[b], lsq[b][0]);
    _mm256_storeu_pd(sums.lsq[b] + 4, lsq[b][1]);
  }
}

HWNAS_AVX2_FN void backward_chunk_avx2(const float* g, const float* x, float* gx, int64_t n,
                                       const Mix<float>& m, Sums& sums) {
  const int64_t whole = n / 8 * 8;
  const Mix8 v(m);
  switch (m.nb) {
    case 1: backward8<1>(g, x, gx, whole, m, v, sums); break;
    case 2: backward8<2>(g, x, gx, whole, m, v, sums); break;
    case 3: backward8<3>(g, x, gx, whole, m, v, sums); break;
    case 4: backward8<4>(g, x, gx, whole, m, v, sums); break;
    default: backward8<0>(g, x, gx, whole, m, v, sums);
  }
  if (whole < n) {  // the last < 8 elements: the scalar loop, its lanes added to these
    Sums tail;
    backward_chunk(g + whole, x + whole, gx + whole, n - whole, m, tail);
    for (int b = 0; b < m.nb; ++b) {
      for (int l = 0; l < kLanes; ++l) {
        sums.codes[b][l] += tail.codes[b][l];
        sums.lsq[b][l] += tail.lsq[b][l];
      }
    }
  }
}

// whether the AVX2 loops take this mix: float32, and every bit-width's codes within the
// vectorised rounding (at most 23 bits)
template <typename T>
bool avx2_takes(const Mix<T>& m) {
  if constexpr (!std::is_same_v<T, float>) {
    return false;
  } else {
    if (!has_avx2()) return false;
    for (int b = 0; b < m.nb; ++b) {
      if (!m.is_float[b] && !m.magic(b)) return false;
    }
    return true;
  }
}
#endif

// static contiguous chunks, one per thread (the calling thread takes the first)
template <typename F>
int run_chunks(int64_t n, int nthreads, F&& work) {
  int chunks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(nthreads, n / kMinPerThread)));
  const int64_t per = ((n + chunks - 1) / chunks + kBlock - 1) / kBlock * kBlock;
  chunks = static_cast<int>((n + per - 1) / std::max<int64_t>(per, 1));
  chunks = std::max(chunks, 1);
  std::vector<std::thread> pool;
  for (int c = 1; c < chunks; ++c) {
    const int64_t lo = c * per;
    pool.emplace_back([&work, c, lo, n, per] { work(c, lo, std::min(n, lo + per) - lo); });
  }
  work(0, 0, std::min(n, per));
  for (auto& t : pool) t.join();
  return chunks;
}

// s_b = max(|raw_b|, min_step), as torch's abs().clamp_min(MIN_STEP) (NaN stays NaN)
template <typename T>
Mix<T> make_mix(int nb, const T* raw_steps, const T* probs, const T* qn, const T* qp,
                const uint8_t* is_float, const T* clip, double min_step) {
  Mix<T> m{nb, {}, probs, qn, qp, is_float, clip};
  const T floor = static_cast<T>(min_step);
  for (int b = 0; b < nb; ++b) {
    const T mag = std::fabs(raw_steps[b]);
    m.steps[b] = mag < floor ? floor : mag;
  }
  return m;
}

template <typename T>
int act_forward(const T* x, T* out, int64_t n, int nb, const T* raw_steps, const T* probs,
                const T* qn, const T* qp, const uint8_t* is_float, const T* clip,
                double min_step, int nthreads) {
  if (nb < 1 || nb > kMaxBits) return -1;
  const Mix<T> m = make_mix(nb, raw_steps, probs, qn, qp, is_float, clip, min_step);
#ifdef HWNAS_AVX2
  const bool avx2 = avx2_takes(m);
#endif
  run_chunks(n, nthreads, [&](int, int64_t lo, int64_t len) {
#ifdef HWNAS_AVX2
    if constexpr (std::is_same_v<T, float>) {
      if (avx2) return forward_chunk_avx2(x + lo, out + lo, len, m);
    }
#endif
    forward_chunk(x + lo, out + lo, len, m);
  });
  return 0;
}

// d_steps: LSQ's gradient of the raw steps (scaled by 1/sqrt(per_sample·qp), through |s| and
// the floor as autograd differentiates abs() and clamp_min()); d_probs: ⟨grad, Q_b(x)⟩
template <typename T>
int act_backward(const T* grad, const T* x, T* grad_x, int64_t n, int nb, const T* raw_steps,
                 const T* probs, const T* qn, const T* qp, const uint8_t* is_float,
                 const T* clip, int64_t per_sample, double min_step, T* d_steps, T* d_probs,
                 int nthreads) {
  if (nb < 1 || nb > kMaxBits) return -1;
  const Mix<T> m = make_mix(nb, raw_steps, probs, qn, qp, is_float, clip, min_step);
  std::vector<Sums> partial(static_cast<size_t>(std::max(nthreads, 1)));
#ifdef HWNAS_AVX2
  const bool avx2 = avx2_takes(m);
#endif
  const int chunks = run_chunks(n, nthreads, [&](int c, int64_t lo, int64_t len) {
#ifdef HWNAS_AVX2
    if constexpr (std::is_same_v<T, float>) {
      if (avx2) return backward_chunk_avx2(grad + lo, x + lo, grad_x + lo, len, m, partial[c]);
    }
#endif
    backward_chunk(grad + lo, x + lo, grad_x + lo, len, m, partial[c]);
  });
  for (int b = 0; b < nb; ++b) {
    double codes = 0.0, lsq = 0.0;
    for (int c = 0; c < chunks; ++c) {
      for (int l = 0; l < kLanes; ++l) {
        codes += partial[c].codes[b][l];
        lsq += partial[c].lsq[b][l];
      }
    }
    // the eager kernels' double ops, in their order: ⟨grad, Q_b(x)⟩ = s_b·Σ grad·code (32 bits:
    // Σ grad·x); the step's Σ·p_b / sqrt(per_sample·qp_b), then ·sgn(raw)·[|raw| ≥ floor]
    d_probs[b] = static_cast<T>(is_float[b] ? codes : codes * static_cast<double>(m.steps[b]));
    const double norm = std::sqrt(static_cast<double>(
        per_sample * static_cast<int64_t>(qp[b])));
    double step = is_float[b] ? 0.0 : lsq * static_cast<double>(probs[b]) / norm;
    const T raw = raw_steps[b];
    step = step * (raw > 0 ? 1.0 : (raw < 0 ? -1.0 : 0.0));
    step = step * (std::fabs(raw) >= static_cast<T>(min_step) ? 1.0 : 0.0);
    d_steps[b] = static_cast<T>(step);
  }
  return 0;
}

// torch's w.abs().amax(dims 1..).clamp_min(1e-12) for one output channel (NaN propagates)
template <typename T>
T channel_peak(const T* w, int64_t len) {
  T peak = 0;
  for (int64_t i = 0; i < len; ++i) {
    const T mag = std::fabs(w[i]);
    if (mag != mag) return mag;
    peak = mag > peak ? mag : peak;
  }
  const T floor = static_cast<T>(1e-12);
  return peak < floor ? floor : peak;
}

// Q_b(v) = round(v/scale)·scale; |v/scale| ≤ qp by construction
template <typename T>
inline T weight_code_value(T v, T scale, bool magic) {
  const T scaled = v / scale;
  return (magic ? round_even<T, true>(scaled) : round_even<T, false>(scaled)) * scale;
}

template <typename T>
bool weight_magic(T qp) { return static_cast<double>(qp) + 2 < Magic<T>::limit; }

// out = Σ_b p_b·Q_b(w) over channels × per (each channel one contiguous run)
template <typename T>
int weight_forward(const T* w, T* out, int64_t channels, int64_t per, int nb, const T* probs,
                   const T* qp, const uint8_t* is_float) {
  if (nb < 1 || nb > kMaxBits) return -1;
  for (int64_t c = 0; c < channels; ++c) {
    const T* wc = w + c * per;
    T* oc = out + c * per;
    const T peak = channel_peak(wc, per);
    for (int b = 0; b < nb; ++b) {
      const bool first = b == 0;
      const T p = probs[b];
      if (is_float[b]) {
        for (int64_t i = 0; i < per; ++i) oc[i] = first ? p * wc[i] : oc[i] + p * wc[i];
        continue;
      }
      const T scale = peak / qp[b];
      const bool magic = weight_magic(qp[b]);
      for (int64_t i = 0; i < per; ++i) {
        const T term = weight_code_value(wc[i], scale, magic) * p;
        oc[i] = first ? term : oc[i] + term;
      }
    }
  }
  return 0;
}

// grad_w = grad·Σ_b p_b; d_probs[b] = Σ grad·Q_b(w) (double products and sums), unless d_probs
// is null (the probabilities need no gradient: a concrete bit-width run as a mix of one)
template <typename T>
int weight_backward(const T* grad, const T* w, T* grad_w, int64_t channels, int64_t per, int nb,
                    const T* probs, const T* qp, const uint8_t* is_float, T* d_probs) {
  if (nb < 1 || nb > kMaxBits) return -1;
  T total = probs[0];
  for (int b = 1; b < nb; ++b) total = total + probs[b];
  const int64_t n = channels * per;
  for (int64_t i = 0; i < n; ++i) grad_w[i] = grad[i] * total;
  if (d_probs == nullptr) return 0;
  double sums[kMaxBits] = {};
  for (int64_t c = 0; c < channels; ++c) {
    const T* wc = w + c * per;
    const T* gc = grad + c * per;
    const T peak = channel_peak(wc, per);
    for (int b = 0; b < nb; ++b) {
      double acc = 0.0;
      if (is_float[b]) {
        for (int64_t i = 0; i < per; ++i) {
          acc += static_cast<double>(gc[i]) * static_cast<double>(wc[i]);
        }
      } else {
        const T scale = peak / qp[b];
        const bool magic = weight_magic(qp[b]);
        for (int64_t i = 0; i < per; ++i) {
          acc += static_cast<double>(gc[i]) *
                 static_cast<double>(weight_code_value(wc[i], scale, magic));
        }
      }
      sums[b] += acc;
    }
  }
  for (int b = 0; b < nb; ++b) d_probs[b] = static_cast<T>(sums[b]);
  return 0;
}

}  // namespace

extern "C" {

#define HWNAS_ACT_FORWARD(NAME, T)                                                           \
  int NAME(const T* x, T* out, int64_t n, int32_t nb, const T* raw_steps, const T* probs,    \
           const T* qn, const T* qp, const uint8_t* is_float, const T* clip, double min_step, \
           int32_t nthreads) {                                                               \
    return act_forward(x, out, n, nb, raw_steps, probs, qn, qp, is_float, clip, min_step,    \
                       nthreads);                                                            \
  }
#define HWNAS_ACT_BACKWARD(NAME, T)                                                           \
  int NAME(const T* grad, const T* x, T* grad_x, int64_t n, int32_t nb, const T* raw_steps,   \
           const T* probs, const T* qn, const T* qp, const uint8_t* is_float, const T* clip,  \
           int64_t per_sample, double min_step, T* d_steps, T* d_probs, int32_t nthreads) {   \
    return act_backward(grad, x, grad_x, n, nb, raw_steps, probs, qn, qp, is_float, clip,     \
                        per_sample, min_step, d_steps, d_probs, nthreads);                    \
  }
#define HWNAS_WEIGHT_FORWARD(NAME, T)                                                         \
  int NAME(const T* w, T* out, int64_t channels, int64_t per, int32_t nb, const T* probs,     \
           const T* qp, const uint8_t* is_float) {                                            \
    return weight_forward(w, out, channels, per, nb, probs, qp, is_float);                    \
  }
#define HWNAS_WEIGHT_BACKWARD(NAME, T)                                                        \
  int NAME(const T* grad, const T* w, T* grad_w, int64_t channels, int64_t per, int32_t nb,   \
           const T* probs, const T* qp, const uint8_t* is_float, T* d_probs) {                \
    return weight_backward(grad, w, grad_w, channels, per, nb, probs, qp, is_float, d_probs); \
  }

// whether float32 activations take the AVX2 loops from now on (`enabled` and the CPU has them);
// a switch for the tests, which check the scalar loops too
int hwnas_use_avx2(int32_t enabled) {
#ifdef HWNAS_AVX2
  avx2_allowed = enabled != 0;
  return has_avx2() ? 1 : 0;
#else
  (void)enabled;
  return 0;
#endif
}

HWNAS_ACT_FORWARD(hwnas_act_forward_f32, float)
HWNAS_ACT_FORWARD(hwnas_act_forward_f64, double)
HWNAS_ACT_BACKWARD(hwnas_act_backward_f32, float)
HWNAS_ACT_BACKWARD(hwnas_act_backward_f64, double)
HWNAS_WEIGHT_FORWARD(hwnas_weight_forward_f32, float)
HWNAS_WEIGHT_FORWARD(hwnas_weight_forward_f64, double)
HWNAS_WEIGHT_BACKWARD(hwnas_weight_backward_f32, float)
HWNAS_WEIGHT_BACKWARD(hwnas_weight_backward_f64, double)

}  // extern "C"

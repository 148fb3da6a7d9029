// The fused TFN radial contraction on CPU: the radial weights R = z @ W^T are computed tile by
// tile into a buffer of a few KB that stays in L1 and consumed at once; R is never written to
// memory (docs/kernel.md). Built at first use by se3t.nn.kernel_cpu with the host's -march, so
// the vector width below follows the machine (AVX-512: 64-byte vectors, AVX2: 32-byte). A plain
// C ABI called through ctypes (no torch headers: the build takes seconds, not minutes). Its
// threads are torch's own OpenMP team when torch runs on libgomp (built with -fopenmp, the
// library binds to the libgomp.so.1 torch already loaded): torch's idle workers spin for a while
// after each op, and separate std::thread workers (the fallback, SE3T_STD_THREADS) would share
// the cores with them.
//
// Per output degree, with K = (d_in, J, c_i) the concatenated input index, m the output order:
//   forward   msg[e, m, c]  = sum_k T[e, m, k] R[e, k, c],   R[e, k, c] = sum_h z[e, h] Wt[h, k C + c]
//   backward  dR[e, c, k]   = sum_m g[e, m, c] T[e, m, k]
//             dT[e, m, k]   = sum_c g[e, m, c] R[e, c, k]   (R recomputed in the (c, k) layout)
//             dW[h, c K + k] += sum_e z[e, h] dR[e, c, k]
//             dz[e, h]      += sum_{c, k} dR[e, c, k] Wcf[h, c K + k]
// The forward pass vectorizes over output channels c (weights in (k, c) order), the backward
// pass over k (weights in (c, k) order, "channels first"): each then reads its operands
// contiguously and needs no horizontal sums in its inner loops.
//
// The forward pass is one call per fusion group: threads own blocks of runs, and a block's
// T = Bb x[src] is computed into a thread-local buffer, so T is never written to memory either.
// The backward pass is one call per output degree and chunk of edges, on a T computed for the
// chunk (basis_x): its threads own K tiles, so a tile's W and dW stay in L2 across all the
// chunk's runs. (Owning blocks of runs, as the forward pass does, streamed all of W and dW once
// per block and was 1.3x slower in a training step; measured 2026-12-02.)
//
// Radial rows are shared: row u of z serves the run of edges i in [off[u], off[u + 1]) (an edge
// and its reverse, whose radial inputs are equal: se3t.nn.sharing), so R is computed once per
// run and dR summed over the run before dW and dz. T, dT are indexed by the run's edges i; the
// messages and their gradient g by rows[i] (the edge's row in the layer's output).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

// fn(begin, end) on `threads` contiguous slices of [0, n) (static, like an OpenMP for)
template <typename F>
void parallel_for(int64_t n, int64_t threads, const F& fn) {
  threads = std::max<int64_t>(1, std::min(threads, n));
  if (threads == 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
#if defined(_OPENMP) && !defined(SE3T_STD_THREADS)
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), k = omp_get_num_threads();  // k may be < threads
    fn(n * t / k, n * (t + 1) / k);
  }
  return;
#endif
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t)
    pool.emplace_back([&, t] { fn(n * t / threads, n * (t + 1) / threads); });
  fn(int64_t(0), n / threads);
  for (auto& th : pool) th.join();
}

// fn(s, begin, end) on the fixed slices s < S = min(threads, n) of [0, n), slice s being
// [n s / S, n (s + 1) / S) however many workers run them (OpenMP may start fewer): a result
// built per slice and combined in slice order is the same in every run with that many threads
template <typename F>
int64_t parallel_slices(int64_t n, int64_t threads, const F& fn) {
  const int64_t S = std::max<int64_t>(1, std::min(threads, n));
  parallel_for(S, S, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) fn(s, n * s / S, n * (s + 1) / S);
  });
  return S;
}

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Vec {
  static constexpr int lanes = kVecBytes / sizeof(T);
  typedef T type __attribute__((vector_size(kVecBytes)));
  typedef T utype __attribute__((vector_size(kVecBytes), aligned(sizeof(T))));
  static inline type load(const T* p) { return *reinterpret_cast<const utype*>(p); }
  static inline void store(T* p, type v) { *reinterpret_cast<utype*>(p) = v; }
  // x - 0 is x for every x (0 + x is not, for x = -0), so the compiler drops the subtraction
  // and emits a bare broadcast; `type{} + x` cost an extra scalar add per broadcast
  static inline type splat(T x) { return x - type{}; }
  static inline T sum(type v) {
    T s = 0;
    for (int l = 0; l < lanes; ++l) s += v[l];
    return s;
  }
};

// one lane: the tails of the vector loops run the same code on scalars
template <typename T>
struct Lane {
  static constexpr int lanes = 1;
  typedef T type;
  static inline type load(const T* p) { return *p; }
  static inline void store(T* p, type v) { *p = v; }
  static inline type splat(T x) { return x; }
  static inline T sum(type v) { return v; }
};

// edges per register tile: TE rows of z against two weight vectors
constexpr int TE = kVecBytes == 64 ? 8 : 6;

// out[e, j] = sum_h z[e, h] W[h, j] for e < TE, j < n; z is a [TE, H] tile (zero-padded rows)
template <typename T>
void radial_tile(const T* z, int64_t H, const T* W, int64_t ldw, int64_t n, T* out, int64_t ldo) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  int64_t j = 0;
  for (; j + 2 * L <= n; j += 2 * L) {
    typename V::type a0[TE], a1[TE];
    for (int e = 0; e < TE; ++e) a0[e] = a1[e] = V::splat(0);
    for (int64_t h = 0; h < H; ++h) {
      auto w0 = V::load(W + h * ldw + j), w1 = V::load(W + h * ldw + j + L);
      for (int e = 0; e < TE; ++e) {
        auto zb = V::splat(z[e * H + h]);
        a0[e] += zb * w0;
        a1[e] += zb * w1;
      }
    }
    for (int e = 0; e < TE; ++e) {
      V::store(out + e * ldo + j, a0[e]);
      V::store(out + e * ldo + j + L, a1[e]);
    }
  }
  for (; j + L <= n; j += L) {
    typename V::type a0[TE];
    for (int e = 0; e < TE; ++e) a0[e] = V::splat(0);
    for (int64_t h = 0; h < H; ++h) {
      auto w0 = V::load(W + h * ldw + j);
      for (int e = 0; e < TE; ++e) a0[e] += V::splat(z[e * H + h]) * w0;
    }
    for (int e = 0; e < TE; ++e) V::store(out + e * ldo + j, a0[e]);
  }
  for (; j < n; ++j) {
    T a[TE] = {};
    for (int64_t h = 0; h < H; ++h)
      for (int e = 0; e < TE; ++e) a[e] += z[e * H + h] * W[h * ldw + j];
    for (int e = 0; e < TE; ++e) out[e * ldo + j] = a[e];
  }
}

// The tile of R in the (c, k) layout for backward: out[e, c kt + kk] = sum_h z[e, h]
// W[h, c K + k0 + kk] for c < C, kk < kt. When kt is a multiple of the vector width the (c, kk)
// vectors are taken two at a time across channels (as radial_tile does along a row), so a tile
// of one vector per channel still feeds two FMAs per broadcast of z.
template <typename T>
void radial_tile_cf(const T* z, int64_t H, const T* W, int64_t K, int64_t k0, int64_t C,
                    int64_t kt, T* out) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  const int64_t ldw = C * K, n = C * kt;
  if (kt % L != 0) {  // ragged tile: one channel at a time
    for (int64_t c = 0; c < C; ++c) radial_tile<T>(z, H, W + c * K + k0, ldw, kt, out + c * kt, n);
    return;
  }
  const int64_t per_c = kt / L, vecs = C * per_c;
  auto col = [&](int64_t v) { return (v / per_c) * K + k0 + (v % per_c) * L; };
  int64_t v = 0;
  for (; v + 2 <= vecs; v += 2) {
    const T* w0 = W + col(v);
    const T* w1 = W + col(v + 1);
    typename V::type a0[TE], a1[TE];
    for (int e = 0; e < TE; ++e) a0[e] = a1[e] = V::splat(0);
    for (int64_t h = 0; h < H; ++h) {
      auto x0 = V::load(w0 + h * ldw), x1 = V::load(w1 + h * ldw);
      for (int e = 0; e < TE; ++e) {
        auto zb = V::splat(z[e * H + h]);
        a0[e] += zb * x0;
        a1[e] += zb * x1;
      }
    }
    for (int e = 0; e < TE; ++e) {
      V::store(out + e * n + v * L, a0[e]);
      V::store(out + e * n + (v + 1) * L, a1[e]);
    }
  }
  for (; v < vecs; ++v) {
    const T* w0 = W + col(v);
    typename V::type a0[TE];
    for (int e = 0; e < TE; ++e) a0[e] = V::splat(0);
    for (int64_t h = 0; h < H; ++h) {
      auto x0 = V::load(w0 + h * ldw);
      for (int e = 0; e < TE; ++e) a0[e] += V::splat(z[e * H + h]) * x0;
    }
    for (int e = 0; e < TE; ++e) V::store(out + e * n + v * L, a0[e]);
  }
}

// msg[m, c..c+NV lanes) += sum_{kk < kt} T[m, k0 + kk] R[kk, c..]   for MB rows m of one edge;
// NV vectors of channels at once, so each broadcast of T feeds NV FMAs. MB is a compile-time
// count (the block's accumulators stay in registers, fully unrolled)
template <typename T, typename V, int NV, int MB>
inline void consume_rows(const T* Te, int64_t K, int64_t k0, int64_t kt, const T* R, int64_t C,
                         int64_t c, T* msg) {
  constexpr int L = V::lanes;
  typename V::type acc[MB][NV];
  for (int i = 0; i < MB; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = V::load(msg + i * C + c + v * L);
  for (int64_t kk = 0; kk < kt; ++kk) {
    typename V::type r[NV];
    for (int v = 0; v < NV; ++v) r[v] = V::load(R + kk * C + c + v * L);
    for (int i = 0; i < MB; ++i) {
      auto t = V::splat(Te[i * K + k0 + kk]);
      for (int v = 0; v < NV; ++v) acc[i][v] += t * r[v];
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int v = 0; v < NV; ++v) V::store(msg + i * C + c + v * L, acc[i][v]);
}

// every m < M of one edge, in blocks of at most 7 rows (2 d_out + 1 <= 7 at degree 3)
template <typename T, typename V, int NV>
inline void consume_forward(const T* Te, int64_t K, int64_t M, int64_t k0, int64_t kt, const T* R,
                            int64_t C, int64_t c, T* msg) {
  for (int64_t m0 = 0; m0 < M; m0 += 7) {
    const T* t = Te + m0 * K;
    T* o = msg + m0 * C;
    switch (std::min<int64_t>(7, M - m0)) {
      case 7: consume_rows<T, V, NV, 7>(t, K, k0, kt, R, C, c, o); break;
      case 6: consume_rows<T, V, NV, 6>(t, K, k0, kt, R, C, c, o); break;
      case 5: consume_rows<T, V, NV, 5>(t, K, k0, kt, R, C, c, o); break;
      case 4: consume_rows<T, V, NV, 4>(t, K, k0, kt, R, C, c, o); break;
      case 3: consume_rows<T, V, NV, 3>(t, K, k0, kt, R, C, c, o); break;
      case 2: consume_rows<T, V, NV, 2>(t, K, k0, kt, R, C, c, o); break;
      default: consume_rows<T, V, NV, 1>(t, K, k0, kt, R, C, c, o); break;
    }
  }
}

// dR[c, kv..] += (one edge's part) and dT[m, kv..] = of one edge, for lanes(V) consecutive k
// and MB rows m (a compile-time count: the block's registers are unrolled)
template <typename T, typename V, int MB>
inline void grad_rows(const T* Te, const T* g, int64_t K, int64_t C, int64_t k0, int64_t kk,
                      int64_t kt, const T* R, T* dR, T* dTe) {
  typename V::type t[MB], dt[MB];
  for (int i = 0; i < MB; ++i) {
    t[i] = V::load(Te + i * K + k0 + kk);
    dt[i] = V::splat(0);
  }
  for (int64_t c = 0; c < C; ++c) {
    auto d = V::load(dR + c * kt + kk);  // summed over the run's edges (zeroed per tile)
    auto r = R ? V::load(R + c * kt + kk) : V::splat(0);
    for (int i = 0; i < MB; ++i) {
      auto gb = V::splat(g[i * C + c]);
      d += gb * t[i];
      dt[i] += gb * r;
    }
    V::store(dR + c * kt + kk, d);
  }
  if (dTe)
    for (int i = 0; i < MB; ++i) V::store(dTe + i * K + k0 + kk, dt[i]);
}

template <typename T, typename V>
inline void grad_rt(const T* Te, const T* g, int64_t K, int64_t M, int64_t C, int64_t k0,
                    int64_t kk, int64_t kt, const T* R, T* dR, T* dTe) {
  for (int64_t m0 = 0; m0 < M; m0 += 7) {
    const T *t = Te + m0 * K, *gm = g + m0 * C;
    T* dt = dTe ? dTe + m0 * K : nullptr;
    switch (std::min<int64_t>(7, M - m0)) {
      case 7: grad_rows<T, V, 7>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      case 6: grad_rows<T, V, 6>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      case 5: grad_rows<T, V, 5>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      case 4: grad_rows<T, V, 4>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      case 3: grad_rows<T, V, 3>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      case 2: grad_rows<T, V, 2>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
      default: grad_rows<T, V, 1>(t, gm, K, C, k0, kk, kt, R, dR, dt); break;
    }
  }
}

// dW[h, c K + k] += sum_e z[e, h] dR[e, c, k] and dz[e, h] += sum_{c, k} dR[e, c, k] W[h, c K + k]
// over the tile's kt columns k of every channel c, for every h. The dz partial sums stay in
// vector registers across all channels: one horizontal sum per (h, edge) and tile.
template <typename T>
void weight_grads(const T* zt, int64_t H, const T* dR, int64_t C, int64_t kt, const T* W, T* dW,
                  int64_t ldw, int64_t K, bool need_w, bool need_z, T* dz /* [TE, H] */) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  const int64_t n = C * kt;  // dR row length of one edge
  for (int64_t h = 0; h < H; ++h) {
    typename V::type az[TE], zb[TE];
    T sz[TE] = {};
    for (int e = 0; e < TE; ++e) {
      az[e] = V::splat(0);
      zb[e] = V::splat(zt[e * H + h]);
    }
    for (int64_t c = 0; c < C; ++c) {
      const T* w_row = W + h * ldw + c * K;
      T* dw_row = dW + h * ldw + c * K;
      const T* dr = dR + c * kt;
      int64_t j = 0;
      for (; j + L <= kt; j += L) {
        auto w = V::load(w_row + j);
        auto dw = need_w ? V::load(dw_row + j) : V::splat(0);
        for (int e = 0; e < TE; ++e) {
          auto d = V::load(dr + e * n + j);
          dw += zb[e] * d;
          az[e] += d * w;
        }
        if (need_w) V::store(dw_row + j, dw);
      }
      for (; j < kt; ++j) {
        T dw = 0;
        for (int e = 0; e < TE; ++e) {
          const T d = dr[e * n + j];
          dw += zt[e * H + h] * d;
          sz[e] += d * w_row[j];
        }
        if (need_w) dw_row[j] += dw;
      }
    }
    if (need_z)
      for (int e = 0; e < TE; ++e) dz[e * H + h] += V::sum(az[e]) + sz[e];
  }
}

// out[i] += sum over s < S of parts[s n + i], the slices added in slice order whichever thread
// adds them: the per-slice partial sums of a backward pass combined the same in every run
template <typename T>
void add_slices(const std::vector<T>& parts, int64_t S, int64_t n, T* out, int64_t threads) {
  parallel_for(n, threads, [&](int64_t i0, int64_t i1) {
    for (int64_t s = 0; s < S; ++s) {
      const T* part = parts.data() + s * n;
      for (int64_t i = i0; i < i1; ++i) out[i] += part[i];
    }
  });
}

template <typename T>
void backward_impl(const T* z, int64_t U, int64_t H, const T* Wcf, int64_t K, int64_t C,
                   const T* Tm, int64_t t_stride, int64_t M, const int64_t* off,
                   const int64_t* rows, const T* g, T* dT, int64_t dt_stride, T* dW, T* dz,
                   bool need_w, bool need_z, int64_t k_tile, int64_t threads) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  const int64_t tiles = (K + k_tile - 1) / k_tile;
  // threads own k tiles: dW's and dT's columns of a tile are written by one thread only;
  // dz sums over every k: each slice of tiles sums its part into its own buffer, and the
  // buffers are added to dz in slice order (in the order the threads happened to finish, the
  // sum differed from run to run in its last bits, and so did a training run)
  const int64_t S = std::max<int64_t>(1, std::min(threads, tiles));
  std::vector<T> dz_parts(need_z ? S * U * H : 0, T(0));
  parallel_slices(tiles, S, [&](int64_t s, int64_t t0, int64_t t1) {
    std::vector<T> zt(TE * H), R(dT ? TE * C * k_tile : 0), dR(TE * C * k_tile), dzt(TE * H);
    T* dzl = need_z ? dz_parts.data() + s * U * H : nullptr;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t k0 = t * k_tile, kt = std::min(k_tile, K - k0), n = C * kt;
      for (int64_t us = 0; us < U; us += TE) {
        const int64_t te = std::min<int64_t>(TE, U - us);
        std::fill(zt.begin(), zt.end(), T(0));
        std::memcpy(zt.data(), z + us * H, sizeof(T) * te * H);
        if (dT)  // R in the (c, k) layout of the tile: one k segment per channel
          radial_tile_cf<T>(zt.data(), H, Wcf, K, k0, C, kt, R.data());
        std::fill(dR.begin(), dR.end(), T(0));  // padded rows contribute nothing
        for (int64_t u = 0; u < te; ++u) {
          const T* Re = dT ? R.data() + u * n : nullptr;
          for (int64_t i = off[us + u]; i < off[us + u + 1]; ++i) {
            const T* Te = Tm + i * t_stride;
            const T* ge = g + rows[i] * M * C;
            T* dTe = dT ? dT + i * dt_stride : nullptr;
            int64_t kk = 0;
            for (; kk + L <= kt; kk += L)
              grad_rt<T, V>(Te, ge, K, M, C, k0, kk, kt, Re, dR.data() + u * n, dTe);
            for (; kk < kt; ++kk)
              grad_rt<T, Lane<T>>(Te, ge, K, M, C, k0, kk, kt, Re, dR.data() + u * n, dTe);
          }
        }
        if (need_w || need_z) {
          std::fill(dzt.begin(), dzt.end(), T(0));
          weight_grads<T>(zt.data(), H, dR.data(), C, kt, Wcf + k0, need_w ? dW + k0 : nullptr,
                          C * K, K, need_w, need_z, dzt.data());
          if (need_z)
            for (int64_t u = 0; u < te; ++u)
              for (int64_t h = 0; h < H; ++h) dzl[(us + u) * H + h] += dzt[u * H + h];
        }
      }
    }
  });
  if (need_z) add_slices(dz_parts, S, U * H, dz, threads);
}

// The backward pass for narrow K (fewer columns than a vector's lanes: the tiles above would run
// their scalar tails on one thread). The weights in the forward pass's (k, c) order, vectorized
// over channels c; threads own blocks of runs instead of K tiles: a run's dz rows and its
// edges' dT rows are then one thread's, and each slice of runs sums its dW into its own buffer,
// added in slice order (the same sum in every run with that many threads).
//   dR[k, c] += sum_m T[m, k] g[m, c]      dT[m, k] = sum_c g[m, c] R[k, c]
template <typename T>
void grad_runs_edge(const T* Te, int64_t K, int64_t M, const T* ge, int64_t C, const T* R, T* dR,
                    T* dTe) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  for (int64_t k = 0; k < K; ++k) {
    T* d = dR + k * C;
    int64_t c = 0;
    for (; c + L <= C; c += L) {
      auto acc = V::load(d + c);
      for (int64_t m = 0; m < M; ++m) acc += V::splat(Te[m * K + k]) * V::load(ge + m * C + c);
      V::store(d + c, acc);
    }
    for (; c < C; ++c) {
      T acc = d[c];
      for (int64_t m = 0; m < M; ++m) acc += Te[m * K + k] * ge[m * C + c];
      d[c] = acc;
    }
    if (!dTe) continue;
    const T* r = R + k * C;
    for (int64_t m = 0; m < M; ++m) {
      auto acc = V::splat(0);
      T tail = 0;
      int64_t j = 0;
      for (; j + L <= C; j += L) acc += V::load(ge + m * C + j) * V::load(r + j);
      for (; j < C; ++j) tail += ge[m * C + j] * r[j];
      dTe[m * K + k] = V::sum(acc) + tail;
    }
  }
}

template <typename T>
void backward_runs_impl(const T* z, int64_t U, int64_t H, const T* Wkc, int64_t K, int64_t C,
                        const T* Tm, int64_t t_stride, int64_t M, const int64_t* off,
                        const int64_t* rows, const T* g, T* dT, int64_t dt_stride, T* dW, T* dz,
                        bool need_w, bool need_z, int64_t threads) {
  const int64_t n = K * C, blocks = (U + TE - 1) / TE;
  const int64_t S = std::max<int64_t>(1, std::min(threads, blocks));
  std::vector<T> dw_parts(need_w ? S * H * n : 0, T(0));
  parallel_slices(blocks, S, [&](int64_t s, int64_t b0, int64_t b1) {
    std::vector<T> zt(TE * H), R(dT ? TE * n : 0), dR(TE * n), dzt(TE * H);
    T* dwl = need_w ? dw_parts.data() + s * H * n : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t us = b * TE, te = std::min<int64_t>(TE, U - us);
      std::fill(zt.begin(), zt.end(), T(0));
      std::memcpy(zt.data(), z + us * H, sizeof(T) * te * H);
      if (dT) radial_tile<T>(zt.data(), H, Wkc, n, n, R.data(), n);
      std::fill(dR.begin(), dR.end(), T(0));  // padded rows contribute nothing
      for (int64_t u = 0; u < te; ++u)
        for (int64_t i = off[us + u]; i < off[us + u + 1]; ++i)
          grad_runs_edge<T>(Tm + i * t_stride, K, M, g + rows[i] * M * C, C,
                            dT ? R.data() + u * n : nullptr, dR.data() + u * n,
                            dT ? dT + i * dt_stride : nullptr);
      if (need_w || need_z) {
        // the (k, c) layout is weight_grads' (c, k) one with rows and columns swapped: K rows
        // of C columns
        std::fill(dzt.begin(), dzt.end(), T(0));
        weight_grads<T>(zt.data(), H, dR.data(), K, C, Wkc, dwl, n, C, need_w, need_z,
                        dzt.data());
        if (need_z)
          for (int64_t u = 0; u < te; ++u)
            for (int64_t h = 0; h < H; ++h) dz[(us + u) * H + h] += dzt[u * H + h];
      }
    }
  });
  if (need_w) add_slices(dw_parts, S, H * n, dW, threads);
}

// T = Bb x[src] and its gradient for the node features, on the block basis's nonzero entries
// only: row r of an edge's block basis Bb [nb, ni] is zero outside the columns [lo[r], hi[r])
// of its input degree (se3t.so3.blocks.block_column_ranges), 3x fewer products than a dense
// batched matmul at degrees 0..3, and x[src] is read in place instead of gathered.
//   basis_x  T[e, r, c]  = sum_{lo[r] <= i < hi[r]} Bb[e, r, i] x[src[e], i, c]
//   basis_t  gx[e, i, c] = sum_{r: lo[r] <= i < hi[r]} Bb[e, r, i] gT[e, r, c]
// (per edge below; basis_x_impl and basis_t_impl run them over a chunk of edges)
template <typename T, typename V>
inline void axpy_rows(const T* b, const T* x, int64_t n_i, int64_t C, int64_t c, T* out) {
  auto acc = V::splat(0);
  for (int64_t i = 0; i < n_i; ++i) acc += V::splat(b[i]) * V::load(x + i * C + c);
  V::store(out + c, acc);
}

// T of one edge: T[r, c] = sum_{lo[r] <= i < hi[r]} Bb[r, i] xs[i, c]
template <typename T>
void basis_x_edge(const T* Bb, int64_t nb, int64_t ni, const T* xs, int64_t C, const int64_t* lo,
                  const int64_t* hi, T* out) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  for (int64_t r = 0; r < nb; ++r) {
    const T* b = Bb + r * ni + lo[r];
    const T* xr = xs + lo[r] * C;
    T* o = out + r * C;
    const int64_t n_i = hi[r] - lo[r];
    int64_t c = 0;
    for (; c + L <= C; c += L) axpy_rows<T, V>(b, xr, n_i, C, c, o);
    for (; c < C; ++c) axpy_rows<T, Lane<T>>(b, xr, n_i, C, c, o);
  }
}

// the node-feature gradient of one edge: gx[i, c] = sum_{r: lo[r] <= i < hi[r]} Bb[r, i] gT[r, c]
template <typename T>
void basis_t_edge(const T* Bb, int64_t nb, int64_t ni, const T* gT, int64_t C, const int64_t* lo,
                  const int64_t* hi, T* out) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  std::fill(out, out + ni * C, T(0));
  for (int64_t r = 0; r < nb; ++r) {
    const T* b = Bb + r * ni;
    const T* g = gT + r * C;
    for (int64_t i = lo[r]; i < hi[r]; ++i) {
      const auto bi = V::splat(b[i]);
      T* oi = out + i * C;
      int64_t c = 0;
      for (; c + L <= C; c += L) V::store(oi + c, V::load(oi + c) + bi * V::load(g + c));
      for (; c < C; ++c) oi[c] += b[i] * g[c];
    }
  }
}

// One output degree of a fusion group: rows [r0, r0 + M K / C_in) of T, viewed [M, K]; C_o
// output channels. desc holds (r0, M, K, C_o) per degree.
struct Degree {
  int64_t r0, M, K, Co;
  Degree(const int64_t* desc, int64_t d)
      : r0(desc[4 * d]), M(desc[4 * d + 1]), K(desc[4 * d + 2]), Co(desc[4 * d + 3]) {}
};

// The whole fused op of a fusion group, forward. Threads own blocks of edge_block runs: a
// block's T = Bb x[src] is computed into a thread-local buffer (L2; T is never written to
// memory either), then per output degree and K tile the radial weights of TE runs are
// computed into an L1 buffer and contracted with T at once.
template <typename T>
void fused_forward_impl(const T* z, int64_t U, int64_t H, const T* Bb, int64_t nb, int64_t ni,
                        const int64_t* lo, const int64_t* hi, const T* x, int64_t C,
                        const int64_t* src, const int64_t* off, const int64_t* rows,
                        int64_t n_out, const int64_t* desc, const T* const* wts, T* const* outs,
                        int64_t edge_block, int64_t k_tile, int64_t threads) {
  using V = Vec<T>;
  constexpr int L = V::lanes;
  int64_t co_max = 0;
  for (int64_t d = 0; d < n_out; ++d) co_max = std::max(co_max, Degree(desc, d).Co);
  const int64_t blocks = (U + edge_block - 1) / edge_block;
  parallel_for(blocks, threads, [&](int64_t b0, int64_t b1) {
    std::vector<T> zt(TE * H), R(TE * k_tile * co_max), Tb;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t u0 = b * edge_block, u1 = std::min(U, u0 + edge_block);
      const int64_t e0 = off[u0], e1 = off[u1];
      if (Tb.size() < static_cast<size_t>((e1 - e0) * nb * C)) Tb.resize((e1 - e0) * nb * C);
      for (int64_t i = e0; i < e1; ++i)
        basis_x_edge<T>(Bb + i * nb * ni, nb, ni, x + src[i] * ni * C, C, lo, hi,
                        Tb.data() + (i - e0) * nb * C);
      for (int64_t d = 0; d < n_out; ++d) {
        const Degree g(desc, d);
        const int64_t M = g.M, K = g.K, Co = g.Co;
        T* out = outs[d];
        for (int64_t i = e0; i < e1; ++i)
          std::fill(out + rows[i] * M * Co, out + (rows[i] + 1) * M * Co, T(0));
        for (int64_t k0 = 0; k0 < K; k0 += k_tile) {
          const int64_t kt = std::min(k_tile, K - k0), n = kt * Co;
          for (int64_t us = u0; us < u1; us += TE) {
            const int64_t te = std::min<int64_t>(TE, u1 - us);
            std::fill(zt.begin(), zt.end(), T(0));
            std::memcpy(zt.data(), z + us * H, sizeof(T) * te * H);
            radial_tile<T>(zt.data(), H, wts[d] + k0 * Co, K * Co, n, R.data(), n);
            for (int64_t u = 0; u < te; ++u) {
              const T* Re = R.data() + u * n;
              for (int64_t i = off[us + u]; i < off[us + u + 1]; ++i) {
                const T* Te = Tb.data() + (i - e0) * nb * C + g.r0 * C;
                T* msg = out + rows[i] * M * Co;
                int64_t c = 0;
                for (; c + 2 * L <= Co; c += 2 * L)
                  consume_forward<T, V, 2>(Te, K, M, k0, kt, Re, Co, c, msg);
                for (; c + L <= Co; c += L)
                  consume_forward<T, V, 1>(Te, K, M, k0, kt, Re, Co, c, msg);
                for (; c < Co; ++c) consume_forward<T, Lane<T>, 1>(Te, K, M, k0, kt, Re, Co, c, msg);
              }
            }
          }
        }
      }
    }
  });
}

// T and the node-feature gradient of a chunk of edges (the backward pass's), edges in parallel
template <typename T>
void basis_x_impl(const T* Bb, int64_t E, int64_t nb, int64_t ni, const T* x, int64_t C,
                  const int64_t* src, const int64_t* lo, const int64_t* hi, T* out,
                  int64_t threads) {
  parallel_for(E, threads, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      basis_x_edge<T>(Bb + e * nb * ni, nb, ni, x + src[e] * ni * C, C, lo, hi, out + e * nb * C);
  });
}

template <typename T>
void basis_t_impl(const T* Bb, int64_t E, int64_t nb, int64_t ni, const T* gT, int64_t C,
                  const int64_t* lo, const int64_t* hi, T* out, int64_t threads) {
  parallel_for(E, threads, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e)
      basis_t_edge<T>(Bb + e * nb * ni, nb, ni, gT + e * nb * C, C, lo, hi, out + e * ni * C);
  });
}

// Packing the radial last layer for the kernel: out[h, p] = W[perm[p], h] (rows of the stored
// [rows, H] parameter gathered into the kernel's order and transposed) and, for its gradient,
// G[perm[p], h] = g[h, p]. One pass each over blocks of PB rows that stay in L1 (a gather and
// a transposed copy in torch were ~10 % of a training step).
constexpr int64_t PB = 16, QB = 16;

// the [pb, qb] tile at a (row stride lda) into b transposed (row stride ldb); compile-time
// sizes on the full tiles, so the compiler can keep the tile in registers
template <typename T>
inline void transpose_tile(const T* const* rows, int64_t q0, int64_t pb, int64_t qb, T* b,
                           int64_t ldb) {
  if (pb == PB && qb == QB) {
    T tile[PB][QB];
    for (int64_t p = 0; p < PB; ++p) std::memcpy(tile[p], rows[p] + q0, sizeof(T) * QB);
    for (int64_t q = 0; q < QB; ++q)
      for (int64_t p = 0; p < PB; ++p) b[q * ldb + p] = tile[p][q];
    return;
  }
  for (int64_t q = 0; q < qb; ++q)
    for (int64_t p = 0; p < pb; ++p) b[q * ldb + p] = rows[p][q0 + q];
}

template <typename T>
void pack_impl(const T* W, int64_t H, const int64_t* perm, int64_t n, T* out, int64_t threads) {
  parallel_for((n + PB - 1) / PB, threads, [&](int64_t b0, int64_t b1) {
    const T* rows[PB];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * PB, pb = std::min(PB, n - p0);
      for (int64_t p = 0; p < pb; ++p) rows[p] = W + perm[p0 + p] * H;
      for (int64_t h0 = 0; h0 < H; h0 += QB)
        transpose_tile<T>(rows, h0, pb, std::min(QB, H - h0), out + h0 * n + p0, n);
    }
  });
}

template <typename T>
void unpack_impl(const T* g, int64_t H, const int64_t* perm, int64_t n, T* G, int64_t threads) {
  parallel_for((n + PB - 1) / PB, threads, [&](int64_t b0, int64_t b1) {
    T tile[QB][PB];  // [h, p] of the block, then written out as rows perm[p]
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * PB, pb = std::min(PB, n - p0);
      for (int64_t h0 = 0; h0 < H; h0 += QB) {
        const int64_t qb = std::min(QB, H - h0);
        const T* rows[QB];
        for (int64_t q = 0; q < qb; ++q) rows[q] = g + (h0 + q) * n;
        transpose_tile<T>(rows, p0, qb, pb, &tile[0][0], PB);  // tile[p][q] = g[h0 + q, p0 + p]
        for (int64_t p = 0; p < pb; ++p)
          std::memcpy(G + perm[p0 + p] * H + h0, &tile[0][0] + p * PB, sizeof(T) * qb);
      }
    }
  });
}

}  // namespace

// Shapes are checked by the caller (se3t/nn/kernel_cpu.py). Forward, one call per fusion
// group: z [U, H] one row per run, off [U + 1] the runs' first edges (off[0] = 0, off[U] = E),
// rows [E] the output row of each edge; bb [E, nb, ni] the block basis, lo/hi [nb] each row's
// nonzero columns, x [N, ni, C], src [E] rows of x; per output degree d (desc [n_out, 4]: r0,
// M, K, C_o): wts[d] [H, K C_o] in (k, c) order, outs[d] [E, M, C_o] written at rows.
// Backward, per output degree and chunk: z and off of the chunk's runs, wcf [H, C_o K] in
// (c, k) order, T [n, M, K] rows contiguous with edge stride ts, g [*, M, C_o] read at rows;
// dT (may be null) written with edge stride dts, dwcf and dz [U, H] accumulated (null:
// skipped). basis_x: bb [E, nb, ni], x, src, lo/hi, out T [E, nb, C]; basis_t: gt [E, nb, C]
// into out [E, ni, C]. Pack: w [*, H], perm [n] rows of w, out [H, n]; unpack: g [H, n] into
// the rows perm of out [*, H]. All contiguous.
#define SE3T_TFN(T, SUFFIX)                                                                   \
  extern "C" void se3t_tfn_forward_##SUFFIX(                                                  \
      const T* z, int64_t U, int64_t H, const T* bb, int64_t nb, int64_t ni,                  \
      const int64_t* lo, const int64_t* hi, const T* x, int64_t C, const int64_t* src,        \
      const int64_t* off, const int64_t* rows, int64_t n_out, const int64_t* desc,            \
      const T* const* wts, T* const* outs, int64_t edge_block, int64_t k_tile,                \
      int64_t threads) {                                                                      \
    if (U > 0)                                                                                \
      fused_forward_impl<T>(z, U, H, bb, nb, ni, lo, hi, x, C, src, off, rows, n_out, desc,   \
                            wts, outs, std::max<int64_t>(1, edge_block),                      \
                            std::max<int64_t>(1, k_tile), threads);                           \
  }                                                                                           \
  extern "C" void se3t_tfn_backward_##SUFFIX(                                                 \
      const T* z, int64_t U, int64_t H, const T* wcf, int64_t K, int64_t C, const T* tm,      \
      int64_t ts, int64_t M, const int64_t* off, const int64_t* rows, const T* g, T* dt,      \
      int64_t dts, T* dwcf, T* dz, int64_t k_tile, int64_t threads) {                         \
    if (U > 0)                                                                                \
      backward_impl<T>(z, U, H, wcf, K, C, tm, ts, M, off, rows, g, dt, dts, dwcf, dz,        \
                       dwcf != nullptr, dz != nullptr, std::max<int64_t>(1, k_tile), threads); \
  }                                                                                           \
  extern "C" void se3t_tfn_backward_runs_##SUFFIX(                                            \
      const T* z, int64_t U, int64_t H, const T* wkc, int64_t K, int64_t C, const T* tm,      \
      int64_t ts, int64_t M, const int64_t* off, const int64_t* rows, const T* g, T* dt,      \
      int64_t dts, T* dwkc, T* dz, int64_t threads) {                                         \
    if (U > 0)                                                                                \
      backward_runs_impl<T>(z, U, H, wkc, K, C, tm, ts, M, off, rows, g, dt, dts, dwkc, dz,   \
                            dwkc != nullptr, dz != nullptr, threads);                         \
  }                                                                                           \
  extern "C" void se3t_tfn_pack_##SUFFIX(const T* w, int64_t H, const int64_t* perm,         \
                                         int64_t n, T* out, int64_t threads) {               \
    pack_impl<T>(w, H, perm, n, out, threads);                                                \
  }                                                                                           \
  extern "C" void se3t_tfn_unpack_##SUFFIX(const T* g, int64_t H, const int64_t* perm,       \
                                           int64_t n, T* out, int64_t threads) {             \
    unpack_impl<T>(g, H, perm, n, out, threads);                                              \
  }                                                                                           \
  extern "C" void se3t_tfn_basis_x_##SUFFIX(const T* bb, int64_t E, int64_t nb, int64_t ni,  \
                                            const T* x, int64_t C, const int64_t* src,       \
                                            const int64_t* lo, const int64_t* hi, T* out,    \
                                            int64_t threads) {                               \
    basis_x_impl<T>(bb, E, nb, ni, x, C, src, lo, hi, out, threads);                          \
  }                                                                                           \
  extern "C" void se3t_tfn_basis_t_##SUFFIX(const T* bb, int64_t E, int64_t nb, int64_t ni,  \
                                            const T* gt, int64_t C, const int64_t* lo,       \
                                            const int64_t* hi, T* out, int64_t threads) {    \
    basis_t_impl<T>(bb, E, nb, ni, gt, C, lo, hi, out, threads);                              \
  }

SE3T_TFN(float, f32)
SE3T_TFN(double, f64)

extern "C" int64_t se3t_tfn_vector_bytes() { return kVecBytes; }

// 1 when the workers are the caller's OpenMP team, 0 for std::thread workers
extern "C" int64_t se3t_tfn_openmp() {
#if defined(_OPENMP) && !defined(SE3T_STD_THREADS)
  return 1;
#else
  return 0;
#endif
}

"""Optional CPU kernels for decoding: int8 and int4 weights times int8 activations, and fp32 (x86 AVX-512 VNNI).

Why. At batch 1 a decode step reads every weight once, so it is as fast as the weights can be read.
PyTorch's weight-only kernels (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`, what quantize.py runs
by default elsewhere) read at about half of what this machine's memory delivers (`python bench/ceiling.py`):
they turn every weight into a float before multiplying. The fast CPU engines (llama.cpp, fbgemm) quantize
the *activations* too and multiply integers, 64 bytes per instruction (`vpdpbusd`: u8 x s8, four products
summed into each of 16 int32 lanes). That is what these two kernels do:

    x (one row, K values) -> levels qx in -127..127, one scale sx per block of 32 inputs (llama.cpp's Q8_0):
        sx = max|x_block| / 127,   qx = round(x / sx)
    (int4: 32 consecutive inputs, the weights' groups; int8: the 32 inputs one int32 lane reads, 4 from
    each of 8 loads of 64, so that the lane sums integers over 8 loads before a scale multiplies them)
    int8 weights, one scale sw per row:        y[n] = sw[n] * sum_b sx[b] * sum_{k in b} qw[n, k] * qx[k]
    int4 weights, one scale per group of 32:   y[n] = sum_b sw[n, b] * sx[b] * sum_{k in b} qw[n, k] * qx[k]

`reference_int8` and `reference_int4` below compute exactly this with PyTorch ops; tests/test_cpu_kernels.py
checks the kernels against them, alone and on every layer's inputs inside the three models. Rounding the
activations changes the numbers (~0.5% relative error per layer output; perplexity within ±0.06% of the
weight-only path's, docs/quantization.md): quantize.py runs these kernels when from_pretrained is given
no dtype (fp32 activations between the layers), and PyTorch's weight-only kernels for a dtype given
(`float32`: the path the exactness tests and the comparison with transformers use).

Quirks of the integer instruction, each undone once per call, not per weight: it multiplies an *unsigned*
byte by a signed one. int8 weights are read as w + 128 (flipping the top bit), so each row's sum gains
128 * sum(qx), subtracted at the end; int4 levels are stored as q + 8 (0..15, compressed-tensors' layout),
so each block's sum gains 8 * sum(qx_block), subtracted per block.

fp32 (`fp32_linear`, `Float32Linear`): at batch 1 PyTorch's fp32 `F.linear` reads weights at ~0.4 of what the
machine can here (this build's MKL on an AMD CPU). The kernel below is the plain loop done well: each weight
row against each token (`vfmadd`, 16 floats each), the row read start to end, the rows in memory order, each
thread a run of them. No rounding but fp32's own (the order of the sums). checkpoint.load makes every
nn.Linear a Float32Linear when no dtype is given (use_fp32_kernel): it runs the kernel while decoding (up to
64 tokens, no gradient) and nn.Linear's forward otherwise. GPT-2's Conv1D weights, transposed views of the
file's (in, out) matrices, are copied into rows then, once, as llama.cpp stores them: read by columns (8 rows
of w.T at a time into each thread's partial sums) they read 0.91 of rows' rate on fast minutes.

The whole step (`decode_step`, the `Step` class at the end of SOURCE): at batch 1 the kernels leave
~1 ms per token to everything else when the step runs as ~100 separate PyTorch calls (the Python between
them, dynamo's guards, inductor's small kernels): 45% of an int4 GPT-2 124M's step, 13% of an fp32 one's.
`decode_step(model, buffer)` reads the model's modules once (the three architectures: GPT-2's fused
[q | k | v], GPT-NeoX's per-head [q k v] with rotary and a parallel residual, GPT-Neo's three projections)
and runs one token through all of them in C++: LayerNorms, the kernels above for every matmul, attention
over the KV cache, GELU, the LM head. The same arithmetic as the models' forward (transformers'
logits within 1e-4 in fp32: tests/test_cpu_kernels.py); generate(compile=True) runs it for one unpadded
prompt, after checking it once against the model's own logits (generation.step_in_cpp).

Optional: the C++ below is compiled on first use (torch.utils.cpp_extension, ~25 s, once per version, under
~/.cache/torch_extensions). Where the CPU lacks AVX-512 VNNI, or no C++ compiler or ninja is found, or
`GPT_KERNELS=0` is set, `available()` is False and the models run PyTorch's kernels.
"""
import hashlib
import mmap
import os
import sys
import threading
import warnings

import torch
from torch import nn

SOURCE = r"""
#include <torch/extension.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <vector>

// The kernels ask for the weights 32 KB ahead of where they read (_mm_prefetch): left to the hardware's
// prefetcher, a core waits for memory between rows. One core keeps only so many reads in flight, and at ~100 ns
// each, 4 KB ahead (the first choice) capped a core below its share of this machine's memory on a fast minute.
// Whole GPT-2 124M decodes, fractions of the ceiling read in each round (bench/llama_cpp.py's), alternating:
// int4 0.98 with 32 KB against 0.90 with 4 KB (16 KB 0.91; none 0.77 against 0.81, another run), int8 1.01
// against 0.98. Non-temporal (NTA): weights are read once a step, so they should be the first lines the caches
// drop, not the activations, the KV cache or the Python around the step: int8 0.795 against 0.755 on fast
// minutes (ahead in 11 of 13 rounds), int4 0.99 against 0.96, the 20B's shapes alike. fp32's plain loop is
// left to the hardware but in the step's rows of up to 4096 inputs: asking ahead by rows gained 1.05x at GPT-2's
// rows (768 inputs) but lost 1.3x at the 20B's (6144).
constexpr int64_t PREFETCH = 32768;

// ask for the cache lines `distance` bytes past the n bytes at p (weights: non-temporally)
template <int hint = _MM_HINT_NTA>
static inline void ahead(const void* p, int64_t n, int64_t distance) {
  for (int64_t b = 0; b < n; b += 64) _mm_prefetch((const char*)p + distance + b, (enum _mm_hint)hint);
}

// int8: inputs are read 64 at a time, lane l of a load holding inputs 4l..4l+3 of it. A lane's inputs over 8
// loads in a row (512 inputs) form one block of 32, so the lane adds integers for 8 loads before its one scale
// multiplies them: block b of super-block s is {512 s + 64 c + 4 b + t : c < 8, t < 4} (a short last super-
// block, of fewer than 8 loads, has smaller blocks). int4: blocks of 32 consecutive inputs (the weights' groups).

// 16 activations as floats (bf16 is fp32's top half)
static inline __m512 load_x(const float* x) { return _mm512_loadu_ps(x); }
static inline __m512 load_x(const c10::BFloat16* x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)x)), 16));
}

// round(x * inv) -> int32 levels (round half to even, as torch.round)
static inline __m512i levels(__m512 x, __m512 inv) {
  return _mm512_cvt_roundps_epi32(_mm512_mul_ps(x, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// In each 128 bits (4 lanes), every lane gets the max / the sum of the 4
static inline __m512 max_of_4(__m512 v) {
  v = _mm512_max_ps(v, _mm512_permute_ps(v, 0x4e));  // (lanes 2, 3, 0, 1)
  return _mm512_max_ps(v, _mm512_permute_ps(v, 0xb1));  // (1, 0, 3, 2)
}
static inline __m512i sum_of_4(__m512i v) {
  v = _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0x4e));
  return _mm512_add_epi32(v, _mm512_shuffle_epi32(v, (_MM_PERM_ENUM)0xb1));
}

// One row of activations x (K) -> int8 levels q (K, in order), the scale of each block (ls: super-block s, lane
// b at 16 s + b); returns sum_b sx[b] * sum(q_b), the offset of the weights' + 128. Vector j (inputs 16 j..16 j
// + 15) of each load of 64 holds blocks 4 j..4 j + 3, 4 lanes each: the same lanes in every load of the super-
// block, so a block's max is the max of its 4 lanes over the loads.
template <typename T>
static float quantize_row_int8(const T* x, int64_t K, int8_t* q, float* ls) {
  float total = 0.f;
  for (int64_t s = 0; s < K; s += 512) {
    const int loads = (int)std::min<int64_t>(8, (K - s) / 64);
    __m512 inv[4];
    for (int j = 0; j < 4; j++) {
      __m512 amax = _mm512_setzero_ps();
      for (int c = 0; c < loads; c++) amax = _mm512_max_ps(amax, _mm512_abs_ps(load_x(x + s + 64 * c + 16 * j)));
      amax = max_of_4(amax);  // each lane: its block's max
      const __mmask16 nonzero = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
      inv[j] = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(127.f), amax);
      __m512i sum = _mm512_setzero_si512();
      for (int c = 0; c < loads; c++) {
        const __m512i v = levels(load_x(x + s + 64 * c + 16 * j), inv[j]);
        _mm_storeu_si128((__m128i*)(q + s + 64 * c + 16 * j), _mm512_cvtsepi32_epi8(v));
        sum = _mm512_add_epi32(sum, v);
      }
      alignas(64) float a[16];
      alignas(64) int32_t n[16];
      _mm512_store_ps(a, amax);
      _mm512_store_si512(n, sum_of_4(sum));
      for (int b = 0; b < 4; b++) {  // block 4 j + b: lanes 4 b..4 b + 3
        const float scale = a[4 * b] / 127.f;
        ls[s / 32 + 4 * j + b] = scale;
        total += scale * n[4 * b];
      }
    }
  }
  return total;
}

// int4 weights are read in a layout of the kernel's own, made once at load from the saved pairs
// (cpu_kernels.int4_layout; the levels and scales unchanged, only their order):
//  - A row's blocks of 32 inputs go in groups of g = 16 (then 8, then 4 for the last ones). Within a group the
//    4-byte pieces (8 inputs, as pairs) go piece by piece: the first 8 inputs of each of its g blocks, then the
//    next 8 of each, and so on. So lane l of each of the group's g / 4 loads of 64 bytes holds block l % g, and
//    the scales multiply a lane's integer sum once per group, not once per load (half the instructions).
//  - Rows go in tiles of 4: load c of rows n..n+3 side by side (256 bytes), so the 4 rows read as one stream in
//    memory order, and each load of the activations serves 4 rows. The last N % 4 rows are plain. In the cache
//    1.2-1.45x at GPT-2's widths, 1.12-1.3x at the 20B's; from memory, a 2-layer 20B decoded at 91.7 tok/s
//    against 76.1 with its rows one after the other (in turns, ahead in 8 of 9 rounds; 1 thread 1.15-1.2x).
// The activations: levels in the same order (per load: [64 low nibbles' inputs | 64 high ones'], a byte's low
// nibble its even input), each block's scale (ls) and the offset it subtracts (lo = 8 * scale * sum of its
// levels, split over its 16 / g lanes)
static inline int group_of(int64_t blocks_left) { return blocks_left >= 16 ? 16 : blocks_left >= 8 ? 8 : 4; }

template <typename T>
static void quantize_row_int4(const T* x, int64_t K, int8_t* q, float* ls, float* lo) {
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  for (int64_t first = 0, g; first < K / 32; first += g) {
    g = group_of(K / 32 - first);
    for (int64_t b = first; b < first + g; b++) {
      const __m512 x0 = load_x(x + 32 * b), x1 = load_x(x + 32 * b + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
      const __m512 inv = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
      const __m512i ve = levels(_mm512_permutex2var_ps(x0, even, x1), inv);
      const __m512i vo = levels(_mm512_permutex2var_ps(x0, odd, x1), inv);
      alignas(16) int32_t e[4], o[4];  // chunk c: 4 bytes of levels (inputs 8c..8c+7's evens, odds)
      _mm_store_si128((__m128i*)e, _mm512_cvtsepi32_epi8(ve));
      _mm_store_si128((__m128i*)o, _mm512_cvtsepi32_epi8(vo));
      for (int64_t c = 0; c < 4; c++) {  // chunk c of block b sits at unit c * g + (b - first) of the group
        const int64_t unit = c * g + (b - first);
        int32_t* at = (int32_t*)(q + 32 * first + 128 * (unit / 16)) + unit % 16;
        at[0] = e[c], at[16] = o[c];
      }
      const float scale = amax / 127.f;
      ls[b] = scale;
      lo[b] = 0.5f * g * scale * _mm512_reduce_add_epi32(_mm512_add_epi32(ve, vo));
    }
  }
}

// int8 weights W (N, K), row n: sum over super-blocks of ls * (integer dot of w + 128 and q), two in flight
static inline __m512i int8_dot(const int8_t* w, const int8_t* q, int loads) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  __m512i d[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
  for (int c = 0; c < loads; c++) {
    _mm_prefetch((const char*)(w + 64 * c + PREFETCH), _MM_HINT_NTA);
    d[c % 4] = _mm512_dpbusd_epi32(d[c % 4], _mm512_xor_si512(_mm512_loadu_si512(w + 64 * c), flip),
                                   _mm512_loadu_si512(q + 64 * c));
  }
  return _mm512_add_epi32(_mm512_add_epi32(d[0], d[1]), _mm512_add_epi32(d[2], d[3]));
}

static inline float int8_row(const int8_t* w, int64_t K, const int8_t* q, const float* ls) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 1024 <= K; k += 1024) {
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(int8_dot(w + k, q + k, 8)), _mm512_loadu_ps(ls + k / 32), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(int8_dot(w + k + 512, q + k + 512, 8)),
                           _mm512_loadu_ps(ls + k / 32 + 16), acc1);
  }
  for (; k < K; k += 512) {
    const int loads = (int)std::min<int64_t>(8, (K - k) / 64);
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(int8_dot(w + k, q + k, loads)), _mm512_loadu_ps(ls + k / 32), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// The same for 4 tokens at once (a prompt): each load of the row and its top-bit flip serve the 4
static inline void int8_row_4(const int8_t* w, int64_t K, const int8_t* q, const float* ls, int64_t L, float* out) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t k = 0; k < K; k += 512) {
    const int loads = (int)std::min<int64_t>(8, (K - k) / 64);
    __m512i d[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
    for (int c = 0; c < loads; c++) {
      const __m512i wv = _mm512_xor_si512(_mm512_loadu_si512(w + k + 64 * c), flip);
      for (int t = 0; t < 4; t++) d[t] = _mm512_dpbusd_epi32(d[t], wv, _mm512_loadu_si512(q + t * K + k + 64 * c));
    }
    for (int t = 0; t < 4; t++)
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d[t]), _mm512_loadu_ps(ls + t * L + k / 32), acc[t]);
  }
  for (int t = 0; t < 4; t++) out[t] = _mm512_reduce_add_ps(acc[t]);
}

// g of a row's int4 scales (float or bf16) for lanes 0..15, lane l taking block l % g
template <int g> static inline __m512 spread(const float* s) {
  if (g == 16) return _mm512_loadu_ps(s);
  if (g == 8) return _mm512_broadcast_f32x8(_mm256_loadu_ps(s));
  return _mm512_broadcast_f32x4(_mm_loadu_ps(s));
}
template <int g> static inline __m512 spread(const c10::BFloat16* s) {  // bf16 is fp32's top half
  if (g == 16) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)s)), 16));
  if (g == 8) return _mm512_broadcast_f32x8(_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)s)), 16)));
  return _mm512_broadcast_f32x4(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(_mm_loadl_epi64((const __m128i*)s)), 16)));
}

// One group of g blocks of R int4 rows (R = 4, or 1) stored in tiles (load c of row r at p + 64 (R c + r)), their
// scales `sstride` apart: g / 4 loads of 64 bytes a row, lane l block l % g, each load of the levels serving the
// R rows. The integer dots of each lane, then sum over blocks of sw * (sx * dot - lo) into acc[r]
template <int g, int R, typename S>
static inline void int4_group(const uint8_t* p, const S* sw, int64_t sstride, const int8_t* q,
                              const float* ls, const float* lo, __m512* acc) {
  const __m512i low = _mm512_set1_epi8(0x0f);
  __m512i d0[R], d1[R];
  for (int r = 0; r < R; r++) d0[r] = d1[r] = _mm512_setzero_si512();
  for (int c = 0; c < g / 4; c++) {
    const __m512i q0 = _mm512_loadu_si512(q + 128 * c), q1 = _mm512_loadu_si512(q + 128 * c + 64);
    for (int r = 0; r < R; r++) {
      const uint8_t* w = p + 64 * (R * c + r);
      _mm_prefetch((const char*)(w + PREFETCH), _MM_HINT_NTA);
      const __m512i b = _mm512_loadu_si512(w);
      d0[r] = _mm512_dpbusd_epi32(d0[r], _mm512_and_si512(b, low), q0);
      d1[r] = _mm512_dpbusd_epi32(d1[r], _mm512_andnot_si512(low, b), q1);  // 16 x the high nibbles
    }
  }
  const __m512 sx = spread<g>(ls), off = spread<g>(lo);
  // the rows' scales too, as far ahead as their weights (an eighth of the bytes): whole int4 GPT-2 on fast
  // minutes, alternating, 0.835 of the ceiling against 0.78 without (ahead in 7 of 8 rounds); the 20B's alike
  for (int r = 0; r < R; r++) _mm_prefetch((const char*)(sw + r * sstride) + PREFETCH / 8, _MM_HINT_NTA);
  for (int r = 0; r < R; r++)
    acc[r] = _mm512_fmadd_ps(spread<g>(sw + r * sstride), _mm512_fmsub_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(d0[r], _mm512_srai_epi32(d1[r], 4))), sx, off), acc[r]);
}

// out[r] = the sum of acc[r]'s 16 lanes; 4 at once: halves added, then pairs of rows by hadd
template <int R> static inline void sum_lanes(const __m512* acc, float* out) {
  if (R == 1) { out[0] = _mm512_reduce_add_ps(acc[0]); return; }
  __m256 h[4];
  for (int r = 0; r < 4; r++) h[r] = _mm256_add_ps(_mm512_castps512_ps256(acc[r]), _mm512_extractf32x8_ps(acc[r], 1));
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));  // (r0 r1 r2 r3 | the same)
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

// R int4 rows in the kernel's order (P, K/2 bytes each), their scales sw (K/32 each) against one row of levels
template <int R, typename S>
static inline void int4_row(const uint8_t* p, const S* sw, int64_t K, const int8_t* q, const float* ls,
                            const float* lo, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; r++) acc[r] = _mm512_setzero_ps();
  const int64_t B = K / 32;
  int64_t b = 0;
  for (; b + 16 <= B; b += 16) int4_group<16, R>(p + 16 * R * b, sw + b, B, q + 32 * b, ls + b, lo + b, acc);
  if (b + 8 <= B) int4_group<8, R>(p + 16 * R * b, sw + b, B, q + 32 * b, ls + b, lo + b, acc), b += 8;
  if (b + 4 <= B) int4_group<4, R>(p + 16 * R * b, sw + b, B, q + 32 * b, ls + b, lo + b, acc);
  sum_lanes<R>(acc, out);
}

// Rows begin..end-1 of int8 weights W (N, K) against M rows of levels q (M, K): Y (M, N). (Functions of their
// own, their arguments plain values: inside parallel_for's lambda the same loops ran 1.2x slower per row.)
template <typename T, typename S>
static void int8_rows(const int8_t* W, const S* sw, int64_t K, int64_t M, int64_t N, const int8_t* q,
                      const float* ls, const float* total, int64_t L, int64_t begin, int64_t end, T* Y) {
  for (int64_t n = begin; n < end; n++) {
    int64_t m = 0;
    float dots[4];
    for (; m + 4 <= M; m += 4) {  // a prompt: 4 tokens at a time
      int8_row_4(W + n * K, K, q + m * K, ls + m * L, L, dots);
      for (int t = 0; t < 4; t++)
        Y[(m + t) * N + n] = static_cast<T>(static_cast<float>(sw[n]) * (dots[t] - 128.f * total[m + t]));
    }
    for (; m < M; m++)
      Y[m * N + n] = static_cast<T>(static_cast<float>(sw[n]) * (int8_row(W + n * K, K, q + m * K, ls + m * L) - 128.f * total[m]));
  }
}

// The same for int4 weights P (N, K/2) in the kernel's layout (tiles of 4 rows: begin a multiple of 4), scales
// sw (N, K/32)
template <typename T, typename S>
static void int4_rows(const uint8_t* P, const S* sw, int64_t K, int64_t M, int64_t N, const int8_t* q,
                      const float* ls, const float* lo, int64_t L, int64_t begin, int64_t end, T* Y) {
  float out[4];
  int64_t n = begin;
  for (; n + 4 <= end && n + 4 <= N - N % 4; n += 4)
    for (int64_t m = 0; m < M; m++) {
      int4_row<4>(P + n * (K / 2), sw + n * (K / 32), K, q + m * K, ls + m * L, lo + m * L, out);
      for (int r = 0; r < 4; r++) Y[m * N + n + r] = static_cast<T>(out[r]);
    }
  for (; n < end; n++)
    for (int64_t m = 0; m < M; m++) {
      int4_row<1>(P + n * (K / 2), sw + n * (K / 32), K, q + m * K, ls + m * L, lo + m * L, out);
      Y[m * N + n] = static_cast<T>(out[0]);
    }
}

// x (M, K) float or bf16, w int8 (N, K) or int4 uint8 (N, K/2, the kernel's layout), sw float (N,) or (N, K/32)
// -> Y (M, N)
template <typename T, typename S>
static void linear_into(const T* X, int64_t M, int64_t K, const at::Tensor& w, const at::Tensor& sw, bool int4, T* Y) {
  const int64_t N = w.size(0);
  const int64_t L = int4 ? K / 32 : ((K + 511) / 512) * 16;  // scales per row
  std::vector<int8_t> q(M * K);
  std::vector<float> ls(M * L), lo(int4 ? M * L : 0), total(M);
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; m++)
      if (int4) quantize_row_int4(X + m * K, K, q.data() + m * K, ls.data() + m * L, lo.data() + m * L);
      else total[m] = quantize_row_int8(X + m * K, K, q.data() + m * K, ls.data() + m * L);
  });
  const S* W_scale = sw.data_ptr<S>();
  const int8_t* W8 = int4 ? nullptr : w.data_ptr<int8_t>();
  const uint8_t* W4 = int4 ? w.data_ptr<uint8_t>() : nullptr;
  // one row at a time, each thread a run of rows: the weights stream through memory in order, once, and
  // each row stays in the cache for all M activations
  at::parallel_for(0, int4 ? (N + 3) / 4 : N, int4 ? 16 : 64, [&](int64_t begin, int64_t end) {
    if (int4)  // (runs of whole tiles of 4 rows)
      int4_rows(W4, W_scale, K, M, N, q.data(), ls.data(), lo.data(), L, 4 * begin, std::min(N, 4 * end), Y);
    else
      int8_rows(W8, W_scale, K, M, N, q.data(), ls.data(), total.data(), L, begin, end, Y);
  });
}

template <typename T, typename S>
static at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sw, bool int4) {
  at::Tensor y = at::empty({x.size(0), w.size(0)}, x.options());
  linear_into<T, S>(x.data_ptr<T>(), x.size(0), x.size(1), w, sw, int4, y.data_ptr<T>());
  return y;
}

static inline __mmask16 first(int64_t n) {  // the first n of 16 lanes
  return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// fp32 weights W (N, K) by rows: one dot product of a row of W and a row of x, the row read in memory order
// (four sums in flight, 64 floats a step; the last K % 16 inputs masked). Reading one row start to end
// keeps the hardware prefetcher on one stream: 4 rows at a time (4 streams K floats apart) read 0.75x as fast.
static inline float fp32_row(const float* w, const float* x, int64_t K) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 32), _mm512_loadu_ps(x + k + 32), a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 48), _mm512_loadu_ps(x + k + 48), a3);
  }
  for (; k < K; k += 16) {
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(first(K - k), w + k), _mm512_maskz_loadu_ps(first(K - k), x + k), a0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// w (N, K) by rows: each thread a run of rows, each row for all M tokens while it is in the cache
static void fp32_by_rows(const float* X, const float* W, const float* B, int64_t M, int64_t K, int64_t N, float* Y) {
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++)
      for (int64_t m = 0; m < M; m++) Y[m * N + n] = fp32_row(W + n * K, X + m * K, K) + (B ? B[n] : 0.f);
  });
}

// x (M, K) float, w (N, K) float stored by rows, optional bias (N,) -> (M, N)
at::Tensor fp32_linear(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous(), "contiguous 2-D x, 2-D w");
  TORCH_CHECK(w.is_contiguous(), "w: stored by rows (contiguous)");
  TORCH_CHECK(x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat, "x and w: float32");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(w.size(1) == K && K >= 1, "w: (N, K)");
  const float* B = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == N, "bias: (N,) float32");
    B = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({M, N}, x.options());
  fp32_by_rows(x.data_ptr<float>(), w.data_ptr<float>(), B, M, K, N, y.data_ptr<float>());
  return y;
}

static void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sw, bool int4) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && w.is_contiguous() && sw.is_contiguous(), "contiguous 2-D x");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x: float32 or bfloat16");
  TORCH_CHECK(sw.scalar_type() == at::kFloat || sw.scalar_type() == at::kBFloat16, "scales: float32 or bfloat16");
  const int64_t K = x.size(1);
  TORCH_CHECK(K % (int4 ? 128 : 64) == 0, "input width must be a multiple of ", int4 ? 128 : 64);
  TORCH_CHECK(w.size(1) == (int4 ? K / 2 : K) && w.scalar_type() == (int4 ? at::kByte : at::kChar), "weights");
  TORCH_CHECK(sw.numel() == (int4 ? w.size(0) * (K / 32) : w.size(0)), "scales' shape");
}

static at::Tensor dispatch(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sw, bool int4) {
  check(x, w, sw, int4);
  using bf16 = c10::BFloat16;
  const bool xb = x.scalar_type() == at::kBFloat16, sb = sw.scalar_type() == at::kBFloat16;
  if (xb) return sb ? linear<bf16, bf16>(x, w, sw, int4) : linear<bf16, float>(x, w, sw, int4);
  return sb ? linear<float, bf16>(x, w, sw, int4) : linear<float, float>(x, w, sw, int4);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& sw) {
  return dispatch(x, w, sw, false);
}

at::Tensor int4_linear(const at::Tensor& x, const at::Tensor& pairs, const at::Tensor& sw) {
  return dispatch(x, pairs, sw, true);
}

// Saved int4 pairs (N, K/2) -> the int4 kernel's layout (cpu_kernels.int4_layout), or back (int4_pairs): within
// each group of g blocks of a row, piece 4 b + c (piece c of block b; a piece is 4 bytes, 8 inputs) goes to
// c g + b (int4_order); the row's 16-piece chunks then go in its tile, chunk j of row n % 4 at 16 (4 j + n % 4)
// of the tile's 4 P pieces. A group's pieces are moved by permutes of 16 at a time (a piece at a time, the
// first version, moved 0.4x as many bytes a second as a plain copy, and made reloading a 20B ~1 s slower).
struct Relayout {
  __m512i g4, g8[2], g16[4], b8[2], b16[4];  // the permutes' lane indices: forward g*, back b*
  Relayout() {
    alignas(64) int32_t t[16];
    auto vec = [&](auto f) { for (int i = 0; i < 16; i++) t[i] = f(i); return _mm512_load_si512(t); };
    g4 = vec([](int i) { return 4 * (i % 4) + i / 4; });  // (a 4 x 4 transpose: its own inverse)
    for (int j = 0; j < 2; j++) {
      g8[j] = vec([j](int i) { return 4 * (i % 8) + 2 * j + i / 8; });
      b8[j] = vec([j](int i) { const int u = 16 * j + i; return (u % 4) * 8 + u / 4; });
    }
    for (int c = 0; c < 4; c++) {
      g16[c] = vec([c](int i) { return i < 8 ? 4 * i + c : 0; });  // blocks 0-7 of 2 vectors (then 8-15 of the next 2)
      b16[c] = vec([c](int i) { return (i % 4) % 2 * 16 + 4 * c + i / 4; });  // saved vector c: from 2 pairs of chunks
    }
  }
  // row s (saved order) <-> its chunks in the kernel's order at k, k + step, k + 2 step, ...
  void row(int32_t* s, int32_t* k, int64_t step, int64_t blocks, bool back) const {
    for (int64_t first = 0, g; first < blocks; first += g) {
      g = group_of(blocks - first);
      int32_t *sv = s + 4 * first, *kv = k + first / 4 * step;  // (4 first pieces: first / 4 chunks)
      __m512i v[4];
      for (int i = 0; i < g / 4; i++) v[i] = _mm512_loadu_si512(back ? kv + i * step : sv + 16 * i);
      __m512i w[4];
      if (g == 4) w[0] = _mm512_permutexvar_epi32(g4, v[0]);
      else if (g == 8) for (int j = 0; j < 2; j++) w[j] = _mm512_permutex2var_epi32(v[0], back ? b8[j] : g8[j], v[1]);
      else if (!back)
        for (int c = 0; c < 4; c++)  // chunk c: blocks 0-7 from the first 32 pieces, 8-15 from the last 32
          w[c] = _mm512_shuffle_i64x2(_mm512_permutex2var_epi32(v[0], g16[c], v[1]),
                                      _mm512_permutex2var_epi32(v[2], g16[c], v[3]), 0x44);
      else
        for (int h = 0; h < 4; h++)  // saved vector h: pieces c = 0, 1 from chunks 0, 1, pieces c = 2, 3 from 2, 3
          w[h] = _mm512_mask_blend_epi32((__mmask16)0xCCCC, _mm512_permutex2var_epi32(v[0], b16[h], v[1]),
                                         _mm512_permutex2var_epi32(v[2], b16[h], v[3]));
      for (int i = 0; i < g / 4; i++) _mm512_storeu_si512(back ? sv + 16 * i : kv + i * step, w[i]);
    }
  }
};

void int4_relayout(const at::Tensor& from, at::Tensor& out, bool back) {
  TORCH_CHECK(from.is_contiguous() && out.is_contiguous() && from.sizes() == out.sizes() && from.dim() == 2 &&
              from.scalar_type() == at::kByte && out.scalar_type() == at::kByte && from.size(1) % 64 == 0,
              "int4 layout: (N, K/2) uint8, K a multiple of 128");
  const int64_t N = from.size(0), P = from.size(1) / 4, blocks = from.size(1) / 16;  // P: pieces a row
  const int64_t T = N - N % 4;  // the rows in tiles
  const Relayout move;
  int32_t *src = (int32_t*)from.data_ptr(), *dst = (int32_t*)out.data_ptr();
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; n++) {
      // the row's chunks in the kernel's layout: in its tile, 4 rows' chunks side by side; or one after another
      const int64_t kernel = n < T ? (n / 4) * 4 * P + 16 * (n % 4) : n * P, step = n < T ? 64 : 16;
      if (back) move.row(dst + n * P, src + kernel, step, blocks, true);
      else move.row(src + n * P, dst + kernel, step, blocks, false);
    }
  });
}

// ---------------------------------------------------------------------------------------------------------
// The whole one-token decode step, batch 1, in C++ (Step below; cpu_kernels.decode_step builds one from a
// model). The same arithmetic as the model files' forward on one token, with the kernels above for every
// matmul: what it saves is the ~1 ms per token that running the step as ~100 separate PyTorch calls costs
// (the Python between them, dynamo's guards, inductor's small kernels).

struct Linear {  // one nn.Linear (or quantize.py's layer): y (N) = x (K) @ W.T + bias
  int64_t kind;  // 0: fp32 W (N, K) by rows; 1: int8; 2: int4
  at::Tensor w, scales, bias;
  int64_t K() const { return w.size(1) * (kind == 2 ? 2 : 1); }  // (int4: two inputs a byte)
};

// The step runs as one parallel region (Step::run): each of the T threads runs all of it, computes its share of
// every matmul's outputs and of the attention heads, and waits at a barrier before anything reads what the
// others wrote. What is small (the LayerNorms, the residual adds) every thread computes whole, on its own copy:
// cheaper than waiting. (A region per matmul, parallel_for's, cost ~2.5 us each to start and end here.)
struct Team {
  int t, T;  // this thread, of T
  int64_t from(int64_t n) const { return n * t / T; }  // this thread's share of n things: from(n)..to(n)-1
  int64_t to(int64_t n) const { return n * (t + 1) / T; }
};

struct Scratch {  // one thread's quantized activations
  std::vector<int8_t> q;
  std::vector<float> ls, lo;
};

template <typename S>
static void int_part(const Linear& l, const float* x, int64_t K, float* y, int64_t begin, int64_t end, Scratch& s) {
  const int64_t N = l.w.size(0), L = s.ls.size();  // (L: room for any K's scales; the rows read their own)
  if (l.kind == 1) {
    const float total = quantize_row_int8(x, K, s.q.data(), s.ls.data());
    int8_rows<float, S>(l.w.data_ptr<int8_t>(), l.scales.data_ptr<S>(), K, 1, N, s.q.data(), s.ls.data(), &total, L, begin, end, y);
  } else {
    quantize_row_int4(x, K, s.q.data(), s.ls.data(), s.lo.data());
    int4_rows<float, S>(l.w.data_ptr<uint8_t>(), l.scales.data_ptr<S>(), K, 1, N, s.q.data(), s.ls.data(), s.lo.data(), L, begin, end, y);
  }
}

// This thread's run of l's rows (outputs), int4's in whole tiles of 4 rows
static std::pair<int64_t, int64_t> rows_of(const Linear& l, const Team& team) {
  const int64_t N = l.w.size(0), tiles = (N + 3) / 4;
  if (l.kind != 2) return {team.from(N), team.to(N)};
  return {std::min(N, 4 * team.from(tiles)), std::min(N, 4 * team.to(tiles))};
}

// Ask for the start of this thread's share of l's weights (WARM bytes), of its scales, and its bias: called
// before the barrier ahead of l, so that they arrive while the threads wait and the small work between the
// matmuls runs, instead of l starting by waiting on memory. Half the kernels' own distance (PREFETCH): a core
// asked for more waits to issue the requests (with 32 KB, these and warm_kv took ~50 us a token of an int4
// GPT-2 on each thread), and the hardware's prefetcher takes the stream on. In turns, int4 GPT-2 at 1..128
// tokens: 1.041 of the ceiling against 1.012 (32 KB; 8 KB 1.019), 1.004 against 0.955 another run; int8 on
// fast minutes (66-71 GB/s) ahead in 4 of 5.
constexpr int64_t WARM = 16384;
static void warm(const Linear& l, const Team& team) {
  const int64_t N = l.w.size(0), bytes = l.w.numel() * l.w.element_size(), stride = bytes / N;  // a row's bytes
  const auto [row, end] = rows_of(l, team);
  ahead((const char*)l.w.data_ptr() + row * stride, std::min(WARM, bytes - row * stride), 0);
  if (l.kind >= 1) {
    const int64_t per_row = l.scales.numel() / N * l.scales.element_size();
    ahead((const char*)l.scales.data_ptr() + row * per_row, std::min<int64_t>(4096, (N - row) * per_row), 0);
  }
  if (l.bias.defined())  // the bias of the rows it writes, added last (into L2: the weights stream through L1)
    ahead<_MM_HINT_T1>(l.bias.data_ptr<float>() + row, 4 * (end - row), 0);
}

// This thread's part of y (N) = x (K) @ W.T + bias: a run of the rows (int4: of its tiles of 4 rows). Returns the
// rows of y it wrote.
static std::pair<int64_t, int64_t> linear_part(const Linear& l, const float* x, float* y, Scratch& s, const Team& team) {
  const int64_t N = l.w.size(0), K = l.K();
  const float* B = l.bias.defined() ? l.bias.data_ptr<float>() : nullptr;
  const auto [begin, end] = rows_of(l, team);
  if (l.kind == 0) {
    const float* W = l.w.data_ptr<float>();
    for (int64_t n = begin; n < end; n++) {
      // rows of up to 4096 inputs (GPT-2's LM head: 31% of its fp32 bytes) asked for PREFETCH ahead: in turns, fp32
      // GPT-2 0.948 of the ceiling against 0.921 (ahead in 8 of 9); the 20B's rows (6144, 24576) lost 1.3x so
      if (K <= 4096) ahead(W + n * K, 4 * K, PREFETCH);
      y[n] = fp32_row(W + n * K, x, K) + (B ? B[n] : 0.f);
    }
  } else {
    if (l.scales.scalar_type() == at::kBFloat16) int_part<c10::BFloat16>(l, x, K, y, begin, end, s);
    else int_part<float>(l, x, K, y, begin, end, s);
    for (int64_t n = begin; B && n < end; n++) y[n] += B[n];
  }
  return {begin, end};
}

// nn.LayerNorm of one row: (x - mean) / sqrt(var + eps) * w + b, mean and var over the row (summed in 16 lanes:
// the plain loop in doubles, 25 rows a token on each thread, was ~4% of an int4 GPT-2 step)
static void layer_norm(const float* x, int64_t C, const at::Tensor& w, const at::Tensor& b, double eps, float* y) {
  __m512 sum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
  for (int64_t c = 0; c < C; c += 16) sum = _mm512_add_ps(sum, _mm512_maskz_loadu_ps(first(C - c), x + c));
  const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / C);
  for (int64_t c = 0; c < C; c += 16) {
    const __m512 d = _mm512_maskz_sub_ps(first(C - c), _mm512_maskz_loadu_ps(first(C - c), x + c), mean);
    sq = _mm512_fmadd_ps(d, d, sq);
  }
  const __m512 rstd = _mm512_set1_ps(1.f / std::sqrt(_mm512_reduce_add_ps(sq) / C + (float)eps));
  const float *W = w.data_ptr<float>(), *B = b.data_ptr<float>();
  for (int64_t c = 0; c < C; c += 16) {
    const __mmask16 m = first(C - c);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + c), mean);
    _mm512_mask_storeu_ps(y + c, m, _mm512_fmadd_ps(_mm512_mul_ps(d, rstd), _mm512_maskz_loadu_ps(m, W + c), _mm512_maskz_loadu_ps(m, B + c)));
  }
}

// e^x for x <= 88 (softmax's exponents, the largest score subtracted, and GELU's): 2^n e^r, n = round(x / ln 2), r = x - n ln 2
// (ln 2 in two parts, Cephes'), e^r by its Taylor series to r^6: ~1e-7 relative error, as std::exp to a few ulps
static inline __m512 exp_16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));  // (e^-87 ~ 1e-38: the floats end there)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);  // p * 2^n
}

// GELU of n floats in place, as F.gelu: x * P(x), P the normal distribution's CDF, 0.5 (1 + erf(x / sqrt 2));
// or its tanh form ("tanh", GPT-2's), 0.5 (1 + tanh u) = 1 / (1 + e^(-2u)), u = sqrt(2 / pi) (x + 0.044715 x^3).
// erf(z), z >= 0, by Abramowitz and Stegun's 7.1.26: 1 - t (a1 + t (a2 + ... + t a5)) e^(-z^2), t = 1 / (1 + p z),
// |error| < 1.5e-7 (F.gelu's fp32 is as close: test_the_steps_gelu_is_f_gelu). PyTorch's at::gelu_ on each thread's
// rows cost ~5% of an int4 GPT-2 step here (its dispatch, more than its arithmetic).
static void gelu_inplace(float* x, int64_t n, bool tanh_form) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    __m512 cdf;
    if (tanh_form) {
      const __m512 u = _mm512_mul_ps(_mm512_set1_ps(0.7978845608f), _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), v), _mm512_mul_ps(v, v), v));
      const __m512 e = exp_16(_mm512_min_ps(_mm512_mul_ps(_mm512_set1_ps(-2.f), u), _mm512_set1_ps(88.f)));
      cdf = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), e));
    } else {
      const __m512 z = _mm512_mul_ps(_mm512_abs_ps(v), _mm512_set1_ps(0.70710678f));
      const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), z, _mm512_set1_ps(1.f)));
      __m512 poly = _mm512_set1_ps(1.061405429f);
      for (float a : {-1.453152027f, 1.421413741f, -0.284496736f, 0.254829592f}) poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(a));
      const __m512 erfc = _mm512_mul_ps(_mm512_mul_ps(poly, t), exp_16(_mm512_mul_ps(_mm512_set1_ps(-1.f), _mm512_mul_ps(z, z))));
      // P(x) = 1 - erfc / 2 for x >= 0, erfc / 2 for x < 0
      const __m512 half = _mm512_mul_ps(_mm512_set1_ps(0.5f), erfc);
      cdf = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), _mm512_sub_ps(_mm512_set1_ps(1.f), half), half);
    }
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(v, cdf));
  }
}

void gelu_(at::Tensor& x, bool tanh_form) {  // (cpu_kernels.gelu_: the step's GELU, for its test)
  TORCH_CHECK(x.is_contiguous() && x.scalar_type() == at::kFloat, "gelu_: a contiguous fp32 tensor");
  gelu_inplace(x.data_ptr<float>(), x.numel(), tanh_form);
}

// The KV cache's keys and values are asked for 4 KB ahead, as any other data: reading the cache key after key,
// one core otherwise waits for memory at each (as the kernels' rows did)
constexpr int64_t KV_AHEAD = 4096;

struct Block {
  at::Tensor norm1_w, norm1_b, norm2_w, norm2_b;
  double eps1, eps2, scale;
  std::vector<Linear> qkv;  // one fused projection, or q, k, v apart (GPT-Neo)
  Linear out, fc, proj;
  at::Tensor K, V;  // the KV cache's buffers (1, nh, L, hd), written at slot pos
};

struct Step {
  int64_t C, nh, hd, layout;  // layout of q, k, v in the projection's output: 0 [q | k | v], 1 per head [q k v]
  bool parallel;              // x + attn(ln1(x)) + mlp(ln2(x)) (GPT-NeoX), else one after the other
  std::string gelu;           // "tanh" or "none": F.gelu's approximate
  at::Tensor wte, wpe, inv_freq;  // wpe: learned positions (or undefined); inv_freq: rotary's (or undefined)
  std::vector<Block> blocks;
  at::Tensor norm_w, norm_b;
  double eps = 1e-5;
  Linear head;
  at::Tensor qkv, att, a, mlp, f;  // what the threads share: (3C), (C), (C), (C), (the MLP's width)
  int64_t widest = 0;  // the widest input of any matmul

  Step(int64_t C, int64_t nh, int64_t layout, bool parallel, std::string gelu, at::Tensor wte,
       c10::optional<at::Tensor> wpe, c10::optional<at::Tensor> inv_freq)
      : C(C), nh(nh), hd(C / nh), layout(layout), parallel(parallel), gelu(gelu), wte(wte) {
    if (wpe) this->wpe = *wpe;
    if (inv_freq) this->inv_freq = *inv_freq;
    for (at::Tensor* t : {&att, &a, &mlp}) *t = at::empty({C}, wte.options());
    qkv = at::empty({3 * C}, wte.options());
  }

  // (kind, weight, scales, bias) from Python (cpu_kernels.linear) -> a Linear
  using Lin = std::tuple<int64_t, at::Tensor, c10::optional<at::Tensor>, c10::optional<at::Tensor>>;
  Linear linear(const Lin& l) {
    Linear out{std::get<0>(l), std::get<1>(l)};
    if (std::get<2>(l)) out.scales = *std::get<2>(l);
    if (std::get<3>(l)) out.bias = *std::get<3>(l);
    widest = std::max(widest, out.K());
    return out;
  }

  void add_block(std::vector<at::Tensor> norms, double eps1, double eps2, std::vector<Lin> qkv_, Lin out,
                 Lin fc, Lin proj, double scale, at::Tensor K, at::Tensor V) {
    Block b{norms[0], norms[1], norms[2], norms[3], eps1, eps2, scale};
    for (auto& l : qkv_) b.qkv.push_back(linear(l));
    b.out = linear(out), b.fc = linear(fc), b.proj = linear(proj), b.K = K, b.V = V;
    if (!f.defined() || f.numel() < b.fc.w.size(0)) f = at::empty({b.fc.w.size(0)}, wte.options());
    blocks.push_back(b);
  }

  void set_head(at::Tensor w, at::Tensor b, double eps_, Lin l) { norm_w = w, norm_b = b, eps = eps_, head = linear(l); }

  // Attention of the new token at slot pos over slots 0..pos, this thread's heads: their keys and values are
  // written into the cache first (rotated first, with rotary), then softmax(q . k * scale) @ v.
  void attend(Block& b, int64_t pos, const std::vector<float>& cos, const std::vector<float>& sin, const Team& team) {
    const int64_t L = b.K.size(2), half = cos.size();  // half of the rotary dims
    float *QKV = qkv.data_ptr<float>(), *Kc = b.K.data_ptr<float>(), *Vc = b.V.data_ptr<float>(), *O = att.data_ptr<float>();
    std::vector<float> p(pos + 1);
    for (int64_t head = team.from(nh); head < team.to(nh); head++) {
      float* q = QKV + (layout == 0 ? head * hd : head * 3 * hd);
      float* k = QKV + (layout == 0 ? C + head * hd : head * 3 * hd + hd);
      float* v = QKV + (layout == 0 ? 2 * C + head * hd : head * 3 * hd + 2 * hd);
      for (float* t : {q, k})  // rotary (GPT-NeoX): dims i and i + r/2 of the first r turn by one angle
        for (int64_t i = 0; i < half; i++) {
          const float x1 = t[i], x2 = t[i + half];
          t[i] = x1 * cos[i] - x2 * sin[i];
          t[i + half] = x2 * cos[i] + x1 * sin[i];
        }
      float *kh = Kc + (head * L) * hd, *vh = Vc + (head * L) * hd;
      std::copy(k, k + hd, kh + pos * hd);
      std::copy(v, v + hd, vh + pos * hd);
      float top = -INFINITY;
      for (int64_t j = 0; j <= pos; j++) {
        ahead<_MM_HINT_T0>(kh + j * hd, 4 * hd, KV_AHEAD);
        ahead<_MM_HINT_T0>(vh + j * hd, 4 * hd, KV_AHEAD);  // (the values' too, read next)
        top = std::max(top, p[j] = fp32_row(kh + j * hd, q, hd) * (float)b.scale);  // q . k
      }
      __m512 sum = _mm512_setzero_ps();  // p = e^(score - top), 16 at a time, and their sum
      for (int64_t j = 0; j <= pos; j += 16) {
        const __m512 e = exp_16(_mm512_sub_ps(_mm512_maskz_loadu_ps(first(pos + 1 - j), p.data() + j), _mm512_set1_ps(top)));
        _mm512_mask_storeu_ps(p.data() + j, first(pos + 1 - j), e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(first(pos + 1 - j), e));
      }
      const __m512 norm = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
      float* o = O + head * hd;
      for (int64_t d = 0; d < hd; d += 64) {  // o = sum over j of p_j v_j, 64 of the head's dims at a time
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        const __mmask16 m[4] = {first(hd - d), first(hd - d - 16), first(hd - d - 32), first(hd - d - 48)};
        for (int64_t j = 0; j <= pos; j++) {
          const __m512 pj = _mm512_set1_ps(p[j]);
          const float* v = vh + j * hd + d;
          for (int c = 0; c < 4; c++) acc[c] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(m[c], v + 16 * c), acc[c]);
        }
        for (int c = 0; c < 4; c++) _mm512_mask_storeu_ps(o + d + 16 * c, m[c], _mm512_mul_ps(acc[c], norm));
      }
    }
  }

  // Ask for this thread's heads' keys and values so far (slots 0..pos-1) of block b, before the barrier ahead of
  // the block: the ~70 MB of weights a token reads push the cache out of the caches, and attention otherwise
  // waits on memory (an int4 GPT-2's attention at 1..64 tokens, each thread: ~90 us a token, ~50 with this, ~14 with
  // the cache wholly in the caches)
  void warm_kv(Block& b, int64_t pos, const Team& team) {
    const int64_t L = b.K.size(2);
    for (int64_t head = team.from(nh); head < team.to(nh); head++)
      for (at::Tensor* cache : {&b.K, &b.V}) ahead<_MM_HINT_T0>(cache->data_ptr<float>() + head * L * hd, 4 * pos * hd, 0);
  }

  at::Tensor run(int64_t token, int64_t pos) {
    TORCH_CHECK(token >= 0 && token < wte.size(0) && pos >= 0 && pos < blocks[0].K.size(2), "token or position out of range");
    at::Tensor logits = at::empty({1, head.w.size(0)}, wte.options());
    std::vector<float> cos, sin;  // rotary's angles at this position, as the model's: pos * inv_freq, in fp32
    for (int64_t i = 0; inv_freq.defined() && i < inv_freq.numel(); i++) {
      const float angle = (float)pos * inv_freq.data_ptr<float>()[i];
      cos.push_back(std::cos(angle));
      sin.push_back(std::sin(angle));
    }
    const int T = std::max(1, at::get_num_threads());
#pragma omp parallel num_threads(T)
    run_on(Team{omp_get_thread_num(), omp_get_num_threads()}, token, pos, cos, sin, logits.data_ptr<float>());
    return logits;
  }

  // What each thread of the region runs: the whole step, its share of the matmuls and heads
  void run_on(const Team& team, int64_t token, int64_t pos, const std::vector<float>& cos, const std::vector<float>& sin,
              float* logits) {
    std::vector<float> x(C), h(C);  // this thread's copy of the residual stream, and of a LayerNorm's output
    Scratch s{std::vector<int8_t>(widest), std::vector<float>(widest / 16 + 16), std::vector<float>(widest / 16 + 16)};
    float *QKV = qkv.data_ptr<float>(), *A = a.data_ptr<float>(), *M = mlp.data_ptr<float>(), *F = f.data_ptr<float>();
    const float* E = wte.data_ptr<float>() + token * C;
    for (int64_t c = 0; c < C; c++) x[c] = E[c] + (wpe.defined() ? wpe.data_ptr<float>()[pos * C + c] : 0.f);
    warm(blocks[0].qkv[0], team);  // (each matmul's start asked for before the barrier ahead of it: warm)
    warm_kv(blocks[0], pos, team);
    for (size_t i = 0; i < blocks.size(); i++) {
      Block& b = blocks[i];
      layer_norm(x.data(), C, b.norm1_w, b.norm1_b, b.eps1, h.data());
      for (size_t j = 0; j < b.qkv.size(); j++) {  // one fused projection, or q, k, v
        linear_part(b.qkv[j], h.data(), QKV + j * C, s, team);
        warm(j + 1 < b.qkv.size() ? b.qkv[j + 1] : b.out, team);
#pragma omp barrier
      }
      attend(b, pos, cos, sin, team);
#pragma omp barrier
      linear_part(b.out, att.data_ptr<float>(), A, s, team);
      warm(b.fc, team);
#pragma omp barrier
      if (!parallel) for (int64_t c = 0; c < C; c++) x[c] += A[c];
      layer_norm(x.data(), C, b.norm2_w, b.norm2_b, b.eps2, h.data());  // (parallel: from the block's input)
      const auto rows = linear_part(b.fc, h.data(), F, s, team);
      gelu_inplace(F + rows.first, rows.second - rows.first, gelu == "tanh");  // of the rows it wrote
      warm(b.proj, team);
#pragma omp barrier
      linear_part(b.proj, F, M, s, team);
      warm(i + 1 < blocks.size() ? blocks[i + 1].qkv[0] : head, team);
      if (i + 1 < blocks.size()) warm_kv(blocks[i + 1], pos, team);
#pragma omp barrier
      for (int64_t c = 0; c < C; c++) x[c] = parallel ? x[c] + A[c] + M[c] : x[c] + M[c];
    }
    layer_norm(x.data(), C, norm_w, norm_b, eps, h.data());
    linear_part(head, h.data(), logits, s, team);
  }
};

TORCH_LIBRARY(gpt_kernels, m) {
  m.def("int8_linear(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("int4_linear(Tensor x, Tensor pairs, Tensor scales) -> Tensor");
  m.def("fp32_linear(Tensor x, Tensor w, Tensor? bias) -> Tensor");
  m.def("int4_relayout(Tensor src, Tensor(a!) out, bool back) -> ()");
  m.def("gelu_(Tensor(a!) x, bool tanh_form) -> ()");
}
TORCH_LIBRARY_IMPL(gpt_kernels, CPU, m) {
  m.impl("int8_linear", int8_linear);
  m.impl("int4_linear", int4_linear);
  m.impl("fp32_linear", fp32_linear);
  m.impl("int4_relayout", int4_relayout);
  m.impl("gelu_", gelu_);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Step>(m, "Step", pybind11::module_local())  // (module_local: two copies of this file may load)
      .def(pybind11::init<int64_t, int64_t, int64_t, bool, std::string, at::Tensor, c10::optional<at::Tensor>,
                          c10::optional<at::Tensor>>())
      .def("add_block", &Step::add_block)
      .def("set_head", &Step::set_head)
      .def("run", &Step::run, pybind11::call_guard<pybind11::gil_scoped_release>());
}
"""

FLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-fopenmp"]
NEEDS = {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni"}  # /proc/cpuinfo's names


def cpu_has_vnni():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return NEEDS <= set(flags)


STATE = {}  # "ok": whether the kernels are built and loaded (found once per process)


def available():
    """Whether the kernels can run here: x86 with AVX-512 VNNI, built (once, then cached) and loaded."""
    if "ok" not in STATE:
        STATE["ok"] = os.environ.get("GPT_KERNELS", "1") != "0" and cpu_has_vnni() and build()
    return STATE["ok"]


def runs_on(device):
    """Whether the kernels run for tensors on `device`: a CPU, and available()."""
    return torch.device(device).type == "cpu" and available()


def build():
    """Compile SOURCE (once per version of it: a directory named by its hash) and load it; False, with a
    warning, where that fails."""
    from torch.utils import cpp_extension
    version = hashlib.sha256((SOURCE + " ".join(FLAGS) + torch.__version__).encode()).hexdigest()[:16]
    root = os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/torch_extensions"))
    directory = os.path.join(root, f"gpt_kernels-{version}")
    if not os.path.exists(os.path.join(directory, "gpt_kernels.so")):
        print(f"cpu_kernels.py: compiling the CPU kernels, once (~25 s) into {directory}",
              file=sys.stderr, flush=True)
    try:
        os.makedirs(directory, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            STATE["module"] = cpp_extension.load_inline(
                "gpt_kernels", SOURCE, extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], build_directory=directory)
    except Exception as e:  # no compiler, no ninja, no space...: PyTorch's kernels it is
        warnings.warn(f"cpu_kernels.py: could not build its kernels ({str(e).splitlines()[0]}); "
                      "the models use PyTorch's kernels")
        return False
    torch.library.register_fake("gpt_kernels::int8_linear")(shape_of)  # what torch.compile traces
    torch.library.register_fake("gpt_kernels::int4_linear")(shape_of)
    torch.library.register_fake("gpt_kernels::fp32_linear")(shape_of)
    return True


def shape_of(x, w, scales_or_bias):
    return x.new_empty(x.shape[0], w.shape[0])


def int8_linear(x, w, scales):
    """x (M, K) fp32/bf16, w int8 (N, K), scales fp32/bf16 (N,) -> (M, N) in x's dtype. K a multiple of 64."""
    return torch.ops.gpt_kernels.int8_linear(x, w, scales)


def int4_linear(x, weight, scales):
    """x (M, K), weight uint8 (N, K/2) in the kernel's layout (int4_layout of the saved pairs), scales
    fp32/bf16 (N, K/32). K % 128 == 0."""
    return torch.ops.gpt_kernels.int4_linear(x, weight, scales)


def int4_layout(pairs, out=None):
    """Saved int4 pairs (N, K/2) uint8 (byte j: level 2j low, 2j + 1 high) -> the int4 kernel's layout (into
    `out` if given). reference_int4_layout, below, says it in PyTorch ops; this is the same copy in C++, which
    keeps loading a 20B as fast as before (the PyTorch ops, 64 rows at a time, doubled its load)."""
    out = torch.empty_like(pairs) if out is None else out
    torch.ops.gpt_kernels.int4_relayout(pairs.contiguous(), out, False)
    return out


def int4_pairs(weight):
    """int4_layout undone: the saved pairs."""
    out = torch.empty_like(weight)
    torch.ops.gpt_kernels.int4_relayout(weight.contiguous(), out, True)
    return out


def gelu_(x, approximate="none"):
    """F.gelu(x, approximate=...) ("none" or "tanh") in place, x contiguous fp32: the C++ step's own GELU,
    exposed for its test (tests/test_cpu_kernels.py)."""
    torch.ops.gpt_kernels.gelu_(x, approximate == "tanh")
    return x


def fp32_linear(x, w, bias=None):
    """x (M, K) fp32, w (N, K) fp32 stored by rows (contiguous), bias (N,) or None -> (M, N): F.linear,
    reading w at 1.6-3.6x the rate of PyTorch's gemv on this build at one token (bench/ceiling.py); exact up
    to the order of the sums."""
    return torch.ops.gpt_kernels.fp32_linear(x, w, bias)


MAX_TOKENS = 64  # fp32_linear's tokens per call (decoding, short prompts); past that, PyTorch's gemm


class Float32Linear(nn.Linear):
    """nn.Linear whose forward, at up to MAX_TOKENS tokens on a CPU in float32 with no gradient to keep
    (decoding), runs fp32_linear; anything else (a long prompt, training, another dtype or device) runs
    nn.Linear's own."""

    def forward(self, x):
        w, b = self.weight, self.bias
        fits = (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
                and w.is_contiguous() and x.shape[:-1].numel() <= MAX_TOKENS
                and (b is None or b.dtype == torch.float32)
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))
        if not fits:
            return super().forward(x)
        y = fp32_linear(x.reshape(-1, x.shape[-1]).contiguous(), w, None if b is None else b.contiguous())
        return y.view(*x.shape[:-1], w.shape[0])


def use_fp32_kernel(model):
    """Every nn.Linear of `model` becomes a Float32Linear: the same module (its weights, hooks, names), whose
    forward decodes with fp32_linear. A weight stored by columns (GPT-2's Conv1D: a transposed view of the
    file's (in, out) matrix) is copied into rows, in 2 MB pages: the whole fp32 GPT-2 124M decoded at 0.966 of
    the ceiling against 0.922 by columns, on fast minutes (in turns, ahead in 9 of 15 rounds; the 8 rows of
    w.T each step of that kernel reads are 8 streams for the hardware's prefetcher, rows one). (checkpoint.load
    does this where available() and no dtype is given.)"""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Float32Linear
            w = module.weight
            if w.device.type == "cpu" and not w.is_contiguous() and w.t().is_contiguous():
                rows = empty_in_large_pages(w.shape, w.dtype).copy_(w.detach())
                module.weight = nn.Parameter(rows, requires_grad=w.requires_grad)
    return model


def empty_in_large_pages(shape, dtype):
    """torch.empty(shape, dtype=dtype) on the CPU, in memory asked of Linux in 2 MB pages (transparent huge
    pages: madvise(MADV_HUGEPAGE) before the memory is first touched; the kernel may still give 4 KB ones).
    The int8-activation kernels read their weights 1.07-1.08x faster from them here (bench/ceiling.py's 2 MB
    pages: one TLB entry per 2 MB of a stream). Small tensors share 64 MB chunks, so that they too can sit
    in 2 MB pages; a chunk is freed with the last tensor in it. Elsewhere: torch.empty."""
    if sys.platform != "linux" or not hasattr(mmap, "MADV_HUGEPAGE"):
        return torch.empty(shape, dtype=dtype)
    n = torch.Size(shape).numel() * dtype.itemsize
    with LARGE_PAGES["lock"]:
        chunk, used = LARGE_PAGES["chunk"], LARGE_PAGES["used"]
        if chunk is None or used + n > len(chunk):
            size = max(64 << 20, -(-n // (2 << 20)) * (2 << 20))
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            memory.madvise(mmap.MADV_HUGEPAGE)
            chunk, used = torch.frombuffer(memory, dtype=torch.uint8), 0  # (the tensor keeps the map alive)
        LARGE_PAGES["chunk"], LARGE_PAGES["used"] = chunk, used + -(-n // 64) * 64  # 64-byte aligned
    return chunk[used:used + n].view(dtype).view(shape)


LARGE_PAGES = {"chunk": None, "used": 0, "lock": threading.Lock()}  # empty_in_large_pages' current chunk

# ----------------------------------------------------------------------------- the whole one-token step


GELUS = {"gelu": "none", "gelu_python": "none", "gelu_new": "tanh", "gelu_fast": "tanh", "gelu_accurate": "tanh",
         "gelu_python_tanh": "tanh", "gelu_pytorch_tanh": "tanh"}  # checkpoint.ACTIVATIONS' GELUs: F.gelu's


def decode_step(model, buffer):
    """The model's one-token decode step over `buffer` (kv_cache.FullBuffer), batch 1, run whole in C++ (Step in
    SOURCE): `step(token, pos)` -> the logits (1, V) of `token` at position `pos`, its keys and values written
    into the buffer's slot `pos`. The same arithmetic as the model's forward, ~1 ms a token faster (the step as
    ~100 PyTorch calls costs that much here). None where it does not apply: kernels not available, another
    architecture or a module it does not know (a hook, a subclass, tensor parallel, a dtype but float32)."""
    if not available() or buffer.k[0].shape[0] != 1:
        return None
    parts = model_parts(model)
    if parts is None:
        return None
    c = model.config
    rotary = c.MODEL_TYPE == "gpt_neox"
    if rotary:  # as gpt_neox.rotary_cos_sin: dim pair i turns by position * base^(-2i / r)
        inv_freq = 1.0 / (c.rotary_emb_base ** (torch.arange(0, c.rotary_ndims, 2, dtype=torch.float) / c.rotary_ndims))
    step = STATE["module"].Step(parts["wte"].shape[1], buffer.k[0].shape[1], 1 if rotary else 0,
                                bool(rotary and c.use_parallel_residual), parts["gelu"], parts["wte"], parts["wpe"],
                                inv_freq if rotary else None)
    for i, (ln1, qkv, out, ln2, fc, proj, scale) in enumerate(parts["blocks"]):
        step.add_block([ln1.weight, ln1.bias, ln2.weight, ln2.bias], ln1.eps, ln2.eps, qkv, out, fc, proj, scale,
                       buffer.k[i], buffer.v[i])
    step.set_head(parts["ln_f"].weight, parts["ln_f"].bias, parts["ln_f"].eps, parts["head"])
    return step.run


def model_parts(model):
    """What Step reads of the three architectures' models, or None for one it cannot run."""
    c = model.config
    kind = c.MODEL_TYPE
    act = getattr(c, "hidden_act" if kind == "gpt_neox" else "activation_function", None)
    if act not in GELUS or any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return None
    if kind == "gpt2":
        body = model.transformer
        blocks = [(b.ln_1, [b.attn.c_attn], b.attn.c_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj, b.attn.scale)
                  for b in body.h]
        parts = dict(wte=body.wte.weight, wpe=body.wpe.weight, ln_f=body.ln_f, head=model.lm_head)
    elif kind == "gpt_neo":
        body = model.transformer
        blocks = [(b.ln_1, [b.attn.attention.q_proj, b.attn.attention.k_proj, b.attn.attention.v_proj],
                   b.attn.attention.out_proj, b.ln_2, b.mlp.c_fc, b.mlp.c_proj, 1.0) for b in body.h]
        parts = dict(wte=body.wte.weight, wpe=body.wpe.weight, ln_f=body.ln_f, head=model.lm_head)
    elif kind == "gpt_neox":
        body = model.gpt_neox
        blocks = [(b.input_layernorm, [b.attention.query_key_value], b.attention.dense, b.post_attention_layernorm,
                   b.mlp.dense_h_to_4h, b.mlp.dense_4h_to_h, b.attention.scale) for b in body.layers]
        parts = dict(wte=body.embed_in.weight, wpe=None, ln_f=body.final_layer_norm, head=model.embed_out)
    else:
        return None
    norms = [n for ln1, _, _, ln2, *_ in blocks for n in (ln1, ln2)] + [parts["ln_f"]]
    blocks = [(ln1, [linear(m) for m in qkv], linear(out), ln2, linear(fc), linear(proj), scale)
              for ln1, qkv, out, ln2, fc, proj, scale in blocks]  # the layers as Step takes them
    parts["head"] = linear(parts["head"])
    layers = [l for _, qkv, out, _, fc, proj, _ in blocks for l in (*qkv, out, fc, proj)] + [parts["head"]]
    floats = [parts["wte"], parts["wpe"]] + [t for n in norms for t in (n.weight, n.bias)]
    affine = all(type(n) is nn.LayerNorm and n.weight is not None and n.bias is not None for n in norms)
    if not affine or any(l is None for l in layers) or not all(
            t is None or (t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu") for t in floats):
        return None
    return dict(parts, blocks=blocks, gelu=GELUS[act])


def linear(layer):
    """(kind, weight, scales, bias) for Step: 0 fp32 by rows, 1 int8, 2 int4 (quantize.py's); None
    for a layer Step does not run: one of another type or dtype, or split by tensor parallel."""
    if type(layer) in (nn.Linear, Float32Linear):
        w, b = layer.weight, layer.bias
        if not (w.dtype == torch.float32 and w.is_contiguous()
                and (b is None or (b.dtype == torch.float32 and b.is_contiguous()))):
            return None
        return (0, w, None, b)
    if not (getattr(layer, "kernel", None) == "int8 activations" and layer.reduce is None  # (quantize.py's)
            and (layer.bias is None or layer.bias.dtype == torch.float32)):
        return None
    N, int4 = layer.out_features, layer.weight.dtype == torch.uint8
    if int4 and len(layer.weight) != N:  # (rows cut off: the tiles of 4 rows are the whole layer's)
        return None
    bias = None if layer.bias is None else layer.bias[:N].contiguous()  # (int8: rows cut off, dropped as outputs does)
    return (2 if int4 else 1, layer.weight[:N], layer.scales[:N], bias)


# ----------------------------------------------------------------------------- the same arithmetic, in PyTorch


def blocks_int8(K):
    """The block of each of K inputs in the int8 kernel: the 32 inputs one int32 lane reads over 8 loads of 64
    (a short last super-block of fewer than 8 loads has smaller blocks)."""
    k = torch.arange(K)
    return (k // 512) * 16 + (k % 64) // 4


def quantize_activations(x, blocks):
    """x (M, K) -> (levels (M, K) fp32 in -127..127, scales (M, B)); blocks: (K,) each input's block, 0..B-1."""
    x = x.float()
    amax = x.new_zeros(x.shape[0], int(blocks.max()) + 1).scatter_reduce(1, blocks.expand_as(x), x.abs(), "amax")
    n127 = torch.full_like(amax, 127)  # (a tensor: PyTorch multiplies by 1/127 for a scalar, off in the last bit)
    inv = torch.where(amax > 0, n127 / amax, torch.zeros_like(amax))
    return (x * inv[:, blocks]).round(), amax / n127


def reference(x, w, blocks):
    """Per block, sx * (integer dot of qx and w): (M, N, B) fp64; w (N, K) levels, blocks (K,)."""
    qx, sx = quantize_activations(x, blocks)
    dots = torch.zeros(x.shape[0], w.shape[0], sx.shape[1], dtype=torch.float64)
    dots.index_add_(2, blocks, qx.double()[:, None, :] * w.double()[None])  # exact integers
    return dots * sx.double()[:, None, :]


def reference_int8(x, w, scales):
    return (reference(x, w, blocks_int8(w.shape[1])).sum(-1) * scales.double()).to(x.dtype)


def int4_order(K):
    """Where the int4 kernel keeps a row's 4-byte pieces (8 inputs each): piece order[p] of the saved row at
    position p. Blocks of 32 inputs (4 pieces) in groups of 16, then 8, then 4; within a group of g blocks,
    the pieces (g blocks, 4) are stored transposed, (4, g)."""
    order, first, blocks = [], 0, K // 32
    while first < blocks:
        g = 16 if blocks - first >= 16 else 8 if blocks - first >= 8 else 4
        order.append(torch.arange(4 * first, 4 * (first + g)).view(g, 4).T.reshape(-1))
        first += g
    return torch.cat(order)


def reference_int4_layout(pairs):
    """int4_layout in PyTorch ops: each row's pieces in int4_order, then rows in tiles of 4, load c (64 bytes)
    of each of the 4 side by side (the last N % 4 rows plain)."""
    N, P = pairs.shape
    rows = pairs.view(torch.int32)[:, int4_order(2 * P)].view(torch.uint8)
    T = N - N % 4
    return torch.cat([rows[:T].reshape(T // 4, 4, P // 64, 64).transpose(1, 2).reshape(T, P), rows[T:]])


def reference_int4(x, pairs, scales):
    levels = torch.stack([pairs & 15, pairs >> 4], dim=-1).reshape(pairs.shape[0], -1).double() - 8  # (N, K)
    blocks = torch.arange(levels.shape[1]) // 32
    return (reference(x, levels, blocks) * scales.double()).sum(-1).to(x.dtype)

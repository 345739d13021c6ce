// gpunn's fused CUDA kernels, loaded by cupy_backend.py through one cupy.RawModule.
//
// Every kernel is a template over the element type T (float or double) and is instantiated by
// name ("bias_act<float>", ...). The sources compile under NVRTC with no headers, so nothing here
// may use INFINITY, FLT_MAX or <cmath>: limits are spelled out and math goes through overloads.
// tests/test_cuda_sources.py compiles this file for sm_80 and sm_90 in CI, without a GPU.
//
// Each kernel writes every element of its outputs (tests poison outputs first), reads only what
// it is given, and allocates nothing, so a whole training step can be captured as a CUDA graph.
//
// The optimizer's schedule slots (SCHEDULE_LR_T, ...) and rule codes (RULE_ADAM, ...) come from
// gpunn/backends/schedule.py as -D options (cuda.NVRTC_OPTIONS), so Python and CUDA share them.
#ifndef SCHEDULE_SIZE
#error "compile with the -D options of gpunn.backends.cuda.NVRTC_OPTIONS (the schedule's slots)"
#endif

__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }

template <typename T> __device__ __forceinline__ T lowest();
template <> __device__ __forceinline__ float lowest<float>() { return -3.402823466e+38f; }
template <> __device__ __forceinline__ double lowest<double>() { return -1.7976931348623157e+308; }

// Log inputs are clipped to [CLIP, 1 - CLIP], as in the book (base.py's CLIP).
#define CLIP 1e-7

// A sample's cross-entropy loss from its true-class probability: -log(clip(p_true)).
template <typename T>
__device__ __forceinline__ T clipped_nll(T p_true) {
    return -dev_log(p_true < T(CLIP) ? T(CLIP) : (p_true > T(1 - CLIP) ? T(1 - CLIP) : p_true));
}

// A kernel's dynamic shared memory (sized by its launch). A macro so that tests/cuda_on_cpu can
// run these kernels on the CPU with a buffer of its own.
#ifndef DYNAMIC_SHARED_MEMORY
#define DYNAMIC_SHARED_MEMORY(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// ---- bf16 rounding (precision "bf16") -------------------------------------------------------

// x rounded to bfloat16 (the upper 16 bits of a float32), to nearest, ties to even: a carry out
// of the lower half rounds up, and overflow becomes infinity, as for any float rounding. A NaN
// stays a (quiet) NaN of the same sign instead of carrying into infinity. Written with bit
// operations so it needs no header (cuda_bf16.h) and runs on the CPU as well.
__device__ __forceinline__ unsigned short bf16_bits(float x) {
    unsigned int bits = __float_as_uint(x);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return (unsigned short)((bits >> 16) | 0x0040u);
    return (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// A value as it is, or bfloat16 bits widened to float32 (exact): a GEMM operand under precision
// "bf16", or a hidden layer's output, which that precision keeps in bfloat16 only.
__device__ __forceinline__ float operand(float x) { return x; }
__device__ __forceinline__ double operand(double x) { return x; }
__device__ __forceinline__ float operand(unsigned short bits) {
    return __uint_as_float((unsigned int)bits << 16);
}

// Whether the ReLU passed its input, given its output: output > 0, a subnormal float counting as
// 0. CuPy compiles every kernel with -ftz=true, under which a float comparison calls a subnormal 0
// (as NumPy does with denormals flushed); but on an H200 relu_backward and
// relu_backward_column_sum, both compiled so, answered differently for an output of 1e-45. Read
// from the bits, every kernel gives the same answer whatever the compiler makes of a comparison:
// a positive normal number or +infinity passes; zeros, subnormals, negatives and NaNs do not.
__device__ __forceinline__ bool relu_passed(float x) {
    unsigned int bits = __float_as_uint(x);
    return bits >= 0x00800000u && bits <= 0x7f800000u;
}
__device__ __forceinline__ bool relu_passed(double x) { return x > 0; }

// ---- Dense forward and ReLU backward ----------------------------------------------------------

// z = z + biases (broadcast over rows), then max(z, 0) when relu != 0. z is (n, k), row-major.
// With write16 (float32 models under precision "bf16"), z16 gets the result rounded to bf16 in the
// same pass: the next Dense layer's GEMM operand, without a second read of z. With write16 and not
// write32, z16 alone (a hidden layer's output under "bf16", kept in bfloat16 only): z is left as
// the GEMM wrote it, which saves writing 4 bytes an element to read 2 back.
template <typename T>
__global__ void bias_act(T* z, const T* biases, long long n, int k, int relu, unsigned short* z16,
                         int write16, int write32) {
    long long size = n * k;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        T v = z[i] + biases[i % k];
        v = (relu && v < T(0)) ? T(0) : v;
        if (write32) z[i] = v;
        if (write16) z16[i] = bf16_bits((float)v);
    }
}

// bias_act for float32 rows of a multiple of 4 columns: each thread takes four neighbouring
// columns, keeps their biases in registers and walks down the rows, so no element's column is
// found by a remainder (bias_act's i % k: 64-bit, or 32-bit where the values fit, some tens of
// instructions an element either way; on an H200 its pass over medium's 1024 x 1024 moved about
// 0.84 TB/s, eagerly timed by gpunn bench --ops) and, where z and z16 are aligned for it,
// four values move at a time (a 16-byte read, 16- and 8-byte writes; see float_to_bf16). The
// same operations on each value as bias_act: the same bits. A block is 32 column quads by 8 rows;
// the one-dimensional grid is column_blocks blocks across the columns times as many down the rows.
#define QUAD_COLUMNS 32
#define QUAD_ROWS 8
#define QUAD_THREADS (QUAD_COLUMNS * QUAD_ROWS)
__global__ void __launch_bounds__(QUAD_THREADS)
bias_act_quads(float* z, const float* biases, long long n, int k, int relu, unsigned short* z16,
               int write16, int write32, int column_blocks) {
    int quads = k / 4;
    int q = (blockIdx.x % column_blocks) * blockDim.x + threadIdx.x;
    if (q >= quads) return;
    long long first = (long long)(blockIdx.x / column_blocks) * blockDim.y + threadIdx.y;
    long long step = (long long)(gridDim.x / column_blocks) * blockDim.y;
    bool vectors = ((unsigned long long)z % 16 == 0) &&
                   (!write16 || (unsigned long long)z16 % 8 == 0);
    float b[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) b[j] = biases[4 * q + j];
    for (long long row = first; row < n; row += step) {
        long long at = row * quads + q;  // the quad's index; 4 * at its first value's
        float v[4];
        if (vectors) {
            float4 x = reinterpret_cast<const float4*>(z)[at];
            v[0] = x.x; v[1] = x.y; v[2] = x.z; v[3] = x.w;
        } else {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = z[4 * at + j];
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[j] = v[j] + b[j];
            v[j] = (relu && v[j] < 0.0f) ? 0.0f : v[j];
        }
        if (write32) {
            if (vectors) {
                float4 x;
                x.x = v[0]; x.y = v[1]; x.z = v[2]; x.w = v[3];
                reinterpret_cast<float4*>(z)[at] = x;
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) z[4 * at + j] = v[j];
            }
        }
        if (write16) {
            if (vectors) {
                ushort4 h;
                h.x = bf16_bits(v[0]); h.y = bf16_bits(v[1]);
                h.z = bf16_bits(v[2]); h.w = bf16_bits(v[3]);
                reinterpret_cast<ushort4*>(z16)[at] = h;
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) z16[4 * at + j] = bf16_bits(v[j]);
            }
        }
    }
}

// out = x transposed: x (n rows of k) into out (k rows of n), both row-major, for the
// weight gradients of precision "tf32" (cupy_backend.py): Hopper's TF32 tensor cores read
// operands that run along the sum, and inputs.T @ dz sums down the columns of both, the batch;
// a copy of one that runs along it gives that GEMM the forward's layout. (On an H200, large's
// tf32 GEMMs of 1.4e11 multiply-adds took 1.03 ms each where neither operand ran along the sum
// (the weight gradients), 0.71 where one did (the forward), 0.66 where both did (the gradient
// handed down): gemm_tuning.py.) A TRANSPOSE_TILE square at a time goes through shared
// memory, so that the reads (along x's rows) and the writes (along out's) are both a warp on
// consecutive addresses; a tile's row is one longer than the tile, so the warp that reads one
// of its columns meets 32 banks, not one. The one-dimensional grid walks the tiles,
// column_tiles of them across x, row by row of tiles.
#define TRANSPOSE_TILE 32
#define TRANSPOSE_ROWS 8
#define TRANSPOSE_THREADS (TRANSPOSE_TILE * TRANSPOSE_ROWS)
__global__ void __launch_bounds__(TRANSPOSE_THREADS)
transpose(const float* x, float* out, long long n, int k, int column_tiles, long long tiles) {
    __shared__ float tile[TRANSPOSE_TILE][TRANSPOSE_TILE + 1];
    for (long long t = blockIdx.x; t < tiles; t += gridDim.x) {
        long long first_row = (t / column_tiles) * TRANSPOSE_TILE;
        long long first_col = (t % column_tiles) * (long long)TRANSPOSE_TILE;
        for (int j = threadIdx.y; j < TRANSPOSE_TILE; j += TRANSPOSE_ROWS) {
            long long row = first_row + j, col = first_col + threadIdx.x;
            if (row < n && col < k) tile[j][threadIdx.x] = x[row * k + col];
        }
        __syncthreads();
        for (int j = threadIdx.y; j < TRANSPOSE_TILE; j += TRANSPOSE_ROWS) {
            long long col = first_col + j, row = first_row + threadIdx.x;
            if (col < k && row < n) out[col * n + row] = tile[threadIdx.x][j];
        }
        __syncthreads();  // every value of the tile is out before the next tile comes in
    }
}

// dvalues = dvalues where the ReLU passed its input (output > 0), else 0; in place. (Below a
// Dense layer, relu_backward_column_sum does this with the bias gradient and any bf16 copy.)
template <typename T>
__global__ void relu_backward(T* dvalues, const T* output, long long size) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        if (!relu_passed(output[i])) dvalues[i] = T(0);
    }
}

// out[j] = sum_i dvalues[i, j] (the bias gradient). A block of COLUMN_SUM_THREADS is (w, stripes):
// w neighbouring columns (32, 16 or 8: the launch's choice, so that there are blocks enough for
// the GPU's SMs), each warp reading whole 32-byte sectors, and 1024 / w row stripes, each summed
// down its rows with several reads in flight (unrolled: the reads do not wait on the sum), then
// added pairwise through shared memory in a fixed order. History, on an H200 (bench --ops): with
// 8 stripes one call on medium's 1024 x 1024 gradient took about 11 us, several times what its
// 4 MB take to read (ptxas made 4 reads in flight per thread: 32 round trips down 128 rows);
// with 32 it was still 32 blocks, so 32 of the 132 SMs (the ReLU gradient pass's as well: one
// call 12-15 us); now, not yet timed on a GPU, 8 columns a block there, 128 blocks. Large's 4096
// columns keep 32 a block.
#define COLUMN_SUM_THREADS 1024
// The stripes' sums added pairwise through shared memory in a fixed order; out[col] = the total.
// Rows of the shared array are w + 1 long, so that a column's stripes fall in different banks.
template <typename T>
__device__ __forceinline__ void add_stripes(T acc, T* out, int col, int k) {
    __shared__ T partial[COLUMN_SUM_THREADS + COLUMN_SUM_THREADS / 8];
    int row = blockDim.x + 1;
    partial[threadIdx.y * row + threadIdx.x] = acc;
    __syncthreads();
    for (int half = blockDim.y / 2; half > 0; half /= 2) {
        if (threadIdx.y < half) {
            partial[threadIdx.y * row + threadIdx.x] +=
                partial[(threadIdx.y + half) * row + threadIdx.x];
        }
        __syncthreads();
    }
    if (threadIdx.y == 0 && col < k) out[col] = partial[threadIdx.x];
}

template <typename T>
__global__ void __launch_bounds__(COLUMN_SUM_THREADS)
column_sum(const T* dvalues, T* out, int n, int k) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    T acc = T(0);
    if (col < k) {
#pragma unroll 8
        for (int row = threadIdx.y; row < n; row += blockDim.y) {
            acc += dvalues[(long long)row * k + col];
        }
    }
    add_stripes(acc, out, col, k);
}

// relu_backward, then column_sum of its result into sums, in one pass: the gradient is read once
// where the two kernels read it twice (a Dense -> ReLU -> Dense pair's separate backward, where
// no cuBLASLt epilogue does both). The same operations in the same order as those two kernels,
// so the same bits. With write16, d16 gets the result rounded to bf16 (the weight-gradient GEMM
// operand of the layer below), as bias_act's z16; without write32, d16 alone (precision "bf16",
// where the ReLU's output O is bfloat16 too: dvalues, the GEMM's float32 result, is only read).
// Each stripe reads 8 rows before it writes any: a write to dvalues might be the next row's read
// as far as the compiler knows (k could be 0), so written row by row, each row's reads would wait
// for the row before (checked in the sm_90 SASS).
// __launch_bounds__: a block of 1024 threads may use at most 64 registers a thread (ptxas chose 80
// unbounded, which would not launch).
#define RELU_SUM_ROWS 8
template <typename T, typename O>
__device__ __forceinline__ void relu_backward_columns(T* dvalues, const O* output, T* sums, int n,
                                                      int k, unsigned short* d16, int write16,
                                                      int write32) {
    int col = blockIdx.x * blockDim.x + threadIdx.x, stripes = blockDim.y;
    T acc = T(0);
    if (col < k) {
        for (int first = threadIdx.y; first < n; first += RELU_SUM_ROWS * stripes) {
            T d[RELU_SUM_ROWS];
            bool passed[RELU_SUM_ROWS];
#pragma unroll
            for (int r = 0; r < RELU_SUM_ROWS; ++r) {
                int row = first + r * stripes;
                long long i = (long long)row * k + col;
                d[r] = row < n ? dvalues[i] : T(0);
                passed[r] = row < n && relu_passed(operand(output[i]));
            }
#pragma unroll
            for (int r = 0; r < RELU_SUM_ROWS; ++r) {
                int row = first + r * stripes;
                if (row >= n) break;
                long long i = (long long)row * k + col;
                if (!passed[r]) {
                    d[r] = T(0);
                    if (write32) dvalues[i] = T(0);
                    if (write16) d16[i] = 0;  // +0 in bf16
                } else if (write16) {
                    d16[i] = bf16_bits((float)d[r]);
                }
                acc += d[r];
            }
        }
    }
    add_stripes(acc, sums, col, k);
}

template <typename T>
__global__ void __launch_bounds__(COLUMN_SUM_THREADS)
relu_backward_column_sum(T* dvalues, const T* output, T* sums, int n, int k, unsigned short* d16,
                         int write16) {
    relu_backward_columns(dvalues, output, sums, n, k, d16, write16, 1);
}

// The same under precision "bf16": the ReLU's output in bfloat16, the result in d16 alone.
template <typename T>
__global__ void __launch_bounds__(COLUMN_SUM_THREADS)
relu_backward_column_sum_bf16(T* dvalues, const unsigned short* output, T* sums, int n, int k,
                              unsigned short* d16) {
    relu_backward_columns(dvalues, output, sums, n, k, d16, 1, 0);
}

// Gather rows: out[r, :] = x[rows[r], :] (shuffled batches, on the device).
template <typename T>
__global__ void take_rows(const T* x, const long long* rows, T* out, long long n_rows, int cols) {
    long long size = n_rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / cols;
        out[i] = x[rows[r] * cols + (i - r * cols)];
    }
}

// The same, each value rounded to bfloat16 (precision "bf16"): a shuffled batch gathered straight
// into the first Dense layer's GEMM operand, where a gather and a rounding pass wrote the float32
// batch and read it back.
__global__ void take_rows_bf16(const float* x, const long long* rows, unsigned short* out,
                               long long n_rows, int cols) {
    long long size = n_rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / cols;
        out[i] = bf16_bits(x[rows[r] * cols + (i - r * cols)]);
    }
}

// ---- bf16 GEMM operands (precision "bf16") --------------------------------------------------

// out = x rounded to bfloat16 (bf16_bits), for operands no kernel above wrote already: the data
// and the flat parameters. Four values a thread at a time where both pointers allow it (a 16-byte
// read, an 8-byte write): one value a thread, 6 bytes, ran at about 2.3 TB/s on an H200 where
// kernels moving 8 and 12 bytes a thread ran at 3.1 and 3.7. The rest, or all of a misaligned
// pair, one at a time.
__global__ void float_to_bf16(const float* x, unsigned short* out, long long size) {
    long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long stride = (long long)gridDim.x * blockDim.x;
    bool aligned = ((unsigned long long)x % 16 == 0) && ((unsigned long long)out % 8 == 0);
    long long quads = aligned ? size / 4 : 0;
    for (long long q = first; q < quads; q += stride) {
        float4 v = reinterpret_cast<const float4*>(x)[q];
        ushort4 r;
        r.x = bf16_bits(v.x);
        r.y = bf16_bits(v.y);
        r.z = bf16_bits(v.z);
        r.w = bf16_bits(v.w);
        reinterpret_cast<ushort4*>(out)[q] = r;
    }
    for (long long i = 4 * quads + first; i < size; i += stride) out[i] = bf16_bits(x[i]);
}

// ---- softmax cross-entropy, forward and backward in one pass ----------------------------------

// Reduce (value, index) pairs to the largest value, the lowest index among equals (NumPy's
// argmax), across one warp.
template <typename T>
__device__ __forceinline__ void warp_argmax(T& value, int& index) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        T v = __shfl_xor_sync(0xffffffffu, value, offset);
        int j = __shfl_xor_sync(0xffffffffu, index, offset);
        if (v > value || (v == value && j < index)) { value = v; index = j; }
    }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// The sums over a warp's 32 lanes of each of V values a lane holds (V a power of 2, at most 32):
// lane l gets the sum of value (l >> (5 - log2 V)) & (V - 1); v is used up. By halving: at each
// of log2 V steps a lane keeps half of its values, adds to them its partner's of the same, and
// hands over the other half, so V values take V - 1 + 5 - log2 V shuffles where one warp_sum
// each took 5 V (16 values: 16 shuffles, not 80). Every addition pairs the same two partial sums
// in every run: the same bits each time. A template step by step, so that every index into v is
// known when it is compiled and v stays in registers (a loop over the steps left it in local
// memory: sm_90 SASS).
template <int V, typename T>
__device__ __forceinline__ T warp_sums(T* v, int lane, int offset = 16) {
    if constexpr (V == 1) {
        T sum = v[0];
        for (; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        return sum;
    } else {
        bool upper = (lane & offset) != 0;  // keeps values [V / 2, V); its partner the rest
#pragma unroll
        for (int q = 0; q < V / 2; ++q) {
            T keep = upper ? v[V / 2 + q] : v[q], give = upper ? v[q] : v[V / 2 + q];
            v[q] = keep + __shfl_xor_sync(0xffffffffu, give, offset);
        }
        return warp_sums<V / 2>(v, lane, offset >> 1);
    }
}

// One block per row (blockDim a multiple of 32, at most 1024), so it serves 2 classes and 1000:
//   probs = softmax(logits);  losses = -log(clip(p[label]));
//   dlogits = (probs - onehot) * inv_n  (when need_grad);
//   totals[0] += losses, totals[1] += (argmax == label)  (when accumulate: epoch totals that stay
//   on the device until the host reads them once per epoch);
//   d16 = dlogits rounded to bf16 (when write16: the last Dense layer's GEMM operand).
template <typename T>
__global__ void softmax_cross_entropy(const T* logits, const long long* labels, T* probs,
                                      T* dlogits, T* losses, double* totals, int n, int k,
                                      T inv_n, int need_grad, int accumulate, unsigned short* d16,
                                      int write16) {
    __shared__ T shared_value[32];
    __shared__ int shared_index[32];
    int row = blockIdx.x;
    if (row >= n) return;
    const T* z = logits + (long long)row * k;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

    // Row maximum and its first index: exp(z - max) cannot overflow.
    T best = lowest<T>();
    int best_index = k;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        if (z[j] > best) { best = z[j]; best_index = j; }
    }
    warp_argmax(best, best_index);
    if (lane == 0) { shared_value[warp] = best; shared_index[warp] = best_index; }
    __syncthreads();
    if (warp == 0) {
        best = lane < warps ? shared_value[lane] : lowest<T>();
        best_index = lane < warps ? shared_index[lane] : k;
        warp_argmax(best, best_index);
        if (lane == 0) { shared_value[0] = best; shared_index[0] = best_index; }
    }
    __syncthreads();
    T row_max = shared_value[0];
    int argmax = shared_index[0];
    __syncthreads();

    // Sum of exponentials.
    T total = T(0);
    for (int j = threadIdx.x; j < k; j += blockDim.x) total += dev_exp(z[j] - row_max);
    total = warp_sum(total);
    if (lane == 0) shared_value[warp] = total;
    __syncthreads();
    if (warp == 0) {
        total = lane < warps ? shared_value[lane] : T(0);
        total = warp_sum(total);
        if (lane == 0) shared_value[0] = total;
    }
    __syncthreads();
    T inv_total = T(1) / shared_value[0];

    long long label = labels[row];
    T* p = probs + (long long)row * k;
    T* d = dlogits + (long long)row * k;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        T pj = dev_exp(z[j] - row_max) * inv_total;
        p[j] = pj;
        if (need_grad) {
            T dj = (pj - (j == label ? T(1) : T(0))) * inv_n;
            d[j] = dj;
            if (write16) d16[(long long)row * k + j] = bf16_bits((float)dj);
        }
    }
    if (threadIdx.x == 0) {
        T loss = clipped_nll(dev_exp(z[label] - row_max) * inv_total);
        losses[row] = loss;
        if (accumulate) {
            atomicAdd(&totals[0], (double)loss);
            if (argmax == label) atomicAdd(&totals[1], 1.0);
        }
    }
}

// ---- a Dense layer with few outputs (a classifier's last): its GEMMs as kernels ---------------

// A few output columns make a poor GEMM: on an H200 (tf32, eleventh session) cuBLAS took 8.8 us
// for medium's last layer forward (1024 rows, 1024 inputs, 10 outputs) and 8.4 us for its weight
// gradient, about what it took for 1024 outputs, with most of each tile empty and a few tiles
// for 132 SMs; the bias gradient was a pass of its own after it. These kernels do the same
// products for up to NARROW_OUTPUTS outputs, with the passes that followed them (the bias added or
// summed, the ReLU gradient below) in the same pass. Their sums run in another order than cuBLAS's. The backend times each against the GEMM path once per
// problem and keeps the faster (cupy_backend.py), so where they lose they are not used.
#define NARROW_OUTPUTS 16

// Values of x (the (n, m) operand, read from memory, not cache) a lane of the narrow forward and
// weight-gradient kernels reads before it uses any: each warp has only its few rows or columns
// to walk, a read at a time (32 for medium's 1024 inputs, each waiting on memory: about 10 us on
// an H200, against 1.2 us for x's 4 MB at the device's bandwidth), so reading several at once
// hides that wait. Each lane still adds its products in the same order: the same bits.
#define NARROW_AHEAD 8

// out = x @ w + b: x (n, m), w (m, k), k <= NARROW_OUTPUTS. A warp takes ROWS rows at a time,
// its lanes the inputs j = lane, lane + 32, ... (a row's reads are whole lines), each lane
// keeping every row's k partial sums; warp_sums adds them across the warp, and the bias comes
// last, as it does after a GEMM. More rows a warp, the more rows each weight a lane reads
// serves; fewer, the more warps there are for the SMs (the launch picks: launch.narrow_rows).
// A lane reads the x values of AHEAD of its inputs (NARROW_AHEAD in all) before using them.
template <int ROWS, typename T, typename In>
__device__ __forceinline__ void narrow_forward_rows(const In* x, const In* w, const T* b, T* out,
                                                    int n, int m, int k) {
    constexpr int AHEAD = NARROW_AHEAD / ROWS;
    int lane = threadIdx.x & 31;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, warps = (gridDim.x * blockDim.x) >> 5;
    for (int first = warp * ROWS; first < n; first += warps * ROWS) {
        T acc[ROWS][NARROW_OUTPUTS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
#pragma unroll
            for (int c = 0; c < NARROW_OUTPUTS; ++c) acc[r][c] = T(0);
        }
        for (int base = lane; base < m; base += 32 * AHEAD) {
            T xv[AHEAD][ROWS];
#pragma unroll
            for (int a = 0; a < AHEAD; ++a) {
                int j = base + 32 * a;
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    xv[a][r] = j < m && first + r < n ? operand(x[(long long)(first + r) * m + j])
                                                      : T(0);
                }
            }
#pragma unroll
            for (int a = 0; a < AHEAD; ++a) {
                int j = base + 32 * a;
                if (j >= m) break;
                T wj[NARROW_OUTPUTS];
#pragma unroll
                for (int c = 0; c < NARROW_OUTPUTS; ++c) wj[c] = c < k ? operand(w[j * k + c]) : T(0);
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
#pragma unroll
                    for (int c = 0; c < NARROW_OUTPUTS; ++c) acc[r][c] += xv[a][r] * wj[c];
                }
            }
        }
        int c = (lane >> 1) & (NARROW_OUTPUTS - 1);  // the output warp_sums leaves this lane
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
            T sum = warp_sums<NARROW_OUTPUTS>(acc[r], lane);
            if ((lane & 1) == 0 && c < k && first + r < n) {
                out[(long long)(first + r) * k + c] = sum + b[c];
            }
        }
    }
}

template <typename T, typename In>
__device__ __forceinline__ void narrow_forward_any(const In* x, const In* w, const T* b, T* out,
                                                   int n, int m, int k, int rows) {
    if (rows >= 4) narrow_forward_rows<4>(x, w, b, out, n, m, k);
    else if (rows == 2) narrow_forward_rows<2>(x, w, b, out, n, m, k);
    else narrow_forward_rows<1>(x, w, b, out, n, m, k);
}

// `rows`: a warp's rows at a time, 1, 2 or 4.
template <typename T>
__global__ void narrow_forward(const T* x, const T* w, const T* b, T* out, int n, int m, int k,
                               int rows) {
    narrow_forward_any(x, w, b, out, n, m, k, rows);
}

// The same with bfloat16 operands (precision "bf16"), into float32.
template <typename T>
__global__ void narrow_forward_bf16(const unsigned short* x, const unsigned short* w, const T* b,
                                    T* out, int n, int m, int k, int rows) {
    narrow_forward_any(x, w, b, out, n, m, k, rows);
}

// dw = x.T @ dz, x (n, m), dz (n, k), k <= NARROW_OUTPUTS / TILE: warp_tn's shape over the whole
// grid. A warp takes TILE rows of dw (inputs first, first + 1, ...) and all k columns, its lanes
// the rows i = lane, lane + 32, ... of x and dz, and warp_sums adds the lanes' sums. The warps of
// a block take neighbouring inputs, so the sector a lane reads of a row of x serves them all.
// A lane reads the x values of AHEAD of its rows (NARROW_AHEAD values in all, at least a row's)
// before using them.
// The warp after dw's last takes db = the column sums of dvalues (the layer's gradient as it is:
// dz is the GEMM's operand, the same array or, under bf16, its bfloat16 copy), when with_bias.
template <int TILE, typename T, typename In>
__device__ __forceinline__ void narrow_weight_grads_tiles(const In* x, const In* dz,
                                                          const T* dvalues, T* dw, T* db, int n,
                                                          int m, int k, int with_bias) {
    constexpr int KMAX = NARROW_OUTPUTS / TILE;  // slot s: dw's row first + s / KMAX, column s % KMAX
    constexpr int AHEAD = NARROW_AHEAD / TILE > 1 ? NARROW_AHEAD / TILE : 1;  // rows of x read ahead
    int lane = threadIdx.x & 31;
    int first = ((blockIdx.x * blockDim.x + threadIdx.x) >> 5) * TILE;
    T acc[NARROW_OUTPUTS];
#pragma unroll
    for (int s = 0; s < NARROW_OUTPUTS; ++s) acc[s] = T(0);
    if (first < m) {
        for (int base = lane; base < n; base += 32 * AHEAD) {
            T a[AHEAD][TILE];
#pragma unroll
            for (int h = 0; h < AHEAD; ++h) {
                int i = base + 32 * h;
#pragma unroll
                for (int t = 0; t < TILE; ++t) {
                    a[h][t] = i < n && first + t < m ? operand(x[(long long)i * m + first + t]) : T(0);
                }
            }
#pragma unroll
            for (int h = 0; h < AHEAD; ++h) {
                int i = base + 32 * h;
                if (i >= n) break;
                T d[KMAX];
#pragma unroll
                for (int c = 0; c < KMAX; ++c) d[c] = c < k ? operand(dz[(long long)i * k + c]) : T(0);
#pragma unroll
                for (int t = 0; t < TILE; ++t) {
#pragma unroll
                    for (int c = 0; c < KMAX; ++c) acc[t * KMAX + c] += a[h][t] * d[c];
                }
            }
        }
    } else if (first - m < TILE && with_bias) {  // the warp after dw's last: db
        // Rows of dvalues read before any is added: NARROW_AHEAD values, at least a row's (each
        // value read ahead holds a register, and the kernel's most sets how many warps fit).
        constexpr int ROWS_AHEAD = NARROW_AHEAD / KMAX > 1 ? NARROW_AHEAD / KMAX : 1;
        for (int base = lane; base < n; base += 32 * ROWS_AHEAD) {
            T v[ROWS_AHEAD][KMAX];
#pragma unroll
            for (int h = 0; h < ROWS_AHEAD; ++h) {
                int i = base + 32 * h;
#pragma unroll
                for (int c = 0; c < KMAX; ++c) v[h][c] = i < n && c < k ? dvalues[(long long)i * k + c] : T(0);
            }
#pragma unroll
            for (int h = 0; h < ROWS_AHEAD; ++h) {
                if (base + 32 * h >= n) break;
#pragma unroll
                for (int c = 0; c < KMAX; ++c) acc[c] += v[h][c];
            }
        }
    } else {
        return;  // the whole warp: past the work
    }
    T sum = warp_sums<NARROW_OUTPUTS>(acc, lane);
    int s = (lane >> 1) & (NARROW_OUTPUTS - 1), t = s / KMAX, c = s % KMAX;  // this lane's slot
    if ((lane & 1) != 0 || c >= k) return;
    if (first < m) {
        if (first + t < m) dw[(first + t) * k + c] = sum;
    } else if (t == 0) {
        db[c] = sum;
    }
}

// TILE: as many of dw's rows a warp as its k columns leave room for in NARROW_OUTPUTS slots.
template <typename T, typename In>
__device__ __forceinline__ void narrow_weight_grads_any(const In* x, const In* dz, const T* dvalues,
                                                        T* dw, T* db, int n, int m, int k,
                                                        int with_bias) {
    if (k > 8) narrow_weight_grads_tiles<1>(x, dz, dvalues, dw, db, n, m, k, with_bias);
    else if (k > 4) narrow_weight_grads_tiles<2>(x, dz, dvalues, dw, db, n, m, k, with_bias);
    else if (k > 2) narrow_weight_grads_tiles<4>(x, dz, dvalues, dw, db, n, m, k, with_bias);
    else if (k > 1) narrow_weight_grads_tiles<8>(x, dz, dvalues, dw, db, n, m, k, with_bias);
    else narrow_weight_grads_tiles<16>(x, dz, dvalues, dw, db, n, m, k, with_bias);
}

template <typename T>
__global__ void narrow_weight_grads(const T* x, const T* dz, const T* dvalues, T* dw, T* db, int n,
                                    int m, int k, int with_bias) {
    narrow_weight_grads_any(x, dz, dvalues, dw, db, n, m, k, with_bias);
}

// The same with bfloat16 operands (precision "bf16"): x and dz the GEMM's copies, dvalues float32.
template <typename T>
__global__ void narrow_weight_grads_bf16(const unsigned short* x, const unsigned short* dz,
                                         const T* dvalues, T* dw, T* db, int n, int m, int k,
                                         int with_bias) {
    narrow_weight_grads_any(x, dz, dvalues, dw, db, n, m, k, with_bias);
}

// The gradient a Dense layer with few outputs hands to a Dense layer below it whose ReLU was folded
// in, in one pass where it took a GEMM and relu_backward_column_sum: out = dz @ w.T (dz (n, k),
// w (m, k), k <= NARROW_OUTPUTS), 0 where output is not positive; sums = the column sums of out;
// with write16, d16 = out rounded to bf16 (without write32, d16 alone). relu_backward_column_sum's
// blocks and order of sums, each thread with its column's k weights in registers: the k values
// of a row of dz are the same for every thread of its stripe (read through L1), so of the (n, m)
// arrays only `output` is read, where the GEMM path wrote its result and read it back.
// RELU_SUM_ROWS rows are read before any is written, as there.
template <typename T, typename In, typename O>
__device__ __forceinline__ void narrow_dinputs_columns(const In* dz, const In* w, T* out,
                                                       const O* output, T* sums, int n, int m,
                                                       int k, unsigned short* d16, int write16,
                                                       int write32) {
    int col = blockIdx.x * blockDim.x + threadIdx.x, stripes = blockDim.y;
    T acc = T(0);
    if (col < m) {
        T wc[NARROW_OUTPUTS];
#pragma unroll
        for (int c = 0; c < NARROW_OUTPUTS; ++c) wc[c] = c < k ? operand(w[col * k + c]) : T(0);
        for (int first = threadIdx.y; first < n; first += RELU_SUM_ROWS * stripes) {
            T d[RELU_SUM_ROWS];
#pragma unroll
            for (int r = 0; r < RELU_SUM_ROWS; ++r) {
                int row = first + r * stripes;
                d[r] = T(0);
                if (row >= n) continue;
                const In* dz_row = dz + (long long)row * k;
#pragma unroll
                for (int c = 0; c < NARROW_OUTPUTS; ++c) {
                    if (c < k) d[r] += operand(dz_row[c]) * wc[c];
                }
                if (!relu_passed(operand(output[(long long)row * m + col]))) d[r] = T(0);
            }
#pragma unroll
            for (int r = 0; r < RELU_SUM_ROWS; ++r) {
                int row = first + r * stripes;
                if (row >= n) break;
                long long i = (long long)row * m + col;
                if (write32) out[i] = d[r];
                if (write16) d16[i] = bf16_bits((float)d[r]);
                acc += d[r];
            }
        }
    }
    add_stripes(acc, sums, col, m);
}

template <typename T>
__global__ void __launch_bounds__(COLUMN_SUM_THREADS)
narrow_dinputs_relu_bgrad(const T* dz, const T* w, T* out, const T* output, T* sums, int n, int m,
                          int k, unsigned short* d16, int write16) {
    narrow_dinputs_columns(dz, w, out, output, sums, n, m, k, d16, write16, 1);
}

// The same under precision "bf16": dz and w the GEMM's bfloat16 copies, the ReLU's output
// bfloat16 too, and the result in d16 alone.
template <typename T>
__global__ void __launch_bounds__(COLUMN_SUM_THREADS)
narrow_dinputs_relu_bgrad_bf16(const unsigned short* dz, const unsigned short* w,
                               const unsigned short* output, T* sums, int n, int m, int k,
                               unsigned short* d16) {
    narrow_dinputs_columns(dz, w, (T*)nullptr, output, sums, n, m, k, d16, 1, 0);
}

// ---- optimizers: one kernel per rule over the flat parameter buffer ----------------------------

// The learning-rate schedule lives on the device so a replayed graph applies decay and Adam's bias
// correction (its slots: schedule.py). The book's pre_update_params (lr_t = lr / (1 + decay * t)),
// the bias corrections for step t + 1, and post_update_params (t += 1), as schedule.advance.
// In three parts that only read the step count, so that three threads can compute them at once
// (the one-kernel trainer): part 0 lr_t, part 1 and 2 the bias corrections (a pow in double each).
// The step count moves on once all three are done.
__device__ __forceinline__ void advance_part(double* schedule, int part) {
    double iterations = schedule[SCHEDULE_ITERATIONS];
    if (part == 0) {
        schedule[SCHEDULE_LR_T] = schedule[SCHEDULE_LR] / (1.0 + schedule[SCHEDULE_DECAY] * iterations);
    } else {
        double beta = schedule[part == 1 ? SCHEDULE_BETA_1 : SCHEDULE_BETA_2];
        schedule[part == 1 ? SCHEDULE_CORRECTION_1 : SCHEDULE_CORRECTION_2] =
            1.0 / (1.0 - pow(beta, iterations + 1.0));
    }
}

__device__ __forceinline__ void advance(double* schedule) {
    for (int part = 0; part < 3; ++part) advance_part(schedule, part);
    schedule[SCHEDULE_ITERATIONS] += 1.0;
}

__global__ void advance_schedule(double* schedule) {
    if (blockIdx.x == 0 && threadIdx.x == 0) advance(schedule);
}

// The rules, one parameter at a time (shared by the kernels below and train_small_net).

// Plain: w -= lr_t * g. With momentum (the book's form): u = momentum * u - lr_t * g; w += u.
template <typename T>
__device__ __forceinline__ void sgd_rule(T& w, T g, T& u, T lr, double momentum, int use_momentum) {
    if (use_momentum) {
        T v = (T)momentum * u - lr * g;
        u = v;
        w += v;
    } else {
        w -= lr * g;
    }
}

// cache += g^2 (Adagrad, rho < 0) or cache = rho * cache + (1 - rho) * g^2 (RMSprop);
// w -= lr_t * g / (sqrt(cache) + epsilon).
template <typename T>
__device__ __forceinline__ void cache_rule(T& w, T g, T& cache, T lr, double epsilon, double rho) {
    T c = rho < 0 ? cache + g * g : (T)rho * cache + (T)(1 - rho) * g * g;
    cache = c;
    w -= lr * g / (dev_sqrt(c) + (T)epsilon);
}

// Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// w -= lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon).
template <typename T>
__device__ __forceinline__ void adam_rule(T& w, T g, T& m, T& v, T lr, T correct_1, T correct_2,
                                          double epsilon, double beta_1, double beta_2) {
    T m_new = (T)beta_1 * m + (T)(1 - beta_1) * g;
    T v_new = (T)beta_2 * v + (T)(1 - beta_2) * g * g;
    m = m_new;
    v = v_new;
    w -= lr * (m_new * correct_1) / (dev_sqrt(v_new * correct_2) + (T)epsilon);
}

#define FOR_EACH_PARAM(i, size) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size; \
         i += (long long)gridDim.x * blockDim.x)

// momentums is only touched when use_momentum is set.
template <typename T>
__global__ void sgd_update(T* params, const T* grads, T* momentums, const double* schedule,
                           double momentum, int use_momentum, long long size) {
    T lr = (T)schedule[SCHEDULE_LR_T];
    FOR_EACH_PARAM(i, size) sgd_rule(params[i], grads[i], momentums[i], lr, momentum, use_momentum);
}

template <typename T>
__global__ void cache_update(T* params, const T* grads, T* cache, const double* schedule,
                             double epsilon, double rho, long long size) {
    T lr = (T)schedule[SCHEDULE_LR_T];
    FOR_EACH_PARAM(i, size) cache_rule(params[i], grads[i], cache[i], lr, epsilon, rho);
}

template <typename T>
__global__ void adam_update(T* params, const T* grads, T* momentums, T* cache,
                            const double* schedule, double epsilon, double beta_1, double beta_2,
                            long long size) {
    T lr = (T)schedule[SCHEDULE_LR_T], correct_1 = (T)schedule[SCHEDULE_CORRECTION_1],
      correct_2 = (T)schedule[SCHEDULE_CORRECTION_2];
    FOR_EACH_PARAM(i, size) {
        adam_rule(params[i], grads[i], momentums[i], cache[i], lr, correct_1, correct_2, epsilon,
                  beta_1, beta_2);
    }
}

// ---- profiling ----------------------------------------------------------------------------

// The device's clock in nanoseconds (%globaltimer). A macro so that tests/cuda_on_cpu can give
// the CPU's.
#ifndef NANOSECONDS
#define NANOSECONDS() device_nanoseconds()
__device__ __forceinline__ unsigned long long device_nanoseconds() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#endif

// Where the one-kernel trainer's epochs go, phase by phase (benchmarks/one_kernel_phases.py).
// Compiled in only with -DONE_KERNEL_PHASES; otherwise the markers are empty. Thread 0 adds the
// SM cycles from one marker to the next to a register per phase (each phase ends at a barrier, so
// thread 0's clock there is the block's) and, at the end of a launch, those to
// one_kernel_phase_cycles[phase], and the launch's cycles and nanoseconds to the last two slots.
#define ONE_KERNEL_PHASE_COUNT 7
#ifdef ONE_KERNEL_PHASES
extern "C" {
__device__ unsigned long long one_kernel_phase_cycles[ONE_KERNEL_PHASE_COUNT + 2];
}
#define PHASES_START                                                                     \
    unsigned long long phase_cycles[ONE_KERNEL_PHASE_COUNT] = {}, phase_clock = clock64(), \
                       launch_clock = phase_clock, launch_ns = NANOSECONDS();
#define PHASE_DONE(p)                                                                   \
    if (threadIdx.x == 0) {                                                             \
        unsigned long long now = clock64();                                             \
        phase_cycles[p] += now - phase_clock;                                           \
        phase_clock = now;                                                              \
    }
#define PHASES_END                                                                       \
    if (threadIdx.x == 0) {                                                             \
        _Pragma("unroll") for (int p = 0; p < ONE_KERNEL_PHASE_COUNT; ++p)               \
            one_kernel_phase_cycles[p] += phase_cycles[p];                             \
        one_kernel_phase_cycles[ONE_KERNEL_PHASE_COUNT] += clock64() - launch_clock;     \
        one_kernel_phase_cycles[ONE_KERNEL_PHASE_COUNT + 1] += NANOSECONDS() - launch_ns; \
    }
#else
#define PHASES_START
#define PHASE_DONE(p)
#define PHASES_END
#endif

// One thread busy for `nanoseconds`: the work queued behind it waits, so the host can queue a
// whole sequence before the device starts on it (gpunn bench --ops: each op's CUDA events then
// time the op, not the host's launches).
__global__ void hold_device(long long nanoseconds) {
    unsigned long long start = NANOSECONDS();
    while ((long long)(NANOSECONDS() - start) < nanoseconds) {
    }
}

// ---- the one-kernel trainer: a whole small network, many epochs, one block ---------------------
//
// Dense(n_in, hidden) -> ReLU -> Dense(hidden, k) -> softmax cross-entropy, trained for `epochs`
// steps on one batch by one thread block out of shared memory: the book's spiral network (387
// parameters, 300 samples) needs about 100 KiB, and its 10,001 epochs become a few launches instead
// of ten kernels per epoch. Each epoch is exactly the planned step: forward, per-sample loss and
// first-index argmax, dlogits = (p - onehot) / n, backward with the ReLU mask, the schedule
// advanced, the rule applied; sums run in a fixed order, so a run gives the same bits every time.
// `rule`: RULE_SGD, RULE_SGD_MOMENTUM, RULE_CACHE (Adagrad/RMSprop by cache_rule's rho) or
// RULE_ADAM. Epoch e adds its loss sum and correct count to totals[e] (as softmax_cross_entropy
// does: one row per epoch).

// 1024 threads (at most 64 registers each) took longer on an H200: 21.6 us an epoch against 19.0.
#define ONE_KERNEL_THREADS 512
// Networks with at most this many inputs have dW1 summed in the hidden gradient's pass, in
// registers; the shared scratch then holds (n_in + 1) values per thread, not one.
#define FOLDED_INPUTS 3

// The trainer runs one block on one multiprocessor, so an epoch's time is its longest chain of
// dependent steps and the instructions its 16 warps issue, not its arithmetic (about half a
// million flops for the book's network). Hence: no division by a run-time size per element
// (Cells), a thread per column and four rows at a time in the layers (rows_by_columns), partial
// sums four at a time and added in a tree rather than one after another, block sums through warp
// shuffles, the schedule's pows on threads that would otherwise wait, and each exp computed once.
// benchmarks/one_kernel_phases.py measures where an epoch goes, phase by phase (PHASE_DONE): on
// an H200 (2026-11-27) the book's epoch went from 58,500 cycles to 37,100 with these.

// The cells first, first + step, ... of an array with `cols` columns, as (row i, column j), one
// division at the start instead of one per cell (dividing by a number known only at run time
// takes tens of instructions).
struct Cells {
    int i, j, di, dj, cols;
    __device__ Cells(int first, int step, int cols_)
        : i(first / cols_), j(first % cols_), di(step / cols_), dj(step % cols_), cols(cols_) {}
    __device__ __forceinline__ void next() {
        i += di;
        j += dj;
        if (j >= cols) { j -= cols; ++i; }
    }
};

// out[r * b_cols + c] = sum_i A[i, r] * B[i, c] over n rows (A: n x a_cols, B: n x b_cols,
// row-major with row strides lda and ldb). A bias gradient is the row of a column of ones in A:
// the one-kernel trainer keeps one after H's columns, and a Dense layer's parameters keep the
// bias right after its weight gradient's rows. Summing it in the same pass as the weights' costs
// their threads nothing extra where they leave threads idle (the book's dW2 and db2: 195 outputs
// for 512 threads, two stripes each either way), and saves a phase of its own with its barriers
// (db2's own took 1,700 cycles of a 37,100-cycle epoch on an H200). Each
// output's sum is split over `parts` stripes of rows, whose partial sums are then
// added pairwise (stripe p + half into stripe p) in a fixed order: log2(parts) rounds, where adding
// them one after another took parts - 1 (169 for the book's output bias). At most MAX_STRIPES
// stripes: each round waits at a barrier, and with 170 stripes of about 2 rows the book's output
// bias spent its time in 7 of them (32 stripes: 4 rounds, and 0.3 us less an epoch on an H200).
#define MAX_STRIPES 32
template <typename T>
__device__ void block_tn(const T* A, int a_cols, int lda, const T* B, int b_cols, int ldb, int n,
                         T* out, T* scratch) {
    int outputs = a_cols * b_cols;
    int parts = (int)blockDim.x / outputs;
    if (parts > MAX_STRIPES) parts = MAX_STRIPES;
    if (parts > n) parts = n;
    if (parts < 1) parts = 1;
    Cells cell(threadIdx.x, blockDim.x, outputs);  // (stripe, output)
    for (; cell.i < parts; cell.next()) {
        int r = cell.j / b_cols, c = cell.j - r * b_cols;
        const T* a = A + r;
        const T* b = B + c;
        // Four partial sums over alternate rows of the stripe: four chains of adds in flight
        // rather than one (on an H200 this halved the book's dW2 and took a fifth off dW1).
        T acc0 = T(0), acc1 = T(0), acc2 = T(0), acc3 = T(0);
        int i = cell.i;
        for (; i + 3 * parts < n; i += 4 * parts) {
            acc0 += a[i * lda] * b[i * ldb];
            acc1 += a[(i + parts) * lda] * b[(i + parts) * ldb];
            acc2 += a[(i + 2 * parts) * lda] * b[(i + 2 * parts) * ldb];
            acc3 += a[(i + 3 * parts) * lda] * b[(i + 3 * parts) * ldb];
        }
        for (; i < n; i += parts) acc0 += a[i * lda] * b[i * ldb];
        T acc = (acc0 + acc1) + (acc2 + acc3);
        if (parts == 1) out[cell.j] = acc; else scratch[cell.i * outputs + cell.j] = acc;
    }
    __syncthreads();
    if (parts == 1) return;
    int count = parts;
    for (; count > 2; count = (count + 1) / 2) {
        int half = (count + 1) / 2;
        for (int t = threadIdx.x; t < (count - half) * outputs; t += blockDim.x) {
            scratch[t] += scratch[t + half * outputs];
        }
        __syncthreads();
    }
    for (int o = threadIdx.x; o < outputs; o += blockDim.x) out[o] = scratch[o] + scratch[outputs + o];
    __syncthreads();
}

// Four values from a 16-byte aligned address in one load (two for doubles).
__device__ __forceinline__ void load_four(const float* p, float (&out)[4]) {
    float4 v = *reinterpret_cast<const float4*>(p);
    out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
}
__device__ __forceinline__ void load_four(const double* p, double (&out)[4]) {
    double2 a = reinterpret_cast<const double2*>(p)[0], b = reinterpret_cast<const double2*>(p)[1];
    out[0] = a.x; out[1] = a.y; out[2] = b.x; out[3] = b.y;
}

// What block_tn computes, out[r * b_cols + c] = sum_i A[i, r] * B[i, c], where a warp can hold
// its share in registers: each of the block's warps takes `tile` = ceil(a_cols / warps) of out's
// rows (r) and all of its b_cols columns, at most WARP_TN_SLOTS outputs, and its lanes take A's
// and B's rows l, l + 32, ...; the lanes' sums are then added by warp_sums. A lane reads a row's
// tile values of A and b_cols of B once for all their products, where block_tn reads two values
// for each product; and nothing is added in shared memory, so there are no rounds of stripes and
// barriers. For the book's dW2 and db2 (65 rows of 3): 13 warps of 5 rows, 8 reads and 15
// products a row of the batch, where block_tn's threads made 390 sums of 150 rows, two reads a
// product. `warps`: the block's, ONE_KERNEL_THREADS / 32 in the one-kernel trainer, a constant
// there so that the tiles are known when it is compiled for a network's sizes. Returns false,
// and does nothing, where a warp's share is too big.
#define WARP_TN_SLOTS 16
// A lane's rows for warp_tn: `a` starts at the warp's first column of A; with PARTIAL, only its
// first `valid` columns are A's (the last warp's share may end past A's columns). Separate
// so that the warps whose share A fills read theirs at fixed offsets from a row's start, with
// nothing to test (sm_90 SASS, the book's dW2: a test per value made 52 instructions a row, not 25).
template <bool PARTIAL, typename T>
__device__ __forceinline__ void warp_tn_rows(const T* a, int valid, int lda, const T* B, int b_cols,
                                             int ldb, int n, int tile, T (&acc)[WARP_TN_SLOTS]) {
    for (int i = threadIdx.x & 31; i < n; i += 32) {
        const T* a_row = a + i * lda;
        const T* b_row = B + i * ldb;
        T a_values[WARP_TN_SLOTS], b_values[WARP_TN_SLOTS];
#pragma unroll
        for (int t = 0; t < WARP_TN_SLOTS; ++t) {
            a_values[t] = t < tile && (!PARTIAL || t < valid) ? a_row[t] : T(0);
            b_values[t] = t < b_cols ? b_row[t] : T(0);
        }
        // slot s: out's row (first +) s / b_cols, column s % b_cols
#pragma unroll
        for (int s = 0; s < WARP_TN_SLOTS; ++s) {
            int t = s / b_cols;
            if (t < tile) acc[s] += a_values[t] * b_values[s - t * b_cols];
        }
    }
}
template <typename T>
__device__ __forceinline__ bool warp_tn(const T* A, int a_cols, int lda, const T* B, int b_cols,
                                        int ldb, int n, T* out, int warps) {
    int tile = (a_cols + warps - 1) / warps;
    if (tile * b_cols > WARP_TN_SLOTS) return false;
    int lane = threadIdx.x & 31, first = (threadIdx.x >> 5) * tile;  // out's rows first, ...
    if (first < a_cols) {  // the same for the whole warp: its lanes shuffle together
        T acc[WARP_TN_SLOTS];
#pragma unroll
        for (int s = 0; s < WARP_TN_SLOTS; ++s) acc[s] = T(0);
        if (first + tile <= a_cols) {
            warp_tn_rows<false>(A + first, tile, lda, B, b_cols, ldb, n, tile, acc);
        } else {
            warp_tn_rows<true>(A + first, a_cols - first, lda, B, b_cols, ldb, n, tile, acc);
        }
        T sum = warp_sums<WARP_TN_SLOTS>(acc, lane);
        int s = (lane >> 1) & (WARP_TN_SLOTS - 1), t = s / b_cols;  // this lane's slot
        if ((lane & 1) == 0 && t < tile && first + t < a_cols) {
            out[(first + t) * b_cols + s - t * b_cols] = sum;
        }
    }
    __syncthreads();
    return true;
}

// out(i, j, sum_c A[i * inner + c] * W[c * w_c + j * w_j] (+ bias[j] when `bias` is given)) for
// every row i < n and column j < cols, the sum taken in order of c from zero, then the bias added
// (`finish` applies the ReLU or its mask and stores). When one thread took one cell after another,
// these two layers took 45% of the book's epoch on an H200 (12,200 and 14,100 cycles): about 60
// instructions a cell went on finding the cell and its operands, not on its two or three
// products. Here a thread keeps one column and takes four of its rows at a time, so each weight
// read serves four rows, the four sums are independent, and the row pointers step by a constant:
// 6,400 cycles each. With at most SMALL_INNER terms (the book's 2 inputs and 3 classes) the
// column's weights and bias stay in registers for all its rows: read from shared memory in the
// loop, they were read again for every four rows (sm_90 SASS), as the compiler cannot tell that
// `finish`'s stores leave them alone. `done(j)` is called when the thread has finished its rows of
// column j: all of them where cols >= blockDim.x, else those of its stripe (thread tid takes the
// rows tid / cols, + threads on the column, ...).
#define SMALL_INNER 4
struct NoColumnDone {
    __device__ void operator()(int) const {}
};
template <typename T, typename Finish, typename Done = NoColumnDone>
__device__ __forceinline__ void rows_by_columns(const T* A, int inner, const T* W, int w_c, int w_j,
                                                int n, int cols, const T* bias, Finish finish,
                                                Done done = Done()) {
    int tid = threadIdx.x, threads = blockDim.x;
    int shared = cols < threads;  // then several threads share a column, over alternate rows
    int first_row = shared ? tid / cols : 0;
    int row_step = shared ? (threads - 1 - tid % cols) / cols + 1 : 1;  // threads on this column
    int small = inner <= SMALL_INNER;
    for (int j = shared ? tid % cols : tid; j < cols; j += shared ? cols : threads) {
        const T* w = W + j * w_j;
        T w_small[SMALL_INNER];
#pragma unroll
        for (int c = 0; c < SMALL_INNER; ++c) w_small[c] = small && c < inner ? w[c * w_c] : T(0);
        T b = bias ? bias[j] : T(0);
        for (int i = first_row; i < n; i += 4 * row_step) {
            // Rows past the end repeat row i (a row that exists), and are not finished.
            int i1 = i + row_step, i2 = i1 + row_step, i3 = i2 + row_step;
            const T* a0 = A + i * inner;
            const T* a1 = A + (i1 < n ? i1 : i) * inner;
            const T* a2 = A + (i2 < n ? i2 : i) * inner;
            const T* a3 = A + (i3 < n ? i3 : i) * inner;
            T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
            if (small) {
#pragma unroll
                for (int c = 0; c < SMALL_INNER; ++c) {
                    if (c < inner) {
                        s0 += a0[c] * w_small[c];
                        s1 += a1[c] * w_small[c];
                        s2 += a2[c] * w_small[c];
                        s3 += a3[c] * w_small[c];
                    }
                }
            } else {
                for (int c = 0; c < inner; ++c) {
                    T wc = w[c * w_c];
                    s0 += a0[c] * wc;
                    s1 += a1[c] * wc;
                    s2 += a2[c] * wc;
                    s3 += a3[c] * wc;
                }
            }
            if (bias) { s0 += b; s1 += b; s2 += b; s3 += b; }
            finish(i, j, s0);
            if (i1 < n) finish(i1, j, s1);
            if (i2 < n) finish(i2, j, s2);
            if (i3 < n) finish(i3, j, s3);
        }
        done(j);
    }
}

// The one-kernel trainer's hidden layer and its gradient by warps, where a warp can hold its
// columns' weights in registers (at most SMALL_INNER inputs, or classes, and WARP_COLUMNS of H's
// columns a warp: the book's 2, 3 and 64 / 16 warps): a warp takes `cols` = hidden / warps of H's
// columns from `first`, and its lanes take the rows l, l + 32, ...; a row's inputs (or dZ's
// values) are read once for all the warp's columns, where rows_by_columns read them for each
// column (sm_90 SASS, the book's network: a row of four columns in 31 instructions for the layer
// and 42 for the gradient, against 59 and 100 for four rows of one column). Each value is summed
// as rows_by_columns sums it (over the inputs, or classes, in order from zero, then the bias).
// PARTIAL: the last warp's columns may end past H's (`valid` of them are H's); separate so that
// the others have nothing to test. Both return false, and do nothing, where a warp's share is
// too big.
#define WARP_COLUMNS 8
// The one-kernel trainer takes the paths by warps, keeps up to 4 logits a row in registers and
// reads W2 in rows padded to four, unless built with -DONE_KERNEL_WARPS=0 (its layout before
// these): benchmarks/one_kernel_phases.py times it both ways.
#ifndef ONE_KERNEL_WARPS
#define ONE_KERNEL_WARPS 1
#endif
// sum_c x[c] * w[c] over c < count (at most SMALL_INNER), in order from zero: a value of the
// layer or of its gradient, summed as rows_by_columns sums it.
template <typename T>
__device__ __forceinline__ T small_dot(const T (&x)[SMALL_INNER], const T (&w)[SMALL_INNER], int count) {
    T sum = T(0);
#pragma unroll
    for (int c = 0; c < SMALL_INNER; ++c) {
        if (c < count) sum += x[c] * w[c];
    }
    return sum;
}
// A warp's weights in registers: w[j][c] = W[c * w_c + (first + j) * w_j] for its `cols` columns
// from `first` (those below `columns`) and c < count; zero elsewhere.
template <typename T>
__device__ __forceinline__ void warp_column_weights(const T* W, int w_c, int w_j, int first, int cols,
                                                    int columns, int count,
                                                    T (&w)[WARP_COLUMNS][SMALL_INNER]) {
#pragma unroll
    for (int j = 0; j < WARP_COLUMNS; ++j) {
#pragma unroll
        for (int c = 0; c < SMALL_INNER; ++c) {
            w[j][c] = j < cols && first + j < columns && c < count ? W[c * w_c + (first + j) * w_j] : T(0);
        }
    }
}
// H = max(X @ W1 + b1, 0), rows ldh apart.
template <bool PARTIAL, typename T>
__device__ __forceinline__ void hidden_layer_rows(const T* X, int n_in, T* h, int ldh,
                                                  const T (&w)[WARP_COLUMNS][SMALL_INNER],
                                                  const T (&b)[WARP_COLUMNS], int n, int cols,
                                                  int valid) {
    for (int i = threadIdx.x & 31; i < n; i += 32) {
        T x[SMALL_INNER];
#pragma unroll
        for (int c = 0; c < SMALL_INNER; ++c) x[c] = c < n_in ? X[i * n_in + c] : T(0);
        T* h_row = h + i * ldh;
#pragma unroll
        for (int j = 0; j < WARP_COLUMNS; ++j) {
            if (j < cols && (!PARTIAL || j < valid)) {
                T z = small_dot(x, w[j], n_in) + b[j];
                h_row[j] = z < T(0) ? T(0) : z;
            }
        }
    }
}
template <typename T>
__device__ __forceinline__ bool hidden_layer_by_warps(const T* X, int n_in, T* H, int ldh, const T* W1,
                                                      const T* b1, int n, int hidden, int warps) {
    int cols = (hidden + warps - 1) / warps;
    if (n_in > SMALL_INNER || cols > WARP_COLUMNS) return false;
    int first = (threadIdx.x >> 5) * cols;
    if (first < hidden) {
        T w[WARP_COLUMNS][SMALL_INNER], b[WARP_COLUMNS];
        warp_column_weights(W1, hidden, 1, first, cols, hidden, n_in, w);
#pragma unroll
        for (int j = 0; j < WARP_COLUMNS; ++j) b[j] = j < cols && first + j < hidden ? b1[first + j] : T(0);
        if (first + cols <= hidden) {
            hidden_layer_rows<false>(X, n_in, H + first, ldh, w, b, n, cols, cols);
        } else {
            hidden_layer_rows<true>(X, n_in, H + first, ldh, w, b, n, cols, hidden - first);
        }
    }
    __syncthreads();
    return true;
}

// dH = (dZ @ W2^T) where the ReLU let values through, and its sums [dW1; db1] = [X^T dH; column
// sums of dH] into grads (n_in + 1 rows of hidden), for at most FOLDED_INPUTS inputs and a
// warp's sums in WARP_TN_SLOTS: the lanes' sums are added by warp_sums, where rows_by_columns'
// threads sharing a column wrote theirs to shared memory to be added after a barrier. dH is
// written in place of H (rows ldh apart) only where `keep` (KEEP here): nothing reads it in the
// epoch but the last epoch's copy for the caller, and the next epoch writes H over it.
template <bool PARTIAL, bool KEEP, typename T>
__device__ __forceinline__ void hidden_gradient_rows(const T* dZ, int k, const T* X, int n_in, T* h,
                                                     int ldh, const T (&w)[WARP_COLUMNS][SMALL_INNER],
                                                     int n, int cols, int valid,
                                                     T (&sums)[WARP_TN_SLOTS]) {
    for (int i = threadIdx.x & 31; i < n; i += 32) {
        T dz[SMALL_INNER], x[FOLDED_INPUTS + 1];
#pragma unroll
        for (int c = 0; c < SMALL_INNER; ++c) dz[c] = c < k ? dZ[i * k + c] : T(0);
#pragma unroll
        for (int r = 0; r <= FOLDED_INPUTS; ++r) x[r] = r < n_in ? X[i * n_in + r] : T(1);  // then db1's ones
        T* h_row = h + i * ldh;
#pragma unroll
        for (int j = 0; j < WARP_COLUMNS; ++j) {
            if (j < cols && (!PARTIAL || j < valid)) {
                T d = small_dot(dz, w[j], k), g = h_row[j] > T(0) ? d : T(0);
                if (KEEP) h_row[j] = g;
                // slot j * (n_in + 1) + r: dW1's row r of this column, r = n_in its db1
#pragma unroll
                for (int r = 0; r <= FOLDED_INPUTS; ++r) {
                    int s = j * (n_in + 1) + r;
                    if (r <= n_in && s < WARP_TN_SLOTS) sums[s] += x[r] * g;
                }
            }
        }
    }
}
template <typename T>
__device__ __forceinline__ bool hidden_gradient_by_warps(const T* dZ, int k, const T* X, int n_in, T* H,
                                                         int ldh, const T* W2, int n, int hidden,
                                                         T* grads, int warps, bool keep) {
    int cols = (hidden + warps - 1) / warps, per_column = n_in + 1;
    if (n_in > FOLDED_INPUTS || k > SMALL_INNER || cols > WARP_COLUMNS ||
        cols * per_column > WARP_TN_SLOTS) {
        return false;
    }
    int lane = threadIdx.x & 31, first = (threadIdx.x >> 5) * cols;
    if (first < hidden) {  // the same for the whole warp: its lanes shuffle together
        T w[WARP_COLUMNS][SMALL_INNER], sums[WARP_TN_SLOTS];
        warp_column_weights(W2, 1, k, first, cols, hidden, k, w);
#pragma unroll
        for (int s = 0; s < WARP_TN_SLOTS; ++s) sums[s] = T(0);
        int valid = hidden - first;  // of the warp's columns, H's
        if (valid >= cols && !keep) {
            hidden_gradient_rows<false, false>(dZ, k, X, n_in, H + first, ldh, w, n, cols, valid, sums);
        } else if (valid >= cols) {
            hidden_gradient_rows<false, true>(dZ, k, X, n_in, H + first, ldh, w, n, cols, valid, sums);
        } else if (!keep) {
            hidden_gradient_rows<true, false>(dZ, k, X, n_in, H + first, ldh, w, n, cols, valid, sums);
        } else {
            hidden_gradient_rows<true, true>(dZ, k, X, n_in, H + first, ldh, w, n, cols, valid, sums);
        }
        T sum = warp_sums<WARP_TN_SLOTS>(sums, lane);
        int s = (lane >> 1) & (WARP_TN_SLOTS - 1), j = s / per_column, r = s - j * per_column;
        if ((lane & 1) == 0 && j < cols && first + j < hidden) grads[r * hidden + first + j] = sum;
    }
    __syncthreads();
    return true;
}

// The block's sums of a and b (one pair per thread; blockDim a multiple of 32, at most 1024) in a
// fixed order, lanes then warps, for thread 0. `scratch`: 64 doubles.
__device__ void block_sums(double& a, double& b, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) { scratch[warp] = a; scratch[32 + warp] = b; }
    __syncthreads();
    if (warp == 0) {
        a = warp_sum(lane < warps ? scratch[lane] : 0.0);
        b = warp_sum(lane < warps ? scratch[32 + lane] : 0.0);
    }
}

// out[i * cols + j] = from[i * ld + j]: the last epoch's copy of a shared array for the caller.
template <typename T>
__device__ void copy_rows(const T* from, int ld, T* out, int n, int cols) {
    for (Cells cell(threadIdx.x, blockDim.x, cols); cell.i < n; cell.next()) {
        out[cell.i * cols + cell.j] = from[cell.i * ld + cell.j];
    }
}

// Shared memory, in order: doubles [64 block-sum scratch | SCHEDULE_SIZE schedule], then T:
// W2 in rows of four (hidden x 4, up to 4 classes) | X (n x n_in) | H (n x hidden, rows
// ldh = (hidden + 1) | 1 apart: an odd stride, so threads reading one column of different rows
// hit different banks, and room for a column of ones after H's, which makes db2 dW2's last
// row) | Z (n x k) | params | grads | state_1 | state_2 |
// scratch (blockDim values, (n_in + 1) x blockDim with at most FOLDED_INPUTS inputs).
// The last epoch also writes what the planned step leaves behind: the hidden layer's output and
// its gradient, logits, probabilities, dlogits and per-sample losses.
// One block runs (and one fits a multiprocessor, by its shared memory): the second bound says so,
// or the compiler may keep to 64 registers a thread for two blocks, and then reload loop
// constants every iteration (sm_90 SASS: block_tn's loop took 34 instructions instead of 25).
// N_IN, HIDDEN and K, where above 0, are the network's sizes fixed when the kernel is compiled
// (the backend builds one instance per network: cuda/launch.py), and the arguments of the same
// names are then ignored. Every loop over the inputs and classes is then unrolled, and what
// tested them at run time is gone: for the book's 2-64-3 in float on sm_90, while the layers went
// a thread a column, 79 registers instead of 128, the hidden layer's four rows 59 instructions
// instead of 83, its gradient's 100 instead of about 150, and the softmax's class loops
// unrolled. The same arithmetic in the same order: the instance with the sizes gives the bits of
// the one without (0, 0, 0).
template <typename T, int N_IN = 0, int HIDDEN = 0, int K = 0>
__global__ void __launch_bounds__(ONE_KERNEL_THREADS, 1)
train_in_one_kernel(const T* X, const long long* labels, int n, int n_in, int hidden, int k,
                T* params, T* grads, T* state_1, T* state_2, double* schedule, double* totals,
                int epochs, int rule, double hyper, double epsilon, T* hidden_out, T* dhidden_out,
                T* logits_out, T* probs_out, T* dlogits_out, T* losses_out) {
    if (N_IN > 0) n_in = N_IN;
    if (HIDDEN > 0) hidden = HIDDEN;
    if (K > 0) k = K;
    DYNAMIC_SHARED_MEMORY(shared_raw);
    double* reduce = reinterpret_cast<double*>(shared_raw);
    double* sched = reduce + 64;
    // W2's rows padded to four (up to 4 classes): one 16-byte load a row for the logits, where
    // they are 3 loads of 4 bytes (at 16 bytes from a 16-byte aligned start: SCHEDULE_SIZE is even).
    static_assert(SCHEDULE_SIZE % 2 == 0, "W2's padded rows need a 16-byte aligned start");
    int padded = ONE_KERNEL_WARPS && k <= 4;
    T* sW2x4 = reinterpret_cast<T*>(sched + SCHEDULE_SIZE);
    T* sX = sW2x4 + (padded ? 4 * hidden : 0);
    T* sH = sX + n * n_in;
    int ldh = (hidden + 1) | 1;
    T* sZ = sH + n * ldh;
    int off_b1 = n_in * hidden, off_w2 = off_b1 + hidden, off_b2 = off_w2 + hidden * k;
    int n_params = off_b2 + k;
    T* sW = sZ + n * k;
    T* sG = sW + n_params;
    T* sS1 = sG + n_params;
    T* sS2 = sS1 + n_params;
    T* scratch = sS2 + n_params;
    int tid = threadIdx.x, threads = blockDim.x;
    int uses_1 = rule != RULE_SGD, uses_2 = rule == RULE_ADAM;
    // The last three warps compute the schedule while the softmax runs: with n < blockDim
    // (the book's 300 rows) they have no row of their own there.
    int schedule_part = (tid & 31) == 0 ? threads / 32 - 1 - tid / 32 : -1;

    for (int i = tid; i < n * n_in; i += threads) sX[i] = X[i];
    for (int i = tid; i < n; i += threads) sH[i * ldh + hidden] = T(1);  // db2's column of ones
    for (int i = tid; i < n_params; i += threads) {
        sW[i] = params[i];
        sS1[i] = uses_1 ? state_1[i] : T(0);
        sS2[i] = uses_2 ? state_2[i] : T(0);
    }
    if (padded) {
        for (int i = tid; i < 4 * hidden; i += threads) {
            int j = i >> 2, c = i & 3;
            sW2x4[i] = c < k ? params[off_w2 + j * k + c] : T(0);
        }
    }
    if (tid < SCHEDULE_SIZE) sched[tid] = schedule[tid];
    __syncthreads();
    T inv_n = T(1.0 / n);

    PHASES_START
    for (int epoch = 0; epoch < epochs; ++epoch) {
        int last = epoch == epochs - 1;
        // What totals hold already, read now so that the read's wait overlaps the epoch.
        double loss_before = 0.0, correct_before = 0.0;
        if (tid == 0) { loss_before = totals[2 * epoch]; correct_before = totals[2 * epoch + 1]; }
        // Hidden layer: H = max(X @ W1 + b1, 0), by warps where a warp's columns fit.
        if (!(ONE_KERNEL_WARPS && hidden_layer_by_warps<T>(sX, n_in, sH, ldh, sW, sW + off_b1, n,
                                                           hidden, ONE_KERNEL_THREADS / 32))) {
            rows_by_columns<T>(sX, n_in, sW, hidden, 1, n, hidden, sW + off_b1, [&](int i, int j, T z) {
                sH[i * ldh + j] = z < T(0) ? T(0) : z;
            });
            __syncthreads();
        }
        PHASE_DONE(0)
        if (last) copy_rows(sH, ldh, hidden_out, n, hidden);
        // Logits: Z = H @ W2 + b2, a thread per row and four classes: each H value read once
        // for four products, where a thread per class read it for one (sm_90 SASS, the book's
        // 3 classes: 256 shared loads a row, not 384; the fourth class's are predicated off).
        // Each sum runs over j in order from zero, then adds the bias.
        auto logits = [&](int i, int c0, T (&z)[4]) {  // row i's classes c0 .. c0 + 3 below k
            int more = k - c0;
            const T* h = sH + i * ldh;
            const T* w = sW + off_w2 + c0;
            T z0 = T(0), z1 = T(0), z2 = T(0), z3 = T(0);
            for (int j = 0; j < hidden; ++j) {
                T hj = h[j], wj[4];
                if (padded) {
                    load_four(sW2x4 + 4 * j, wj);
                } else {
                    for (int q = 0; q < 4; ++q) wj[q] = q < more ? w[j * k + q] : T(0);
                }
                z0 += hj * wj[0];
                if (more > 1) z1 += hj * wj[1];
                if (more > 2) z2 += hj * wj[2];
                if (more > 3) z3 += hj * wj[3];
            }
            z[0] = z0; z[1] = z1; z[2] = z2; z[3] = z3;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                if (q < more) {
                    z[q] += sW[off_b2 + c0 + q];
                    if (last) logits_out[i * k + c0 + q] = z[q];
                }
            }
        };
        // Softmax cross-entropy of row i from its logits z (k of them), which become its dlogits
        // (exps first); its loss and whether its first-index argmax is its label are counted.
        double loss_sum = 0.0, correct = 0.0;
        auto cross_entropy = [&](int i, T* z) {
            T best = lowest<T>();
            int argmax = k;
            for (int c = 0; c < k; ++c) {
                if (z[c] > best) { best = z[c]; argmax = c; }
            }
            T total = T(0);
            for (int c = 0; c < k; ++c) {
                T e = dev_exp(z[c] - best);
                z[c] = e;
                total += e;
            }
            T inv_total = T(1) / total;
            long long label = labels[i];
            T p_true = T(0);
            for (int c = 0; c < k; ++c) {
                T p = z[c] * inv_total;
                if (c == label) p_true = p;
                T d = (p - (c == label ? T(1) : T(0))) * inv_n;
                z[c] = d;
                if (last) { probs_out[i * k + c] = p; dlogits_out[i * k + c] = d; }
            }
            T loss = clipped_nll(p_true);
            if (last) losses_out[i] = loss;
            loss_sum += (double)loss;
            if (argmax == label) correct += 1.0;
        };
        // This epoch's schedule (advance), in three parts on three threads; the step count moves
        // on in the update below, after a barrier.
        if (schedule_part >= 0 && schedule_part < 3) advance_part(sched, schedule_part);
        int in_registers = ONE_KERNEL_WARPS && k <= 4;  // a row's logits, for its softmax
        if (in_registers) {
            // A row's logits stay in its thread's registers for its softmax: no barrier between,
            // and Z is written once, as dlogits.
            for (int i = tid; i < n; i += threads) {
                T z[4];
                logits(i, 0, z);
                cross_entropy(i, z);
                for (int c = 0; c < k; ++c) sZ[i * k + c] = z[c];
            }
        } else {
            for (Cells cell(tid, threads, (k + 3) / 4); cell.i < n; cell.next()) {
                T z[4];
                logits(cell.i, 4 * cell.j, z);
                for (int q = 0; q < 4 && 4 * cell.j + q < k; ++q) sZ[cell.i * k + 4 * cell.j + q] = z[q];
            }
            __syncthreads();
        }
        PHASE_DONE(1)
        if (!in_registers) {
            for (int i = tid; i < n; i += threads) cross_entropy(i, sZ + i * k);
        }
        block_sums(loss_sum, correct, reduce);
        if (tid == 0) {
            totals[2 * epoch] = loss_before + loss_sum;
            totals[2 * epoch + 1] = correct_before + correct;
        }
        PHASE_DONE(2)
        // Output layer's gradients, in one pass: dW2 = H^T dZ, then db2 = column sums of dZ
        // (from H's column of ones; db2 follows dW2 in the parameters).
        if (!(ONE_KERNEL_WARPS &&
              warp_tn<T>(sH, hidden + 1, ldh, sZ, k, k, n, sG + off_w2, ONE_KERNEL_THREADS / 32))) {
            block_tn<T>(sH, hidden + 1, ldh, sZ, k, k, n, sG + off_w2, scratch);
        }
        PHASE_DONE(3)
        // Hidden gradient, in place of H: (dZ @ W2^T) where the ReLU let values through (a
        // select, not a product: what the ReLU stopped stays 0 whatever dZ holds). And, from the
        // values as they are written, db1 (their column sums) and, with at most FOLDED_INPUTS
        // inputs, dW1 = X^T dH too. As block_tn passes of their own on an H200, dW1 took 5,500
        // and db1 2,300 of the 37,100 cycles of the book's epoch: two inputs give each thread just
        // two products more per value here. By warps where a warp's columns fit
        // (hidden_gradient_by_warps: the book's network); otherwise a thread a column: each
        // thread adds up its rows of its column (sums[r] for input r, sums[FOLDED_INPUTS] for the
        // bias) and, where several threads share a column (hidden < blockDim), their sums, one
        // per thread and output row in scratch, are added in thread order after the barrier.
        int folded = n_in <= FOLDED_INPUTS;
        if (!(ONE_KERNEL_WARPS && hidden_gradient_by_warps<T>(sZ, k, sX, n_in, sH, ldh, sW + off_w2, n,
                                                              hidden, sG, ONE_KERNEL_THREADS / 32,
                                                              last))) {
            int shared_columns = hidden < threads;  // then scratch holds each thread's parts
            int rows_out = folded ? n_in + 1 : 1;  // of the gradient [dW1; db1] summed here
            T sums[FOLDED_INPUTS + 1];
            for (int r = 0; r <= FOLDED_INPUTS; ++r) sums[r] = T(0);
            rows_by_columns<T>(
                sZ, k, sW + off_w2, 1, k, n, hidden, static_cast<const T*>(nullptr),
                [&](int i, int j, T d) {
                    T* h = sH + i * ldh + j;
                    T g = *h > T(0) ? d : T(0);
                    *h = g;
                    const T* x = sX + i * n_in;
#pragma unroll
                    for (int r = 0; r < FOLDED_INPUTS; ++r) {
                        if (folded && r < n_in) sums[r] += x[r] * g;
                    }
                    sums[FOLDED_INPUTS] += g;
                },
                [&](int j) {
#pragma unroll
                    for (int r = 0; r <= FOLDED_INPUTS; ++r) {
                        // output row `out_row` of [dW1; db1]: input r, or the bias after the inputs
                        int out_row = r < FOLDED_INPUTS ? r : rows_out - 1;
                        if (r == FOLDED_INPUTS || (folded && r < n_in)) {
                            if (shared_columns) scratch[out_row * threads + tid] = sums[r];
                            else sG[(folded ? out_row * hidden : off_b1) + j] = sums[r];
                        }
                        sums[r] = T(0);
                    }
                });
            __syncthreads();
            if (shared_columns) {
                // Output o of [dW1; db1] (rows_out x hidden, db1 alone when not folded), at
                // sG[first + o]: the parts of the threads on its column, in thread order.
                int first = folded ? 0 : off_b1;
                for (int o = tid; o < rows_out * hidden; o += threads) {
                    int out_row = o / hidden, j = o - out_row * hidden;
                    const T* parts = scratch + out_row * threads;
                    T sum = T(0);
                    for (int part = j; part < threads; part += hidden) sum += parts[part];
                    sG[first + o] = sum;
                }
                __syncthreads();  // before scratch is written again
            }
        }
        PHASE_DONE(4)
        if (last) copy_rows(sH, ldh, dhidden_out, n, hidden);
        if (!folded) block_tn<T>(sX, n_in, n_in, sH, hidden, ldh, n, sG, scratch);
        PHASE_DONE(5)
        T lr = (T)sched[SCHEDULE_LR_T], correct_1 = (T)sched[SCHEDULE_CORRECTION_1],
          correct_2 = (T)sched[SCHEDULE_CORRECTION_2];
        for (int i = tid; i < n_params; i += threads) {
            if (rule == RULE_SGD || rule == RULE_SGD_MOMENTUM) {
                sgd_rule(sW[i], sG[i], sS1[i], lr, hyper, rule == RULE_SGD_MOMENTUM);
            } else if (rule == RULE_CACHE) {
                cache_rule(sW[i], sG[i], sS1[i], lr, epsilon, hyper);
            } else {
                adam_rule(sW[i], sG[i], sS1[i], sS2[i], lr, correct_1, correct_2, epsilon,
                          sched[SCHEDULE_BETA_1], sched[SCHEDULE_BETA_2]);
            }
            if (padded && i >= off_w2 && i < off_b2) {  // and its padded copy
                int j = (i - off_w2) / k;
                sW2x4[4 * j + i - off_w2 - j * k] = sW[i];
            }
        }
        if (tid == 0) sched[SCHEDULE_ITERATIONS] += 1.0;
        __syncthreads();
        PHASE_DONE(6)
    }
    PHASES_END
    for (int i = tid; i < n_params; i += threads) {
        params[i] = sW[i];
        grads[i] = sG[i];
        if (uses_1) state_1[i] = sS1[i];
        if (uses_2) state_2[i] = sS2[i];
    }
    if (tid < SCHEDULE_SIZE) schedule[tid] = sched[tid];
}

// gpunn's fused CUDA kernels, loaded by cupy_backend.py through one cupy.RawModule.
//
// Every kernel is a template over the element type T (float or double) and is instantiated by
// name ("bias_act<float>", ...). The sources compile under NVRTC with no headers, so nothing here
// may use INFINITY, FLT_MAX or <cmath>: limits are spelled out and math goes through overloads.
// tests/test_cuda_sources.py compiles this file for sm_80 and sm_90 in CI, without a GPU.
//
// Each kernel writes every element of its outputs (tests poison outputs first), reads only what
// it is given, and allocates nothing, so a whole training step can be captured as a CUDA graph.

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

// ---- Dense forward and ReLU backward ----------------------------------------------------------

// z = z + biases (broadcast over rows), then max(z, 0) when relu != 0. z is (n, k), row-major.
template <typename T>
__global__ void bias_act(T* z, const T* biases, long long n, int k, int relu) {
    long long size = n * k;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        T v = z[i] + biases[i % k];
        z[i] = (relu && v < T(0)) ? T(0) : v;
    }
}

// dvalues = dvalues where the ReLU passed its input (output > 0), else 0; in place.
template <typename T>
__global__ void relu_backward(T* dvalues, const T* output, long long size) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
         i += (long long)gridDim.x * blockDim.x) {
        if (!(output[i] > T(0))) dvalues[i] = T(0);
    }
}

// out[j] = sum_i dvalues[i, j] (the bias gradient). Block (32, 8): 32 neighbouring columns, so
// each warp reads consecutive addresses; 8 row stripes summed through shared memory.
template <typename T>
__global__ void column_sum(const T* dvalues, T* out, int n, int k) {
    __shared__ T partial[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    T acc = T(0);
    if (col < k) {
        for (int row = threadIdx.y; row < n; row += 8) acc += dvalues[(long long)row * k + col];
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < k) {
        T total = T(0);
        for (int s = 0; s < 8; ++s) total += partial[s][threadIdx.x];
        out[col] = total;
    }
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

// One block per row (blockDim a multiple of 32, at most 1024), so it serves 2 classes and 1000:
//   probs = softmax(logits);  losses = -log(clip(p[label]));
//   dlogits = (probs - onehot) * inv_n  (when need_grad);
//   totals[0] += losses, totals[1] += (argmax == label)  (when accumulate: epoch totals that stay
//   on the device until the host reads them once per epoch).
template <typename T>
__global__ void softmax_cross_entropy(const T* logits, const long long* labels, T* probs,
                                      T* dlogits, T* losses, double* totals, int n, int k,
                                      T inv_n, int need_grad, int accumulate) {
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
        if (need_grad) d[j] = (pj - (j == label ? T(1) : T(0))) * inv_n;
    }
    if (threadIdx.x == 0) {
        T p_true = dev_exp(z[label] - row_max) * inv_total;
        T clipped = p_true < T(CLIP) ? T(CLIP) : (p_true > T(1 - CLIP) ? T(1 - CLIP) : p_true);
        T loss = -dev_log(clipped);
        losses[row] = loss;
        if (accumulate) {
            atomicAdd(&totals[0], (double)loss);
            if (argmax == label) atomicAdd(&totals[1], 1.0);
        }
    }
}

// ---- optimizers: one kernel per rule over the flat parameter buffer ----------------------------

// The learning-rate schedule lives on the device so a replayed graph applies decay and Adam's bias
// correction: schedule = [iterations, lr, decay, beta_1, beta_2, lr_t, 1/(1-beta_1^t), 1/(1-beta_2^t)].
// One thread: the book's pre_update_params (lr_t = lr / (1 + decay * iterations)), the bias
// corrections for step t = iterations + 1, and post_update_params (iterations += 1).
__global__ void advance_schedule(double* schedule) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double iterations = schedule[0];
    schedule[5] = schedule[1] / (1.0 + schedule[2] * iterations);
    double step = iterations + 1.0;
    schedule[6] = 1.0 / (1.0 - pow(schedule[3], step));
    schedule[7] = 1.0 / (1.0 - pow(schedule[4], step));
    schedule[0] = step;
}

#define FOR_EACH_PARAM(i, size) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size; \
         i += (long long)gridDim.x * blockDim.x)

// Plain: w -= lr_t * g. With momentum (the book's form): u = momentum * u - lr_t * g; w += u.
// momentums is only touched when use_momentum is set.
template <typename T>
__global__ void sgd_update(T* params, const T* grads, T* momentums, const double* schedule,
                           double momentum, int use_momentum, long long size) {
    T lr = (T)schedule[5];
    FOR_EACH_PARAM(i, size) {
        if (use_momentum) {
            T u = (T)momentum * momentums[i] - lr * grads[i];
            momentums[i] = u;
            params[i] += u;
        } else {
            params[i] -= lr * grads[i];
        }
    }
}

// cache += g^2 (Adagrad, rho < 0) or cache = rho * cache + (1 - rho) * g^2 (RMSprop);
// w -= lr_t * g / (sqrt(cache) + epsilon).
template <typename T>
__global__ void cache_update(T* params, const T* grads, T* cache, const double* schedule,
                             double epsilon, double rho, long long size) {
    T lr = (T)schedule[5];
    FOR_EACH_PARAM(i, size) {
        T g = grads[i];
        T c = rho < 0 ? cache[i] + g * g : (T)rho * cache[i] + (T)(1 - rho) * g * g;
        cache[i] = c;
        params[i] -= lr * g / (dev_sqrt(c) + (T)epsilon);
    }
}

// Adam: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// w -= lr_t * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + epsilon).
template <typename T>
__global__ void adam_update(T* params, const T* grads, T* momentums, T* cache,
                            const double* schedule, double epsilon, double beta_1, double beta_2,
                            long long size) {
    T lr = (T)schedule[5], correct_1 = (T)schedule[6], correct_2 = (T)schedule[7];
    FOR_EACH_PARAM(i, size) {
        T g = grads[i];
        T m = (T)beta_1 * momentums[i] + (T)(1 - beta_1) * g;
        T v = (T)beta_2 * cache[i] + (T)(1 - beta_2) * g * g;
        momentums[i] = m;
        cache[i] = v;
        params[i] -= lr * (m * correct_1) / (dev_sqrt(v * correct_2) + (T)epsilon);
    }
}

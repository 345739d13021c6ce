// Runs the kernels of gpunn/backends/cuda/kernels.cu on the CPU, for tests/test_cuda_on_cpu.py.
// A launch runs its blocks one after another on blockDim.x * blockDim.y std::threads:
// __syncthreads() is a barrier of the block, __shfl_xor_sync an exchange through a barrier of the
// warp, __shared__ arrays are function statics, the dynamic shared memory is one buffer poisoned
// with NaN bytes before each launch, atomicAdd is an atomic_ref. Entry points take their
// arguments as cuLaunchKernel does: an array of pointers to each argument's value, after the
// launch's dynamic shared memory in bytes; they return how many bytes past that the kernel wrote
// (on a GPU, a write past it is an illegal address that ends the CUDA context).
// Built by the test with g++ -std=c++20 -pthread.
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(16) float4 { float x, y, z, w; };  // CUDA's vector types, as NVRTC has them built in
struct alignas(8) ushort4 { unsigned short x, y, z, w; };
struct alignas(16) double2 { double x, y; };
thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

static std::barrier<>* block_barrier = nullptr;
static std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
static unsigned long long warp_slots[32][32];
alignas(16) static unsigned char dynamic_shared[256 * 1024];

static void __syncthreads() { block_barrier->arrive_and_wait(); }

template <typename T>
static T __shfl_xor_sync(unsigned, T value, int offset) {
    unsigned tid = threadIdx.x + threadIdx.y * blockDim.x, warp = tid / 32, lane = tid % 32;
    std::memcpy(&warp_slots[warp][lane], &value, sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    T other;
    std::memcpy(&other, &warp_slots[warp][lane ^ offset], sizeof(T));
    warp_barriers[warp]->arrive_and_wait();
    return other;
}

static unsigned int __float_as_uint(float x) {
    unsigned int bits;
    std::memcpy(&bits, &x, sizeof bits);
    return bits;
}

static float __uint_as_float(unsigned int bits) {
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

template <typename T>
static T atomicAdd(T* address, T value) { return std::atomic_ref<T>(*address).fetch_add(value); }

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static
#define DYNAMIC_SHARED_MEMORY(name) unsigned char* name = dynamic_shared
#define NANOSECONDS() \
    ((unsigned long long)std::chrono::duration_cast<std::chrono::nanoseconds>( \
        std::chrono::steady_clock::now().time_since_epoch()).count())

#include "kernels.cu"

static long long launch(unsigned grid, unsigned block_x, unsigned block_y, unsigned shared,
                        const std::function<void()>& kernel) {
    unsigned threads = block_x * block_y;
    blockDim = {block_x, block_y, 1};
    gridDim = {grid, 1, 1};
    std::memset(dynamic_shared, 0xFF, sizeof(dynamic_shared));  // NaN in every float and double
    std::barrier<> block(threads);
    block_barrier = &block;
    warp_barriers.clear();
    for (unsigned first = 0; first < threads; first += 32) {
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - first)));
    }
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
            threadIdx = {t % block_x, t / block_x, 0};
            for (unsigned b = 0; b < grid; ++b) {
                blockIdx = {b, 0, 0};
                kernel();
                block.arrive_and_wait();  // the next block starts when this one is done
            }
        });
    }
    for (auto& thread : pool) thread.join();
    long long past = 0;  // poison bytes past the launch's share that a kernel overwrote
    for (size_t i = shared; i < sizeof(dynamic_shared); ++i) past += dynamic_shared[i] != 0xFF;
    return past;
}

template <typename... Args, size_t... I>
static void call(void (*kernel)(Args...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<Args>*>(args[I])...);
}

template <typename... Args>
static long long run(void (*kernel)(Args...), unsigned grid, unsigned bx, unsigned by,
                     unsigned shared, void** args) {
    return launch(grid, bx, by, shared, [=] { call(kernel, args, std::index_sequence_for<Args...>{}); });
}

#define ENTRY(NAME, T) \
    extern "C" long long NAME##_##T(unsigned g, unsigned bx, unsigned by, unsigned s, void** a) { \
        return run(&NAME<T>, g, bx, by, s, a); \
    }
#define TEMPLATED(NAME) ENTRY(NAME, float) ENTRY(NAME, double)

TEMPLATED(bias_act)
TEMPLATED(relu_backward)
TEMPLATED(column_sum)
TEMPLATED(relu_backward_column_sum)
TEMPLATED(relu_backward_column_sum_bf16)
TEMPLATED(take_rows)
TEMPLATED(softmax_cross_entropy)
TEMPLATED(narrow_forward)
TEMPLATED(narrow_forward_bf16)
TEMPLATED(narrow_weight_grads)
TEMPLATED(narrow_weight_grads_bf16)
TEMPLATED(narrow_dinputs_relu_bgrad)
TEMPLATED(narrow_dinputs_relu_bgrad_bf16)
TEMPLATED(sgd_update)
TEMPLATED(cache_update)
TEMPLATED(adam_update)
TEMPLATED(train_in_one_kernel)

// The one-kernel trainer built for a network's sizes, as the backend builds it on a GPU: an entry
// NAME_T_NIN_HIDDEN_K for each of the sizes emulator.py lists (it defines SIZED_TRAINERS).
#define SIZED(T, A, B, C) \
    extern "C" long long train_in_one_kernel_##T##_##A##_##B##_##C(unsigned g, unsigned bx, \
                                                                   unsigned by, unsigned s, void** a) { \
        return run(&train_in_one_kernel<T, A, B, C>, g, bx, by, s, a); \
    }
#define SIZED_TRAINER(A, B, C) SIZED(float, A, B, C) SIZED(double, A, B, C)
#ifndef SIZED_TRAINERS
#define SIZED_TRAINERS
#endif
SIZED_TRAINERS

#define PLAIN(NAME) \
    extern "C" long long NAME##_plain(unsigned g, unsigned bx, unsigned by, unsigned s, void** a) { \
        return run(&NAME, g, bx, by, s, a); \
    }

PLAIN(advance_schedule)
PLAIN(bias_act_quads)
PLAIN(float_to_bf16)
PLAIN(take_rows_bf16)
PLAIN(transpose)
PLAIN(hold_device)

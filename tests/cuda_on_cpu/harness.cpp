// Runs the kernels of gpunn/backends/cuda/kernels.cu on the CPU, for the tests without a GPU.
// A launch runs its blocks one after another. A block's threads are fibers that take turns on the
// calling thread, each on a stack of its own: a thread runs until it waits at a barrier
// (__syncthreads(), or its warp's, twice in each __shfl_xor_sync) or returns, then the next takes
// its turn. A barrier lets its waiters go once every thread it counts has arrived; a thread that
// has returned no longer counts, as on a GPU. Each round of turns goes in a new random order, and
// one warp, drawn anew whenever the block's barrier lets its threads go, has its turns only when
// no other thread can move: it lags as far behind the others as the barriers allow. So a missing
// __syncthreads shows: a thread reads what another writes in the same phase before it is written
// (about half the time), or after another has written over it (the late warp). Draws come from a
// fixed seed: the same launches in the same order take the same turns. Threads waiting for ones
// that never arrive end the launch with an error.
// __shared__ arrays are function statics, the dynamic shared memory is one buffer poisoned with
// NaN bytes before each block (a block sees nothing the one before wrote there, as on a GPU),
// atomicAdd is an atomic_ref. Entry points take their arguments as
// cuLaunchKernel does: an array of pointers to each argument's value, after the launch's dynamic
// shared memory in bytes; they return how many bytes past that the kernel wrote (on a GPU, a write
// past it is an illegal address that ends the CUDA context), or DEADLOCK.
// Built by the test with g++ -std=c++20 -pthread -U_FORTIFY_SOURCE (no check that a longjmp goes up the
// same stack: here it goes from one fiber's stack to another's).
#if defined(__APPLE__)
#define _XOPEN_SOURCE 600  // macOS declares the ucontext functions only then,
#define _DARWIN_C_SOURCE   // and MAP_ANONYMOUS then only with this
#endif
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <mutex>
#include <setjmp.h>
#include <sys/mman.h>
#include <type_traits>
#include <ucontext.h>
#include <utility>
#include <vector>

struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(16) float4 { float x, y, z, w; };  // CUDA's vector types, as NVRTC has them built in
struct alignas(8) ushort4 { unsigned short x, y, z, w; };
struct alignas(16) double2 { double x, y; };
static dim3 threadIdx, blockIdx;  // the running fiber's, set at each turn
static dim3 blockDim, gridDim;

// ---- fibers ------------------------------------------------------------------------------------

struct Barrier {
    unsigned expected = 0, arrived = 0;
    unsigned long long phase = 0;  // how many times it has let its waiters go
};

struct Fiber {
    ucontext_t start;  // fiber_main, on this fiber's stack
    jmp_buf resume;    // where it waits
    char* stack = nullptr;
    Barrier* waiting = nullptr;
    unsigned long long phase = 0;  // the phase of `waiting` it waits to see end
    bool started = false, done = false;
    dim3 index;
    unsigned block = 0;
};

static const long long DEADLOCK = -1;
static const size_t STACK_BYTES = 256 << 10;  // kernels keep a few small arrays; a guard page below
static const size_t GUARD_BYTES = 4096;
static std::vector<std::unique_ptr<Fiber>> fibers;  // made once each, kept for later launches
static Fiber* current = nullptr;
static jmp_buf scheduler;
static const std::function<void()>* running = nullptr;
static unsigned block_threads = 0;
static Barrier block_barrier, block_end;  // __syncthreads(); every thread has returned
static Barrier warp_barriers[32];
static unsigned long long warp_slots[32][32];
static std::vector<unsigned> turns;  // the order of this round's turns
static unsigned late_warp = 0;
static unsigned long long draws = 0x9E3779B97F4A7C15ull;  // xorshift64's state
alignas(16) static unsigned char dynamic_shared[256 * 1024];
static unsigned launch_shared = 0;  // the launch's share of it, in bytes

// A number in [0, bound), drawn.
static unsigned draw(unsigned bound) {
    draws ^= draws << 13;
    draws ^= draws >> 7;
    draws ^= draws << 17;
    return (unsigned)(draws % bound);
}

static void release_if_all_arrived(Barrier& barrier) {
    if (barrier.expected > 0 && barrier.arrived == barrier.expected) {
        barrier.arrived = 0;
        ++barrier.phase;
        if (&barrier == &block_barrier || &barrier == &block_end) {
            late_warp = draw((block_threads + 31) / 32);
        }
    }
}

static void arrive_and_wait(Barrier& barrier) {
    ++barrier.arrived;
    unsigned long long phase = barrier.phase;
    release_if_all_arrived(barrier);
    if (barrier.phase != phase) return;  // the last to arrive goes on, as the others will
    current->waiting = &barrier;
    current->phase = phase;
    if (!_setjmp(current->resume)) _longjmp(scheduler, 1);
}

// Every thread of the block counted again by the block's barrier and its warp's.
static void count_every_thread() {
    block_barrier.expected = block_threads;
    block_barrier.arrived = 0;
    for (unsigned w = 0; 32 * w < block_threads; ++w) {
        warp_barriers[w].expected = std::min(32u, block_threads - 32 * w);
        warp_barriers[w].arrived = 0;
    }
}

// A thread that has returned no longer holds up its block's barrier or its warp's.
static void leave_barriers(const Fiber& fiber) {
    --block_barrier.expected;
    release_if_all_arrived(block_barrier);
    Barrier& warp = warp_barriers[(fiber.index.x + fiber.index.y * blockDim.x) / 32];
    --warp.expected;
    release_if_all_arrived(warp);
}

// A thread's part of a launch: the kernel for each block in turn; the next block starts when
// every thread has returned from this one.
static void fiber_main() {
    Fiber* me = current;
    for (unsigned b = 0; b < gridDim.x; ++b) {
        me->block = b;
        blockIdx = {b, 0, 0};
        (*running)();
        leave_barriers(*me);
        if (block_end.arrived + 1 == block_end.expected) {  // the last back: the next block
            count_every_thread();                          // starts with every thread counted
            std::memset(dynamic_shared, 0xFF, launch_shared);  // and with no value of this one's
        }
        arrive_and_wait(block_end);
    }
    me->done = true;
    _longjmp(scheduler, 1);
}

// Gives `fiber` its turn; back here when it waits or is done.
static void take_turn(Fiber& fiber) {
    current = &fiber;
    threadIdx = fiber.index;
    blockIdx = {fiber.block, 0, 0};
    if (!_setjmp(scheduler)) {
        if (!fiber.started) {
            fiber.started = true;
            setcontext(&fiber.start);
        }
        _longjmp(fiber.resume, 1);
    }
}

static Fiber& fiber(unsigned t) {
    while (fibers.size() <= t) {
        auto made = std::make_unique<Fiber>();
        void* memory = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (memory == MAP_FAILED) abort();
        mprotect(memory, GUARD_BYTES, PROT_NONE);  // an overflow faults instead of writing a neighbour
        made->stack = static_cast<char*>(memory);
        getcontext(&made->start);
        fibers.push_back(std::move(made));
    }
    return *fibers[t];
}

// A round: a turn for each thread that can move, in `turns`' order, of the late warp's threads
// (`late`) or the others'. Whether any moved.
static bool take_turns(bool late, unsigned& live) {
    bool moved = false;
    for (unsigned t : turns) {
        Fiber& f = *fibers[t];
        if ((t / 32 == late_warp) != late || f.done ||
            (f.waiting != nullptr && f.waiting->phase == f.phase)) {
            continue;
        }
        f.waiting = nullptr;
        take_turn(f);
        moved = true;
        live -= f.done;
    }
    return moved;
}

// Runs `threads` fibers until every one is done. False if at some point no thread could move:
// some wait at a barrier that others never reach.
static bool run_fibers(unsigned threads) {
    for (unsigned t = 0; t < threads; ++t) {
        Fiber& f = fiber(t);
        f.waiting = nullptr;
        f.started = f.done = false;
        f.index = {t % blockDim.x, t / blockDim.x, 0};
        f.block = 0;
        f.start.uc_stack.ss_sp = f.stack + GUARD_BYTES;
        f.start.uc_stack.ss_size = STACK_BYTES - GUARD_BYTES;
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_main, 0);
    }
    block_threads = threads;
    block_end = {threads, 0, 0};
    count_every_thread();
    late_warp = draw((threads + 31) / 32);
    turns.resize(threads);
    for (unsigned t = 0; t < threads; ++t) turns[t] = t;
    for (unsigned live = threads; live > 0;) {
        for (unsigned i = threads - 1; i > 0; --i) std::swap(turns[i], turns[draw(i + 1)]);
        if (!take_turns(false, live) && !take_turns(true, live)) return false;
    }
    return true;
}

static void __syncthreads() { arrive_and_wait(block_barrier); }

template <typename T>
static T __shfl_xor_sync(unsigned, T value, int offset) {
    unsigned tid = threadIdx.x + threadIdx.y * blockDim.x, warp = tid / 32, lane = tid % 32;
    std::memcpy(&warp_slots[warp][lane], &value, sizeof(T));
    arrive_and_wait(warp_barriers[warp]);
    T other;
    std::memcpy(&other, &warp_slots[warp][lane ^ offset], sizeof(T));
    arrive_and_wait(warp_barriers[warp]);
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

// One launch at a time: ctypes lets go of the GIL during a call, so Python threads (an uploader's
// workers, say) could otherwise launch at once into the one set of fibers, barriers and memory.
static std::mutex launching;

static long long launch(unsigned grid, unsigned block_x, unsigned block_y, unsigned shared,
                        const std::function<void()>& kernel) {
    std::lock_guard<std::mutex> one_at_a_time(launching);
    unsigned threads = block_x * block_y;
    blockDim = {block_x, block_y, 1};
    gridDim = {grid, 1, 1};
    std::memset(dynamic_shared, 0xFF, sizeof(dynamic_shared));  // NaN in every float and double
    launch_shared = shared;
    running = &kernel;
    if (!run_fibers(threads)) return DEADLOCK;
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

// Kernels that check the harness itself (test_cuda_on_cpu_harness.py), built in where asked.
#ifdef HARNESS_CHECKS
#include HARNESS_CHECKS
#endif

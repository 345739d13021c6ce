// Kernels that check harness.cpp itself, not gpunn's: built in only by test_cuda_on_cpu_harness.py
// (emulator.build(checks=True)), each with a PLAIN entry point; int arrays.

// Each thread writes its slot of the dynamic shared memory, then reads its neighbour's, with a
// barrier between where `synced` (else a race: a GPU may run the read first); out[i] = the value
// thread i read, and NaN-poisoned memory reads as -1 (0xFFFFFFFF).
__global__ void read_neighbour(int* out, int synced) {
    DYNAMIC_SHARED_MEMORY(memory);
    int* slot = reinterpret_cast<int*>(memory);
    slot[threadIdx.x] = (int)threadIdx.x;
    if (synced) __syncthreads();
    out[threadIdx.x] = slot[(threadIdx.x + 1) % blockDim.x];
}

// Block 0 writes its dynamic shared memory; every later block reads it without writing it: on a
// GPU each block has shared memory of its own, so they read garbage (here, the poison: -1).
// out[b] = what block b read, for one thread a block.
__global__ void read_the_block_befores_shared(int* out) {
    DYNAMIC_SHARED_MEMORY(memory);
    int* slot = reinterpret_cast<int*>(memory);
    if (blockIdx.x == 0) slot[threadIdx.x] = 7;
    __syncthreads();
    if (threadIdx.x == 0) out[blockIdx.x] = slot[0];
}

// Thread 0 writes 1, every thread reads it, and after a warp shuffle thread 0 writes 2 over it,
// with a barrier between the reads and the write where `synced` (else a race: on a GPU, warp 0 may
// be done before another warp reads); out[i] = the value thread i read.
__global__ void read_before_overwrite(int* out, int synced) {
    DYNAMIC_SHARED_MEMORY(memory);
    int* slot = reinterpret_cast<int*>(memory);
    if (threadIdx.x == 0) slot[0] = 1;
    __syncthreads();
    int read = slot[0];
    int other = __shfl_xor_sync(0xffffffffu, read, 1);  // warp 0 waits a round here
    if (synced) __syncthreads();
    if (threadIdx.x == 0) slot[0] = 1 + other;
    out[threadIdx.x] = read;
}

// Threads at or past `n` return at once; the others meet at two barriers and a warp shuffle:
// threads that have returned do not hold up a barrier (as on a GPU). out[i] = i + i ^ 1 + 1.
__global__ void return_early(int* out, int n) {
    if ((int)threadIdx.x >= n) return;
    __syncthreads();
    int other = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    __syncthreads();
    out[threadIdx.x] = (int)threadIdx.x + other + 1;
}

// Half of warp 0 waits at __syncthreads, the other half at a warp shuffle: each half waits for
// the other forever (on a GPU, undefined). The launch must end with an error, not hang.
__global__ void wait_at_two_barriers(int* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    }
}

PLAIN(read_neighbour)
PLAIN(read_the_block_befores_shared)
PLAIN(read_before_overwrite)
PLAIN(return_early)
PLAIN(wait_at_two_barriers)

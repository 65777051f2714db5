/* td_cuda_emu.h - a CPU emulator of the part of CUDA, cuBLAS and the CUDA device language that
 * kernels/cuda/ uses, so the CUDA backend's own source runs (and is tested against the CPU
 * backend) on machines without a GPU: `make test-cuda-emu`.
 *
 * How: the .cu files of kernels/cuda are compiled by the host C++ compiler with this header
 * standing in for cuda_runtime.h, cuda_fp16.h and cublas_v2.h (tests/cuda_emu/include/). A launch
 * `k<<<grid, block, smem, stream>>>(args)` is rewritten by cuda.mk (tests/cuda_emu/rewrite.sed)
 * into `tdemu::cfg(grid, block, smem, stream).go(k, "k")(args)`. Every CUDA thread of a block is a
 * fiber with its own stack; blocks run one after another. __syncthreads and the warp operations
 * (__shfl_*_sync, __ballot_sync, __syncwarp) are scheduling points: a fiber runs until it reaches
 * one, and waits there until every thread that must take part has arrived. __shared__ variables
 * are static locals (one copy per kernel, shared by the block's fibers), refilled with 0xff bytes
 * before every block when rewrite.sed registered them; dynamic shared memory is a per-launch
 * buffer filled with 0xff bytes (NaN as floats) before every block, as is every cudaMalloc.
 *
 * What it checks that a GPU run would only show as wrong numbers or a hang: a barrier or warp
 * operation that not every required thread reaches (divergent __syncthreads, a shuffle with an
 * exited lane, lanes of one mask in different warp intrinsics), launch
 * configurations a GPU refuses (empty grid, more than 1024 threads, more than 48 KiB of dynamic
 * shared memory), copies and cuBLAS operands outside a device allocation or with the wrong
 * direction, cuBLAS argument errors (leading dimensions), and reads of uninitialised device
 * memory (they read NaN). A fault is reported on stderr and becomes a sticky error returned by
 * every later call, as on a GPU.
 *
 * What it does not show: speed, the memory model (execution is sequential, so races between
 * threads that a GPU could expose are not detected), the exact rounding of the GPU's expf /
 * rsqrtf, and cuBLAS's summation order (the emulated GEMM sums in double). */
#ifndef TD_CUDA_EMU_H
#define TD_CUDA_EMU_H

#include <functional>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <tuple>
#include <type_traits>
#include <utility>

/* --- the device language ----------------------------------------------------------------- */

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(8) float2 {
    float x, y;
};

typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchFailure = 719,
    cudaErrorUnknown = 999,
} cudaError_t;

typedef struct tdemu_stream *cudaStream_t;
typedef struct tdemu_event *cudaEvent_t;

namespace tdemu {

struct thread_state;
struct block_state {
    uint3 bid;
    dim3 bdim, gdim;
    void *dyn_smem;
};
extern thread_local thread_state *cur_thread;
extern thread_local block_state *cur_block;

const uint3 &thread_idx();
unsigned lane_id();
void sync_block();
/* which warp intrinsic a lane waits in: the lanes of one mask must all call the same one */
enum warp_op { W_SYNCWARP, W_SHFL_IDX, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_XOR, W_BALLOT, W_ANY, W_ALL };
/* Offers this lane's v to warp operation `op` with `mask` (which must name the calling lane),
 * waits for every lane in mask, and copies the values of the mask's lanes into all[32]. */
void warp_exchange(unsigned mask, uint64_t v, uint64_t *all, warp_op op);
/* a shuffle's width must be a power of two from 1 to 32 (a device fault otherwise) */
void warp_width(const char *what, int width);
void *dyn_smem();
/* Called (once, through a static) at each `__shared__ T name...;` declaration that cuda.mk's
 * rewrite recognises: the variable is filled with 0xff bytes now and at the start of every later
 * block, as uninitialised shared memory (CUDA keeps no __shared__ value from block to block). */
bool shared_decl(volatile void *p, size_t n);

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle type");
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <class T> inline T from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}
/* reports a misuse of a warp operation (source lane outside the mask) as a device fault */
void warp_fault(const char *what, unsigned mask, int lane, int src);

/* --- launches ------------------------------------------------------------------------------ */

struct launch_cfg {
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
};
void run_kernel(const launch_cfg &c, const char *name, const std::function<void()> &body);

template <class... P> struct bound_kernel {
    launch_cfg c;
    void (*k)(P...);
    const char *name;
    template <class... A> void operator()(A &&...a) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel argument count");
        std::tuple<typename std::decay<P>::type...> args(std::forward<A>(a)...);
        void (*kk)(P...) = k;
        run_kernel(c, name, [&args, kk]() { std::apply(kk, args); });
    }
};
struct cfg : launch_cfg {
    cfg(dim3 g, dim3 b, size_t smem = 0, cudaStream_t s = nullptr) : launch_cfg{g, b, smem, s} {}
    template <class... P> bound_kernel<P...> go(void (*k)(P...), const char *name) const {
        return bound_kernel<P...>{*this, k, name};
    }
};

} // namespace tdemu

#define threadIdx (tdemu::thread_idx())
#define blockIdx (tdemu::cur_block->bid)
#define blockDim (tdemu::cur_block->bdim)
#define gridDim (tdemu::cur_block->gdim)
constexpr int warpSize = 32;

inline void __syncthreads() { tdemu::sync_block(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    uint64_t all[32];
    tdemu::warp_exchange(mask, 0, all, tdemu::W_SYNCWARP);
}
inline void __threadfence() {}
inline void __threadfence_block() {}

/* The shuffles as PTX shfl.sync defines them: the lane offset / xor mask uses its low 5 bits,
 * width splits the warp into segments; a source outside the lane's segment (later segments for
 * xor, beyond either end for up/down) gives the lane its own value. */
namespace tdemu {
/* One shuffle (NAME, kind OP): every lane of mask publishes v, then takes the value of lane
 * from(lane, segment base), which must be in mask. */
template <class T, class F>
inline T shuffle(const char *name, unsigned mask, T v, int width, warp_op op, F from) {
    uint64_t all[32];
    warp_width(name, width);
    warp_exchange(mask, to_bits(v), all, op);
    const int lane = (int)lane_id();
    const int s = from(lane, lane & ~(width - 1));
    if (!((mask >> s) & 1u)) warp_fault(name, mask, lane, s);
    return from_bits<T>(all[s]);
}
} // namespace tdemu
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return tdemu::shuffle("__shfl_sync", mask, v, width, tdemu::W_SHFL_IDX,
                          [&](int, int base) { return base + (src & (width - 1)); });
}
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32) {
    return tdemu::shuffle("__shfl_xor_sync", mask, v, width, tdemu::W_SHFL_XOR,
                          [&](int lane, int base) {
                              const int s = lane ^ (lm & 31);
                              return (s & ~(width - 1)) > base ? lane : s; /* later segment */
                          });
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return tdemu::shuffle("__shfl_up_sync", mask, v, width, tdemu::W_SHFL_UP,
                          [&](int lane, int base) {
                              const int s = lane - (int)(d & 31);
                              return s < base ? lane : s;
                          });
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
    return tdemu::shuffle("__shfl_down_sync", mask, v, width, tdemu::W_SHFL_DOWN,
                          [&](int lane, int base) {
                              const int s = lane + (int)(d & 31);
                              return s >= base + width ? lane : s;
                          });
}
namespace tdemu {
inline unsigned vote(unsigned mask, int pred, warp_op op) {
    uint64_t all[32];
    warp_exchange(mask, pred ? 1 : 0, all, op);
    unsigned r = 0;
    for (int l = 0; l < 32; l++)
        if (((mask >> l) & 1u) && all[l]) r |= 1u << l;
    return r;
}
} // namespace tdemu
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return tdemu::vote(mask, pred, tdemu::W_BALLOT);
}
inline int __any_sync(unsigned mask, int pred) {
    return tdemu::vote(mask, pred, tdemu::W_ANY) != 0;
}
inline int __all_sync(unsigned mask, int pred) {
    return tdemu::vote(mask, pred, tdemu::W_ALL) == mask;
}

/* no preemption between scheduling points: read-modify-write is atomic. The operand is not
 * deduced (atomicAdd(&unsigned_counter, 1) converts 1, as CUDA's overloads do). */
namespace tdemu {
template <class T> struct same { typedef T type; };
} // namespace tdemu
/* atomicOP(p, v): old = *p; *p = NEW (an expression of old and v); return old */
#define TDEMU_ATOMIC(name, NEW)                                                                    \
    template <class T> inline T name(T *p, typename tdemu::same<T>::type v) {                      \
        T old = *p;                                                                                \
        *p = (NEW);                                                                                \
        return old;                                                                                \
    }
TDEMU_ATOMIC(atomicAdd, old + v)
TDEMU_ATOMIC(atomicSub, old - v)
TDEMU_ATOMIC(atomicMax, v > old ? v : old)
TDEMU_ATOMIC(atomicMin, v < old ? v : old)
TDEMU_ATOMIC(atomicExch, v)
TDEMU_ATOMIC(atomicAnd, old & v)
TDEMU_ATOMIC(atomicOr, old | v)
TDEMU_ATOMIC(atomicXor, old ^ v)
#undef TDEMU_ATOMIC
template <class T>
inline T atomicCAS(T *p, typename tdemu::same<T>::type cmp, typename tdemu::same<T>::type v) {
    T old = *p;
    if (old == cmp) *p = v;
    return old;
}

template <class T> inline T __ldg(const T *p) { return *p; }
template <class T> inline T __ldcs(const T *p) { return *p; }
template <class T> inline T __ldcg(const T *p) { return *p; }
template <class T> inline void __stcs(T *p, T v) { *p = v; }

inline float __uint_as_float(unsigned u) { return tdemu::from_bits<float>(u); }
inline unsigned __float_as_uint(float f) { return (unsigned)tdemu::to_bits(f); }
inline float __int_as_float(int u) { return tdemu::from_bits<float>((unsigned)u); }
inline int __float_as_int(float f) { return (int)(unsigned)tdemu::to_bits(f); }
inline double __longlong_as_double(long long v) { return tdemu::from_bits<double>((uint64_t)v); }
inline long long __double_as_longlong(double d) { return (long long)tdemu::to_bits(d); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline unsigned __brev(unsigned x) {
    unsigned r = 0;
    for (int i = 0; i < 32; i++) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
/* IEEE round-to-nearest operations that the device compiler never fuses into an FMA (the host
 * build compiles with -std=c++17, which does not contract either) */
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __saturatef(float x) { return !(x > 0.0f) ? 0.0f : x > 1.0f ? 1.0f : x; } /* NaN: 0 */
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

/* CUDA's integer and float min/max overloads */
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }

/* --- half precision (cuda_fp16.h) ---------------------------------------------------------- */

struct __half {
    unsigned short x;
};
struct __nv_bfloat16 {
    unsigned short x;
};
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline float __half2float(__half h) {
    const unsigned s = (h.x & 0x8000u) << 16, e = (h.x >> 10) & 0x1f, m = h.x & 0x3ffu;
    unsigned u;
    if (e == 0) {
        if (m == 0) return __uint_as_float(s);
        float f = (float)m * (1.0f / 16777216.0f); /* m * 2^-24, exact */
        return s ? -f : f;
    }
    if (e == 31) u = s | 0x7f800000u | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    return __uint_as_float(u);
}
/* round to nearest even; overflow to infinity; NaN stays NaN */
inline __half __float2half_rn(float f) {
    const unsigned x = __float_as_uint(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    unsigned h;
    if (ax > 0x7f800000u) h = 0x7fffu;                /* NaN */
    else if (ax >= 0x477ff000u) h = sign | 0x7c00u;   /* >= 65520 (or inf): infinity */
    else if (ax >= 0x38800000u) {                     /* normal: >= 2^-14 */
        unsigned hm = ((((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13));
        const unsigned rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (hm & 1u))) hm++;
        h = sign | hm;
    } else /* subnormal or zero: an integer number of 2^-24 */
        h = sign | (unsigned)rintf(__uint_as_float(ax) * 16777216.0f);
    return __half{(unsigned short)h};
}
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return __uint_as_float((unsigned)b.x << 16); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{(unsigned short)0x7fffu};
    u += 0x7fffu + ((u >> 16) & 1u);
    return __nv_bfloat16{(unsigned short)(u >> 16)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

/* --- the runtime API (cuda_runtime.h) ------------------------------------------------------ */

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};
#define cudaStreamDefault 0x00u
#define cudaStreamNonBlocking 0x01u

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int multiProcessorCount;
    int maxThreadsPerMultiProcessor;
    int major, minor;
    int clockRate;
    int memoryClockRate;
    int memoryBusWidth;
    int l2CacheSize;
};

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaMalloc(void **p, size_t n);
template <class T> inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
cudaError_t cudaFree(void *p);
cudaError_t cudaMallocHost(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t *s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b);

/* --- cuBLAS (cublas_v2.h) ------------------------------------------------------------------ */

typedef enum cudaDataType_t {
    CUDA_R_32F = 0,
    CUDA_R_64F = 1,
    CUDA_R_16F = 2,
    CUDA_R_16BF = 14,
} cudaDataType_t;
typedef cudaDataType_t cudaDataType;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_NOT_INITIALIZED = 1,
    CUBLAS_STATUS_ALLOC_FAILED = 3,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_ARCH_MISMATCH = 8,
    CUBLAS_STATUS_MAPPING_ERROR = 11,
    CUBLAS_STATUS_EXECUTION_FAILED = 13,
    CUBLAS_STATUS_INTERNAL_ERROR = 14,
    CUBLAS_STATUS_NOT_SUPPORTED = 15,
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_OP_C = 2 } cublasOperation_t;
typedef enum {
    CUBLAS_DEFAULT_MATH = 0,
    CUBLAS_TENSOR_OP_MATH = 1,
    CUBLAS_PEDANTIC_MATH = 2,
    CUBLAS_TF32_TENSOR_OP_MATH = 3,
} cublasMath_t;
typedef enum {
    CUBLAS_COMPUTE_16F = 64,
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_PEDANTIC = 69,
    CUBLAS_COMPUTE_32F_FAST_16F = 74,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77,
} cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1, CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 } cublasGemmAlgo_t;
typedef struct tdemu_blas *cublasHandle_t;

cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m);
const char *cublasGetStatusString(cublasStatus_t s);
cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

#endif

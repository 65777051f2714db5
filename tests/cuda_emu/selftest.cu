/* selftest.cu - tests of the CUDA emulator itself (built and run by make test-cuda-emu): that
 * correct kernels compute what a GPU computes (block and warp reductions, scans, ballots,
 * sub-warp masks, shuffle offsets as PTX takes them, dynamic shared memory, atomics,
 * multi-dimensional grids, a launch over several lines), that the misuses it promises to catch
 * are caught (divergent barriers, shuffles with exited lanes, mixed warp intrinsics, bad widths,
 * bad launch configurations, copies outside allocations, uninitialised global and shared memory,
 * races between threads and between blocks, pinned memory used before its stream is
 * synchronised), that cuBLAS's column-major GEMM follows the documented definition and its
 * compute types, that FP16/BF16 rounding matches IEEE round-to-nearest-even, and that the fibers
 * survive a faulting kernel (sanitizer build) and their host thread's exit. */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" void tdemu_reset_for_tests(void);
extern "C" void tdemu_set_schedule_for_tests(int mode);

static int s_fail, s_checks;
#define CHECK(c, ...)                                                                              \
    do {                                                                                           \
        s_checks++;                                                                                \
        if (!(c)) {                                                                                \
            s_fail++;                                                                              \
            printf("  FAIL %s:%d: %s: ", __FILE__, __LINE__, #c);                                  \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
        }                                                                                          \
    } while (0)

__global__ void k_block_sum(const int *x, int *out, int n) {
    __shared__ int sh[32];
    int v = 0;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        v += x[i];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) sh[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        int t = threadIdx.x < blockDim.x / 32 ? sh[threadIdx.x] : 0;
        for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
        if (threadIdx.x == 0) atomicAdd(out, t);
    }
}

/* inclusive warp scan with __shfl_up_sync, and the ballot of odd values */
__global__ void k_scan(const int *x, int *scan, unsigned *ballot) {
    const int lane = threadIdx.x & 31;
    int v = x[threadIdx.x];
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += t;
    }
    scan[threadIdx.x] = v;
    unsigned b = __ballot_sync(0xffffffffu, x[threadIdx.x] & 1);
    if (lane == 0) ballot[threadIdx.x >> 5] = b;
}

/* reverses a block's values through dynamic shared memory */
__global__ void k_reverse(int *x) {
    extern __shared__ int buf[];
    const int n = blockDim.x, t = threadIdx.x;
    buf[t] = x[blockIdx.x * n + t];
    __syncthreads();
    x[blockIdx.x * n + t] = buf[n - 1 - t];
}

__global__ void k_index(int *out) {
    const int b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    const int t = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 1000 + t;
}

__global__ void k_copy(const float *x, float *y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i];
}

__global__ void k_divergent_barrier(int *x) {
    if (threadIdx.x < 32) __syncthreads();
    x[threadIdx.x] = 1;
}

__global__ void k_shfl_exited(int *x) {
    if ((threadIdx.x & 31) >= 16) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

__global__ void k_barrier_exited(int *x) {
    if (threadIdx.x >= 64) return;
    __syncthreads();
    x[threadIdx.x] = 1;
}

/* a race: each thread reads its neighbour's shared slot with no barrier after the writes */
__global__ void k_racy(int *out, int base) {
    __shared__ int sh[64];
    sh[threadIdx.x] = base + (int)threadIdx.x;
    out[threadIdx.x] = sh[(threadIdx.x + 1) & 63];
}

/* lanes 0-15 shuffle among themselves (mask 0xffff) before the whole warp does: legal CUDA */
__global__ void k_subwarp(int *out) {
    const int lane = threadIdx.x & 31;
    int v = (int)threadIdx.x;
    if (lane < 16) v += __shfl_xor_sync(0x0000ffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 16);
    if (lane >= 16) __syncwarp(0xffff0000u);
    out[threadIdx.x] = v + (int)__ballot_sync(0xffffffffu, lane & 1);
}

/* two halves of a warp in different intrinsics with the same mask: undefined in CUDA */
__global__ void k_mixed_ops(int *x) {
    if ((threadIdx.x & 31) < 16)
        x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
    else
        x[threadIdx.x] = (int)__ballot_sync(0xffffffffu, 1);
}
__global__ void k_bad_width(int *x) { x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1, 24); }
__global__ void k_not_in_mask(int *x) { x[threadIdx.x] = __shfl_sync(0xfffffffeu, 1, 1); }

/* offsets and xor masks use their low 5 bits (PTX shfl.sync: bval = b[4:0]) */
__global__ void k_shfl_offsets(int *out) {
    const int v = (int)threadIdx.x;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 33);
    out[32 + threadIdx.x] = __shfl_up_sync(0xffffffffu, v, 34);
    out[64 + threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 35);
    out[96 + threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 32); /* offset 0: own value */
}

/* reads a __shared__ variable before the block writes it: garbage on a GPU */
__global__ void k_shared_unwritten(unsigned *out) {
    __shared__ unsigned cnt;
    __shared__ float acc[4];
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = cnt;
        out[2 * blockIdx.x + 1] = __float_as_uint(acc[1]);
    }
    __syncthreads();
    if (threadIdx.x == 0) cnt = 7, acc[1] = 1.0f;
}

/* block b reads block b - 1's output with no grid-wide synchronisation: a race between blocks */
__global__ void k_block_race(int *x, int base) {
    if (threadIdx.x == 0) x[blockIdx.x] = base + (blockIdx.x ? x[blockIdx.x - 1] : 0) + 1;
}

__global__ void k_atomics(unsigned *u, int *i, float *f) {
    atomicAdd(u, 1); /* unsigned counter, int literal: CUDA converts */
    atomicAdd(f, 1);
    atomicSub(i, 2);
    atomicOr(u + 1, 1u << (threadIdx.x & 31));
    atomicAnd(u + 2, ~(1u << (threadIdx.x & 31)));
    atomicXor(u + 3, 1);
    atomicMax(i + 1, (int)threadIdx.x);
}

/* the forms of dynamic shared memory the rewrite knows, a launch split over lines */
__global__ void k_smem_forms(unsigned char *out) {
    extern __shared__ __align__(16) unsigned char raw[];
    raw[threadIdx.x] = (unsigned char)(threadIdx.x * 3);
    __syncthreads();
    out[threadIdx.x] = raw[blockDim.x - 1 - threadIdx.x];
}

__global__ void k_fault_deep(int *x) { /* threads 64+ wait deep in a frame, the rest exit */
    if (threadIdx.x < 64) return;
    volatile int local[48];
    for (int i = 0; i < 48; i++) local[i] = i + (int)threadIdx.x;
    __syncthreads();
    x[threadIdx.x] = local[threadIdx.x % 48];
}
__global__ void k_stack_user(int *x) { /* a big local array over the same stack range */
    int big[512];
    memset(big, (int)threadIdx.x & 0x7f, sizeof big);
    int s = 0;
    for (int i = 0; i < 512; i += 7) s += big[i] & 0xff;
    x[threadIdx.x] = s;
}

static int *s_dev_ints(const int *h, int n) {
    int *d = nullptr;
    cudaMalloc(&d, sizeof(int) * n);
    cudaMemcpy(d, h, sizeof(int) * n, cudaMemcpyHostToDevice);
    return d;
}

static void t_correct_kernels() {
    const int n = 5000;
    int *h = (int *)malloc(sizeof(int) * n);
    long want = 0;
    for (int i = 0; i < n; i++) h[i] = (i * 7919) % 1000 - 300, want += h[i];
    int *d = s_dev_ints(h, n), *out = nullptr, zero = 0, got = 0;
    cudaMalloc(&out, sizeof(int));
    cudaMemcpy(out, &zero, sizeof(int), cudaMemcpyHostToDevice);
    k_block_sum<<<3, 256, 0, 0>>>(d, out, n);
    CHECK(cudaGetLastError() == cudaSuccess, "launch");
    cudaMemcpy(&got, out, sizeof(int), cudaMemcpyDeviceToHost);
    CHECK(got == want, "block sum %d, want %ld", got, want);

    int xs[64], sc[64];
    unsigned bal[2];
    for (int i = 0; i < 64; i++) xs[i] = (i * 37) % 11;
    int *dx = s_dev_ints(xs, 64), *dsc = nullptr;
    unsigned *db = nullptr;
    cudaMalloc(&dsc, sizeof sc);
    cudaMalloc(&db, sizeof bal);
    k_scan<<<1, 64>>>(dx, dsc, db);
    cudaMemcpy(sc, dsc, sizeof sc, cudaMemcpyDeviceToHost);
    cudaMemcpy(bal, db, sizeof bal, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int w = 0; w < 2; w++) {
        int s = 0;
        unsigned b = 0;
        for (int l = 0; l < 32; l++) {
            s += xs[w * 32 + l];
            bad += sc[w * 32 + l] != s;
            if (xs[w * 32 + l] & 1) b |= 1u << l;
        }
        CHECK(bal[w] == b, "ballot warp %d: %08x vs %08x", w, bal[w], b);
    }
    CHECK(bad == 0, "%d scan values wrong", bad);

    int r[3 * 96];
    for (int i = 0; i < 3 * 96; i++) r[i] = i;
    int *dr = s_dev_ints(r, 3 * 96);
    k_reverse<<<3, 96, 96 * sizeof(int), 0>>>(dr);
    cudaMemcpy(r, dr, sizeof r, cudaMemcpyDeviceToHost);
    bad = 0;
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < 96; t++) bad += r[b * 96 + t] != b * 96 + 95 - t;
    CHECK(bad == 0, "%d reversed values wrong", bad);

    const dim3 g(3, 2, 2), bl(4, 3, 2);
    int *di = nullptr, hi[12 * 24];
    cudaMalloc(&di, sizeof hi);
    k_index<<<g, bl>>>(di);
    cudaMemcpy(hi, di, sizeof hi, cudaMemcpyDeviceToHost);
    bad = 0;
    for (int b = 0; b < 12; b++)
        for (int t = 0; t < 24; t++) bad += hi[b * 24 + t] != b * 1000 + t;
    CHECK(bad == 0, "%d thread/block indices wrong", bad);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "no error after correct kernels");
    cudaFree(d), cudaFree(out), cudaFree(dx), cudaFree(dsc), cudaFree(db), cudaFree(dr),
        cudaFree(di);
    free(h);
    printf("  %s correct_kernels\n", s_fail ? "FAIL" : "ok  ");
}

/* A kernel launch the emulator must refuse as a fault. */
typedef struct {
    const char *name;
    void (*run)(int *);
} fault_case_t;

/* Runs each of cases[n] on a freshly reset emulator with a buffer of `words` ints: it must fail
 * (cudaErrorLaunchFailure at the synchronisation) and, with sticky, the error must stay for the
 * next call (a copy). */
static void s_expect_faults(const fault_case_t *cases, int n, size_t words, bool sticky) {
    int *d = nullptr;
    for (int i = 0; i < n; i++) {
        const fault_case_t &c = cases[i];
        tdemu_reset_for_tests();
        cudaMalloc(&d, words * sizeof(int));
        c.run(d);
        const cudaError_t e = cudaDeviceSynchronize();
        CHECK(e == cudaErrorLaunchFailure, "%s: got %s", c.name, cudaGetErrorName(e));
        if (!sticky) continue;
        int h = 0;
        CHECK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure,
              "%s: the error is sticky", c.name);
    }
}

static void t_faults() {
    int *d = nullptr;
    cudaMalloc(&d, 1024 * sizeof(int));
    const fault_case_t cases[] = {
        {"divergent __syncthreads", [](int *x) { k_divergent_barrier<<<1, 128>>>(x); }},
        {"shuffle with exited lanes", [](int *x) { k_shfl_exited<<<1, 64>>>(x); }},
        {"__syncthreads after some threads exited",
         [](int *x) { k_barrier_exited<<<1, 128>>>(x); }},
    };
    s_expect_faults(cases, 3, 1024, true);
    tdemu_reset_for_tests();
    float *x = nullptr, *y = nullptr;
    cudaMalloc(&x, 100 * sizeof(float));
    cudaMalloc(&y, 100 * sizeof(float));
    k_copy<<<0, 128>>>(x, y, 100);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "empty grid refused");
    k_copy<<<1, 2048>>>(x, y, 100);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads refused");
    k_copy<<<1, 128, 64 * 1024, 0>>>(x, y, 100);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB dynamic shared memory refused");
    CHECK(cudaGetLastError() == cudaSuccess, "a launch error is not sticky");
    float h[101] = {0};
    CHECK(cudaMemcpy(x, h, 101 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "copy past the end of an allocation refused");
    CHECK(cudaMemcpy(h, x, 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue,
          "copy in the wrong direction refused");
    CHECK(cudaMemcpy(h, x + 1, 99 * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess,
          "copy inside an allocation");
    CHECK(h[0] != h[0], "uninitialised device memory reads NaN (%g)", h[0]);
    CHECK(cudaFree(h) == cudaErrorInvalidValue, "cudaFree of a host pointer refused");
    cudaGetLastError();
    cudaFree(x), cudaFree(y);
    printf("  %s faults\n", s_fail ? "FAIL" : "ok  ");
}

/* The schedule option exposes the race: forward, reverse and shuffled orders disagree, and the
 * race-free block sum agrees in every order. */
static void t_schedules() {
    int *d = nullptr, h[64], fresh[3] = {0, 0, 0};
    cudaMalloc(&d, sizeof h);
    for (int mode = 0; mode < 3; mode++) {
        tdemu_set_schedule_for_tests(mode);
        const int base = 1000 * (mode + 1); /* the neighbour's value from this launch */
        k_racy<<<1, 64>>>(d, base);
        cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
        for (int t = 0; t < 64; t++) fresh[mode] += h[t] == base + ((t + 1) & 63);
    }
    /* forward: only thread 63 finds its neighbour (thread 0) done; reverse: all but thread 63 */
    CHECK(fresh[0] == 1 && fresh[1] == 63 && fresh[2] > 1 && fresh[2] < 63,
          "reads of a neighbour's fresh value: forward %d, reverse %d, shuffle %d", fresh[0],
          fresh[1], fresh[2]);
    const int n = 3000;
    int x[3000], got[3];
    long want = 0;
    for (int i = 0; i < n; i++) x[i] = i % 17 - 8, want += x[i];
    int *dx = s_dev_ints(x, n), *out = nullptr;
    cudaMalloc(&out, sizeof(int));
    for (int mode = 0; mode < 3; mode++) {
        tdemu_set_schedule_for_tests(mode);
        cudaMemset(out, 0, sizeof(int));
        k_block_sum<<<2, 128>>>(dx, out, n);
        cudaMemcpy(&got[mode], out, sizeof(int), cudaMemcpyDeviceToHost);
        CHECK(got[mode] == want, "block sum under schedule %d: %d, want %ld", mode, got[mode],
              want);
    }
    tdemu_set_schedule_for_tests(0);
    cudaFree(d), cudaFree(dx), cudaFree(out);
    printf("  %s schedules\n", s_fail ? "FAIL" : "ok  ");
}

/* cublasGemmEx against the definition: C(i,j) = sum_p op(A)(i,p) op(B)(p,j), column-major,
 * with leading dimensions larger than the rows */
static void t_gemm() {
    cublasHandle_t h;
    CHECK(cublasCreate(&h) == CUBLAS_STATUS_SUCCESS, "create");
    const int m = 3, n = 2, k = 4, lda = 5, ldb = 6, ldc = 4;
    float A[5 * 4 * 2], B[6 * 4 * 2], C[4 * 2];
    for (int i = 0; i < 40; i++) A[i] = (float)(i % 7) - 3.0f;
    for (int i = 0; i < 48; i++) B[i] = (float)(i % 5) - 2.0f;
    float *dA, *dB, *dC;
    cudaMalloc(&dA, sizeof A), cudaMalloc(&dB, sizeof B), cudaMalloc(&dC, sizeof C);
    cudaMemcpy(dA, A, sizeof A, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, B, sizeof B, cudaMemcpyHostToDevice);
    const float one = 1, zero = 0;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            const int la = ta ? 5 : lda, lb = tb ? 6 : ldb; /* op T: A is k x m (lda >= k) */
            cublasStatus_t s =
                cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb ? CUBLAS_OP_T : CUBLAS_OP_N, m,
                             n, k, &one, dA, CUDA_R_32F, la, dB, CUDA_R_32F, lb, &zero, dC,
                             CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CHECK(s == CUBLAS_STATUS_SUCCESS, "gemm ta %d tb %d: %s", ta, tb,
                  cublasGetStatusString(s));
            float got[4 * 2];
            cudaMemcpy(got, dC, sizeof got, cudaMemcpyDeviceToHost);
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float want = 0;
                    for (int p = 0; p < k; p++)
                        want += (ta ? A[i * la + p] : A[p * la + i]) *
                                (tb ? B[p * lb + j] : B[j * lb + p]);
                    CHECK(got[j * ldc + i] == want, "ta %d tb %d C(%d,%d) = %g, want %g", ta, tb, i,
                          j, got[j * ldc + i], want);
                }
        }
    CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F, 2, dB,
                       CUDA_R_32F, ldb, &zero, dC, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                       CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_INVALID_VALUE,
          "lda < m refused");
    cublasDestroy(h);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    printf("  %s gemm\n", s_fail ? "FAIL" : "ok  ");
}

static void t_half() {
    const struct {
        float f;
        unsigned short h;
    } cases[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3c00},
        {-2.5f, 0xc100},
        {65504.0f, 0x7bff},
        {65519.0f, 0x7bff},
        {65520.0f, 0x7c00},
        {1e6f, 0x7c00},
        {0x1p-24f, 0x0001},
        {0x1p-25f, 0x0000} /* tie: even */,
        {0x1.8p-24f, 0x0002} /* tie: even */,
        {0x1p-14f, 0x0400},
        {0x1.ffcp-15f, 0x0400} /* largest subnormal + half an ulp: tie, even */,
        {1.00048828125f, 0x3c00} /* tie, even */,
        {1.00146484375f, 0x3c02} /* tie, odd: up */,
    };
    for (auto &c : cases) {
        unsigned short h = __half_as_ushort(__float2half_rn(c.f));
        CHECK(h == c.h, "half(%.9g) = 0x%04x, want 0x%04x", c.f, h, c.h);
        if ((c.h & 0x7c00) != 0x7c00)
            CHECK(__half2float(__ushort_as_half(c.h)) == __half2float(__float2half_rn(c.f)),
                  "round trip of 0x%04x", c.h);
    }
    CHECK(__half2float(__ushort_as_half(0x0001)) == 0x1p-24f, "smallest subnormal");
    CHECK(__half2float(__ushort_as_half(0x7bff)) == 65504.0f, "largest normal");
    float nan = __half2float(__float2half_rn(__int_as_float(0x7fc00000)));
    CHECK(nan != nan, "NaN stays NaN");
    CHECK(__bfloat162float(__float2bfloat16_rn(1.00390625f)) == 1.0f, "bf16 tie to even");
    CHECK(__bfloat162float(__float2bfloat16_rn(1.01171875f)) == 1.015625f, "bf16 tie up to even");
    printf("  %s half\n", s_fail ? "FAIL" : "ok  ");
}

/* sub-warp masks are legal: lanes that ran more warp operations than others still meet the rest
 * of the warp in the next full-warp one (an earlier emulator reported "different warp
 * operations"); the misuses CUDA leaves undefined are reported */
static void t_warp_subgroups() {
    const int f0 = s_fail;
    int *d = nullptr, h[64];
    cudaMalloc(&d, sizeof h);
    k_subwarp<<<1, 64>>>(d);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "sub-warp masks: %s",
          cudaGetErrorName(cudaGetLastError()));
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int t = 0; t < 64; t++) {
        const int l = t & 31, w = t & ~31;
        auto first = [&](int x) { return (x & 31) < 16 ? x + (x ^ 1) : x; };
        const int want = first(t) + first(w + (l ^ 16)) + (int)0xaaaaaaaau;
        bad += h[t] != want;
    }
    CHECK(bad == 0, "%d values of the sub-warp shuffles wrong", bad);
    const fault_case_t cases[] = {
        {"different intrinsics, one mask", [](int *x) { k_mixed_ops<<<1, 32>>>(x); }},
        {"width 24", [](int *x) { k_bad_width<<<1, 32>>>(x); }},
        {"a mask without the calling lane", [](int *x) { k_not_in_mask<<<1, 32>>>(x); }},
    };
    s_expect_faults(cases, 3, 64, false);
    tdemu_reset_for_tests();
    cudaMalloc(&d, 128 * sizeof(int));
    int o[128];
    k_shfl_offsets<<<1, 32>>>(d);
    cudaMemcpy(o, d, sizeof o, cudaMemcpyDeviceToHost);
    bad = 0;
    for (int l = 0; l < 32; l++) {
        bad += o[l] != (l + 1 < 32 ? l + 1 : l);
        bad += o[32 + l] != (l >= 2 ? l - 2 : l);
        bad += o[64 + l] != (l ^ 3);
        bad += o[96 + l] != l;
    }
    CHECK(bad == 0, "%d shuffles with offsets >= 32 differ from PTX's low 5 bits", bad);
    cudaFree(d);
    printf("  %s warp_subgroups\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* static __shared__ memory holds garbage at the start of every block, as on a GPU: not the zero
 * of a fresh static, nor what the previous block left */
static void t_shared_poison() {
    const int f0 = s_fail;
    unsigned *d = nullptr, h[6];
    cudaMalloc(&d, sizeof h);
    k_shared_unwritten<<<3, 32>>>(d);
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    for (int b = 0; b < 3; b++) {
        CHECK(h[2 * b] == 0xffffffffu, "block %d read the unwritten counter as %u", b, h[2 * b]);
        float f;
        memcpy(&f, &h[2 * b + 1], 4);
        CHECK(f != f, "block %d read the unwritten float as %g", b, f);
    }
    cudaFree(d);
    printf("  %s shared_poison\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* the schedules change the order of the blocks too: a race between blocks shows */
static void t_block_order() {
    const int f0 = s_fail;
    const int nb = 64;
    int *d = nullptr, h[64], chained[3];
    cudaMalloc(&d, sizeof h);
    for (int mode = 0; mode < 3; mode++) {
        tdemu_set_schedule_for_tests(mode);
        const int base = 1000 * (mode + 1);
        cudaMemset(d, 0, sizeof h);
        k_block_race<<<nb, 32>>>(d, 0);
        k_block_race<<<nb, 32>>>(d, base); /* reads this launch's or the last launch's values */
        cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
        chained[mode] = 0;
        for (int b = 1; b < nb; b++) chained[mode] += h[b] == h[b - 1] + base + 1;
    }
    tdemu_set_schedule_for_tests(0);
    CHECK(chained[0] == nb - 1 && chained[1] == 0 && chained[2] < nb - 1,
          "blocks that saw their predecessor's fresh value: forward %d, reverse %d, shuffle %d",
          chained[0], chained[1], chained[2]);
    cudaFree(d);
    printf("  %s block_order\n", s_fail > f0 ? "FAIL" : "ok  ");
}

static void t_atomics_and_rewrite() {
    const int f0 = s_fail;
    unsigned *u = nullptr, hu[4] = {0, 0, 0xffffffffu, 0};
    int *i = nullptr, hi[2] = {0, -1};
    float *f = nullptr, hf = 0.0f;
    cudaMalloc(&u, sizeof hu), cudaMalloc(&i, sizeof hi), cudaMalloc(&f, sizeof hf);
    cudaMemcpy(u, hu, sizeof hu, cudaMemcpyHostToDevice);
    cudaMemcpy(i, hi, sizeof hi, cudaMemcpyHostToDevice);
    cudaMemcpy(f, &hf, sizeof hf, cudaMemcpyHostToDevice);
    k_atomics<<<2, 48>>>(u, i, f);
    cudaMemcpy(hu, u, sizeof hu, cudaMemcpyDeviceToHost);
    cudaMemcpy(hi, i, sizeof hi, cudaMemcpyDeviceToHost);
    cudaMemcpy(&hf, f, sizeof hf, cudaMemcpyDeviceToHost);
    CHECK(hu[0] == 96 && hf == 96.0f && hi[0] == -192 && hu[1] == 0xffffffffu && hu[2] == 0 &&
              hu[3] == 0 && hi[1] == 47,
          "atomics: add %u %g sub %d or %08x and %08x xor %u max %d", hu[0], hf, hi[0], hu[1],
          hu[2], hu[3], hi[1]);
    unsigned char *o = nullptr, ho[96];
    cudaMalloc(&o, sizeof ho);
    // clang-format off
    k_smem_forms<<<1,
                   96, 96,
                   0>>>(o);
    // clang-format on
    CHECK(cudaGetLastError() == cudaSuccess, "launch over three lines");
    cudaMemcpy(ho, o, sizeof ho, cudaMemcpyDeviceToHost);
    int bad = 0;
    for (int t = 0; t < 96; t++) bad += ho[t] != (unsigned char)((95 - t) * 3);
    CHECK(bad == 0, "%d bytes of the aligned unsigned char dynamic shared memory wrong", bad);
    CHECK(__saturatef(nanf("")) == 0.0f && __saturatef(2.0f) == 1.0f && __saturatef(-1.0f) == 0.0f,
          "__saturatef(NaN) is 0 on a GPU");
    cudaFree(u), cudaFree(i), cudaFree(f), cudaFree(o);
    printf("  %s atomics_and_rewrite\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* the runtime: a kind that is not a cudaMemcpyKind; a faulted context writes nothing more */
static void t_runtime() {
    const int f0 = s_fail;
    tdemu_reset_for_tests();
    int *d = nullptr, h[4] = {1, 2, 3, 4};
    cudaMalloc(&d, 128 * sizeof(int));
    CHECK(cudaMemcpy(d, h, sizeof h, (cudaMemcpyKind)7) == cudaErrorInvalidMemcpyDirection,
          "kind 7 refused");
    CHECK(cudaGetLastError() == cudaErrorInvalidMemcpyDirection, "and is the last error");
    CHECK(cudaMemcpy(d, h, sizeof h, cudaMemcpyDefault) == cudaSuccess, "cudaMemcpyDefault");
    k_divergent_barrier<<<1, 128>>>(d); /* a device fault: sticky */
    CHECK(cudaMemset(d, 0, sizeof h) == cudaErrorLaunchFailure, "memset after a fault fails");
    CHECK(d[0] == 1, "and writes nothing (%d)", d[0]); /* emulated device memory is host memory */
    tdemu_reset_for_tests();
    printf("  %s runtime\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* fibers abandoned by a faulted kernel are restarted clean however many threads the kernels in
 * between had (in a sanitizer build, stale ASan poison on their stacks was reported as an error
 * in a later, correct kernel) */
static void t_fiber_reuse() {
    const int f0 = s_fail;
    tdemu_reset_for_tests();
    int *d = nullptr;
    cudaMalloc(&d, 1024 * sizeof(int));
    k_fault_deep<<<1, 1024>>>(d);
    CHECK(cudaDeviceSynchronize() == cudaErrorLaunchFailure, "the faulting kernel");
    tdemu_reset_for_tests();
    cudaMalloc(&d, 1024 * sizeof(int));
    k_stack_user<<<1, 32>>>(d); /* fewer threads: restarts fibers 0-31 only */
    k_stack_user<<<1, 1024>>>(d);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernels after the fault");
    int h[1024], bad = 0;
    cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost);
    for (int t = 0; t < 1024; t++) {
        bad += h[t] != 74 * (t & 0x7f);
    }
    CHECK(bad == 0, "%d results of the stack-heavy kernel wrong", bad);
    cudaFree(d);
    printf("  %s fiber_reuse\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* a host thread that launched kernels gives its fiber stacks back when it exits */
static void *s_launcher(void *arg) {
    k_copy<<<1, 1024>>>((const float *)arg, (float *)arg + 1024, 1024);
    return nullptr;
}
static long s_vm_kb() {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, "VmSize:", 7)) kb = atol(line + 7);
    if (f) fclose(f);
    return kb;
}
static void t_thread_exit() {
    const int f0 = s_fail;
    float *x = nullptr;
    cudaMalloc(&x, 2048 * sizeof(float));
    cudaMemset(x, 0, 2048 * sizeof(float));
    pthread_t th;
    pthread_create(&th, nullptr, s_launcher, x), pthread_join(th, nullptr); /* warm up */
    const long before = s_vm_kb();
    for (int k = 0; k < 8; k++)
        pthread_create(&th, nullptr, s_launcher, x), pthread_join(th, nullptr);
    const long grown = s_vm_kb() - before;
    /* 1024 fiber stacks are 260 MiB of address space per thread */
    CHECK(before > 0 && grown < 256 * 1024, "8 launching threads came and went: VmSize +%ld KiB",
          grown);
    CHECK(cudaDeviceSynchronize() == cudaSuccess, "kernels from other threads");
    cudaFree(x);
    printf("  %s thread_exit\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* cublasGemmEx's FAST compute types take FP32 operands only and round them on the way in, as
 * SGEMM does under CUBLAS_TF32_TENSOR_OP_MATH */
static void t_gemm_modes() {
    const int f0 = s_fail;
    cublasHandle_t h;
    cublasCreate(&h);
    const float one = 1, zero = 0;
    __half ah[4], bh[4];
    for (int k = 0; k < 4; k++) ah[k] = bh[k] = __float2half(1.0f);
    void *dA, *dB, *dC;
    cudaMalloc(&dA, 64), cudaMalloc(&dB, 64), cudaMalloc(&dC, 64);
    cudaMemcpy(dA, ah, sizeof ah, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, bh, sizeof bh, cudaMemcpyHostToDevice);
    const cublasComputeType_t fast[3] = {CUBLAS_COMPUTE_32F_FAST_16F, CUBLAS_COMPUTE_32F_FAST_16BF,
                                         CUBLAS_COMPUTE_32F_FAST_TF32};
    for (auto ct : fast)
        CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &one, dA, CUDA_R_16F, 2, dB,
                           CUDA_R_16F, 2, &zero, dC, CUDA_R_32F, 2, ct,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_NOT_SUPPORTED,
              "compute type %d with FP16 operands refused", (int)ct);
    /* 1 x 1 x 1 products of a = 1 + 2^-11 + 2^-20 and b = 1: TF32 and FP16 keep 10 fraction bits
     * (a rounds up to 1 + 2^-10), BF16 7 (a rounds down to 1) */
    const float a = 1.0f + 0x1p-11f + 0x1p-20f, b = 1.0f;
    cudaMemcpy(dA, &a, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(dB, &b, 4, cudaMemcpyHostToDevice);
    const struct {
        cublasComputeType_t ct;
        float want;
    } modes[] = {{CUBLAS_COMPUTE_32F, a},
                 {CUBLAS_COMPUTE_32F_FAST_TF32, 1.0f + 0x1p-10f},
                 {CUBLAS_COMPUTE_32F_FAST_16F, 1.0f + 0x1p-10f},
                 {CUBLAS_COMPUTE_32F_FAST_16BF, 1.0f}};
    for (auto &m : modes) {
        float c = 0;
        CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, dA, CUDA_R_32F, 1, dB,
                           CUDA_R_32F, 1, &zero, dC, CUDA_R_32F, 1, m.ct,
                           CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS,
              "compute type %d", (int)m.ct);
        cudaMemcpy(&c, dC, 4, cudaMemcpyDeviceToHost);
        CHECK(c == m.want, "compute type %d: %.9g, want %.9g", (int)m.ct, c, m.want);
    }
    for (int tf32 = 0; tf32 < 2; tf32++) {
        float c = 0;
        cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
        cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, 1, 1, 1, &one, (const float *)dA, 1,
                    (const float *)dB, 1, &zero, (float *)dC, 1);
        cudaMemcpy(&c, dC, 4, cudaMemcpyDeviceToHost);
        CHECK(c == (tf32 ? 1.0f + 0x1p-10f : a), "SGEMM, TF32 math %d: %.9g", tf32, c);
    }
    cublasDestroy(h);
    cudaFree(dA), cudaFree(dB), cudaFree(dC);
    printf("  %s gemm_modes\n", s_fail > f0 ? "FAIL" : "ok  ");
}

/* pinned host memory is where asynchrony shows: a copy into it lands when its stream is
 * synchronised, a copy out of it must find its source unchanged then */
static void t_async() {
    const int f0 = s_fail;
    tdemu_reset_for_tests();
    int *d = nullptr, *pin = nullptr, page[16];
    cudaStream_t s;
    cudaEvent_t ev;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaEventCreate(&ev);
    cudaMalloc(&d, 64 * sizeof(int));
    cudaMallocHost((void **)&pin, 16 * sizeof(int));
    for (int i = 0; i < 16; i++) pin[i] = i;
    cudaMemcpy(d, pin, 16 * sizeof(int), cudaMemcpyHostToDevice);
    /* device to pinned host: not there before the stream is synchronised */
    memset(pin, 0, 16 * sizeof(int));
    CHECK(cudaMemcpyAsync(pin, d, 16 * sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess,
          "enqueue");
    CHECK(pin[5] != 5, "read before cudaStreamSynchronize: %d", pin[5]);
    cudaMemcpy(d + 32, d, 4, cudaMemcpyDeviceToDevice); /* the legacy stream: does not wait for s */
    CHECK(pin[5] != 5, "read after a blocking cudaMemcpy on another stream: %d", pin[5]);
    cudaEventRecord(ev, s);
    CHECK(cudaEventSynchronize(ev) == cudaSuccess && pin[5] == 5, "after cudaEventSynchronize: %d",
          pin[5]);
    cudaMemcpyAsync(pin, d, 16 * sizeof(int), cudaMemcpyDeviceToHost, s);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess && pin[7] == 7, "after cudaStreamSynchronize: %d",
          pin[7]);
    /* device to pageable host: synchronous, as in CUDA */
    CHECK(cudaMemcpyAsync(page, d, sizeof page, cudaMemcpyDeviceToHost, s) == cudaSuccess &&
              page[3] == 3,
          "pageable copy: %d", page[3]);
    /* pinned host to device, source left alone until the stream is synchronised: fine */
    cudaMemcpyAsync(d, pin, 16 * sizeof(int), cudaMemcpyHostToDevice, s);
    CHECK(cudaStreamSynchronize(s) == cudaSuccess, "pinned upload, source kept");
    pin[0] = 100;
    /* ... and rewritten before it: the GPU may copy either value */
    cudaMemcpyAsync(d, pin, 16 * sizeof(int), cudaMemcpyHostToDevice, s);
    pin[0] = 200;
    CHECK(cudaStreamSynchronize(s) == cudaErrorUnknown, "pinned source rewritten before the sync");
    tdemu_reset_for_tests();
    cudaEventDestroy(ev);
    cudaStreamDestroy(s);
    cudaFreeHost(pin);
    printf("  %s async\n", s_fail > f0 ? "FAIL" : "ok  ");
}

int main() {
    t_correct_kernels();
    t_faults();
    t_schedules();
    t_gemm();
    t_half();
    t_warp_subgroups();
    t_shared_poison();
    t_block_order();
    t_atomics_and_rewrite();
    t_runtime();
    t_fiber_reuse();
    t_thread_exit();
    t_gemm_modes();
    t_async();
    printf("cuda-emu selftest: %d checks, %d failed\n", s_checks, s_fail);
    return s_fail ? 1 : 0;
}

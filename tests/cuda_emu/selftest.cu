/* selftest.cu - tests of the CUDA emulator itself (built and run by make test-cuda-emu): that
 * correct kernels compute what a GPU computes (block and warp reductions, scans, ballots,
 * dynamic shared memory, atomics, multi-dimensional grids), that the misuses it promises to
 * catch are caught (divergent barriers, shuffles with exited lanes, bad launch configurations,
 * copies outside allocations, uninitialised memory), that cuBLAS's column-major GEMM follows the
 * documented definition, and that FP16/BF16 rounding matches IEEE round-to-nearest-even. */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

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
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) v += x[i];
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
    cudaFree(d), cudaFree(out), cudaFree(dx), cudaFree(dsc), cudaFree(db), cudaFree(dr), cudaFree(di);
    free(h);
    printf("  %s correct_kernels\n", s_fail ? "FAIL" : "ok  ");
}

static void t_faults() {
    int *d = nullptr;
    cudaMalloc(&d, 1024 * sizeof(int));
    struct {
        const char *name;
        void (*run)(int *);
    } cases[] = {
        {"divergent __syncthreads", [](int *x) { k_divergent_barrier<<<1, 128>>>(x); }},
        {"shuffle with exited lanes", [](int *x) { k_shfl_exited<<<1, 64>>>(x); }},
        {"__syncthreads after some threads exited", [](int *x) { k_barrier_exited<<<1, 128>>>(x); }},
    };
    for (auto &c : cases) {
        tdemu_reset_for_tests();
        cudaMalloc(&d, 1024 * sizeof(int));
        c.run(d);
        cudaError_t e = cudaDeviceSynchronize();
        CHECK(e == cudaErrorLaunchFailure, "%s: got %s", c.name, cudaGetErrorName(e));
        int h = 0;
        CHECK(cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost) == cudaErrorLaunchFailure,
              "%s: the error is sticky", c.name);
    }
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
        CHECK(got[mode] == want, "block sum under schedule %d: %d, want %ld", mode, got[mode], want);
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
            cublasStatus_t s = cublasGemmEx(h, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                                            tb ? CUBLAS_OP_T : CUBLAS_OP_N, m, n, k, &one, dA,
                                            CUDA_R_32F, la, dB, CUDA_R_32F, lb, &zero, dC,
                                            CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            CHECK(s == CUBLAS_STATUS_SUCCESS, "gemm ta %d tb %d: %s", ta, tb, cublasGetStatusString(s));
            float got[4 * 2];
            cudaMemcpy(got, dC, sizeof got, cudaMemcpyDeviceToHost);
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    float want = 0;
                    for (int p = 0; p < k; p++)
                        want += (ta ? A[i * la + p] : A[p * la + i]) * (tb ? B[p * lb + j] : B[j * lb + p]);
                    CHECK(got[j * ldc + i] == want, "ta %d tb %d C(%d,%d) = %g, want %g", ta, tb, i,
                          j, got[j * ldc + i], want);
                }
        }
    CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, dA, CUDA_R_32F, 2, dB, CUDA_R_32F,
                       ldb, &zero, dC, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
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
        {0.0f, 0x0000},        {-0.0f, 0x8000},       {1.0f, 0x3c00},         {-2.5f, 0xc100},
        {65504.0f, 0x7bff},    {65519.0f, 0x7bff},    {65520.0f, 0x7c00},     {1e6f, 0x7c00},
        {0x1p-24f, 0x0001},     {0x1p-25f, 0x0000} /* tie: even */,
        {0x1.8p-24f, 0x0002} /* tie: even */,          {0x1p-14f, 0x0400},
        {0x1.ffcp-15f, 0x0400} /* largest subnormal + half an ulp: tie, even */,          {1.00048828125f, 0x3c00} /* tie, even */,
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

int main() {
    t_correct_kernels();
    t_faults();
    t_schedules();
    t_gemm();
    t_half();
    printf("cuda-emu selftest: %d checks, %d failed\n", s_checks, s_fail);
    return s_fail ? 1 : 0;
}

/* emu.cpp - the CPU emulator's runtime: fibers and their scheduler, device memory, streams,
 * events and cuBLAS's GEMM. See td_cuda_emu.h for what it is for and what it checks. */
#include "tests/cuda_emu/td_cuda_emu.h"

#include <chrono>
#include <map>
#include <mutex>
#include <numeric>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <vector>

#if defined(__x86_64__)
#define TDEMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif
/* AddressSanitizer is told about every stack switch (its fiber API), so a sanitizer build checks
 * the kernels' memory accesses too */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define TDEMU_ASAN 1
#endif

namespace tdemu {

/* --- fibers --------------------------------------------------------------------------------- */

enum { T_RUN, T_WAIT_WARP, T_WAIT_BLOCK, T_DONE };

struct thread_state {
#ifdef TDEMU_ASM_SWITCH
    void *sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    unsigned lane, warp;
    int state;
    unsigned wmask;    /* mask of the warp operation it waits in */
    int wop;           /* which warp intrinsic (warp_op) */
    uint64_t wval;     /* the value it offers there */
    char *stack;
    void *fake;        /* ASan's fake stack of the fiber while it is switched out */
    bool stale;        /* abandoned mid-kernel: its stack still carries ASan poison */
};

thread_local thread_state *cur_thread;
thread_local block_state *cur_block;

static const size_t STACK = 256 * 1024, GUARD = 4096;
/* the fibers of this host thread; their stacks are unmapped when the thread exits */
struct fiber_pool : std::vector<thread_state> {
    ~fiber_pool() {
        for (auto &t : *this) {
#ifdef TDEMU_ASAN
            __asan_unpoison_memory_region(t.stack, STACK);
#endif
            munmap(t.stack - GUARD, STACK + GUARD);
        }
    }
};
static thread_local fiber_pool t_threads;
static thread_local const std::function<void()> *t_body;
/* the values of the lanes released by the last warp operation of each warp, read by those lanes
 * when they resume (in the next scheduling pass, before any other release of their warp) */
static thread_local uint64_t t_warp_buf[1024];
static thread_local const char *t_kernel;
static thread_local bool t_abort; /* the current kernel faulted: run no more of it */
#ifdef TDEMU_ASAN
static thread_local void *t_sched_fake;
static thread_local const void *t_sched_bottom;
static thread_local size_t t_sched_size;
#endif
#ifdef TDEMU_ASM_SWITCH
static thread_local void *t_sched_sp;
#else
static thread_local ucontext_t t_sched_ctx;
#endif

static void s_fault(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

} // namespace tdemu

#ifdef TDEMU_ASM_SWITCH
/* tdemu_switch(save, to): saves the callee-saved registers, MXCSR and the x87 control word on
 * the current stack, stores the stack pointer in *save, and resumes the stack `to`. */
extern "C" void tdemu_switch(void **save, void *to);
asm(".text\n"
    ".globl tdemu_switch\n"
    ".type tdemu_switch,@function\n"
    "tdemu_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size tdemu_switch, .-tdemu_switch\n");
#endif

namespace tdemu {

static void s_yield(thread_state *t) {
#ifdef TDEMU_ASAN
    /* a finished fiber's stack is dead: no fake stack to keep */
    __sanitizer_start_switch_fiber(t->state == T_DONE ? nullptr : &t->fake, t_sched_bottom,
                                   t_sched_size);
#endif
#ifdef TDEMU_ASM_SWITCH
    tdemu_switch(&t->sp, t_sched_sp);
#else
    swapcontext(&t->ctx, &t_sched_ctx);
#endif
#ifdef TDEMU_ASAN
    __sanitizer_finish_switch_fiber(t->fake, nullptr, nullptr);
#endif
}

static void s_resume(thread_state *t) {
    cur_thread = t;
#ifdef TDEMU_ASAN
    __sanitizer_start_switch_fiber(&t_sched_fake, t->stack, STACK);
#endif
#ifdef TDEMU_ASM_SWITCH
    tdemu_switch(&t_sched_sp, t->sp);
#else
    swapcontext(&t_sched_ctx, &t->ctx);
#endif
#ifdef TDEMU_ASAN
    __sanitizer_finish_switch_fiber(t_sched_fake, nullptr, nullptr);
#endif
}

static void s_fiber_main() {
#ifdef TDEMU_ASAN
    /* learns the scheduler's stack, to switch back to */
    __sanitizer_finish_switch_fiber(nullptr, &t_sched_bottom, &t_sched_size);
#endif
    thread_state *t = cur_thread;
    (*t_body)();
    t = cur_thread;
    t->state = T_DONE;
    s_yield(t);
    abort(); /* a finished fiber is never resumed */
}

static void s_fiber_start(thread_state *t) {
#ifdef TDEMU_ASAN
    if (t->stale) __asan_unpoison_memory_region(t->stack, STACK);
#endif
    t->stale = false;
#ifdef TDEMU_ASM_SWITCH
    /* the frame tdemu_switch pops: mxcsr/fpcw, r15..rbp, then the return address */
    uintptr_t top = ((uintptr_t)t->stack + STACK) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)(top - 16);
    sp[0] = (uint64_t)(uintptr_t)&s_fiber_main; /* at a 16-aligned address: entry rsp = 8 mod 16 */
    sp -= 6;
    for (int i = 0; i < 6; i++) sp[i] = 0;
    sp -= 1;
    uint32_t ctl[2] = {0x1f80u, 0x037fu};
    memcpy(sp, ctl, 8);
    t->sp = sp;
#else
    getcontext(&t->ctx);
    t->ctx.uc_stack.ss_sp = t->stack;
    t->ctx.uc_stack.ss_size = STACK;
    t->ctx.uc_link = nullptr;
    makecontext(&t->ctx, (void (*)())s_fiber_main, 0);
#endif
}

const uint3 &thread_idx() { return cur_thread->tid; }
unsigned lane_id() { return cur_thread->lane; }
void *dyn_smem() { return cur_block->dyn_smem; }

void sync_block() {
    thread_state *t = cur_thread;
    t->state = T_WAIT_BLOCK;
    s_yield(t);
}

static const char *const s_warp_op_name[] = {
    "__syncwarp",      "__shfl_sync",   "__shfl_up_sync", "__shfl_down_sync",
    "__shfl_xor_sync", "__ballot_sync", "__any_sync",     "__all_sync"};

void warp_exchange(unsigned mask, uint64_t v, uint64_t *all, warp_op op) {
    thread_state *t = cur_thread;
    if (!((mask >> t->lane) & 1u))
        s_fault(cudaErrorLaunchFailure, "%s in %s: lane %u of warp %u calls it with mask 0x%08x, "
                "which does not name the calling lane", s_warp_op_name[op], t_kernel, t->lane,
                t->warp, mask);
    t->wval = v;
    t->wmask = mask;
    t->wop = op;
    t->state = T_WAIT_WARP;
    s_yield(t);
    t = cur_thread;
    memcpy(all, t_warp_buf + t->warp * 32, 32 * sizeof *all);
}

void warp_width(const char *what, int width) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        s_fault(cudaErrorLaunchFailure, "%s in %s: width %d is not a power of two from 1 to 32",
                what, t_kernel, width);
}

void warp_fault(const char *what, unsigned mask, int lane, int src) {
    s_fault(cudaErrorLaunchFailure, "%s in %s: lane %d reads lane %d, outside the mask 0x%08x", what,
            t_kernel, lane, src, mask);
}

/* --- static __shared__ variables -------------------------------------------------------------- */

/* every declaration cuda.mk registered: filled with 0xff before each block (kernels run one at a
 * time, so refilling another kernel's variables is harmless) */
static std::mutex g_shared_mu;
static std::vector<std::pair<volatile void *, size_t>> g_shared;

bool shared_decl(volatile void *p, size_t n) {
    memset((void *)p, 0xff, n);
    std::lock_guard<std::mutex> lk(g_shared_mu);
    g_shared.emplace_back(p, n);
    return true;
}
static void s_poison_shared() {
    std::lock_guard<std::mutex> lk(g_shared_mu);
    for (auto &v : g_shared) memset((void *)v.first, 0xff, v.second);
}

/* --- device state --------------------------------------------------------------------------- */

static std::mutex g_mu;           /* allocations, errors */
static std::mutex g_kernel_mu;    /* one kernel at a time: __shared__ statics are per process */
static std::map<uintptr_t, size_t> g_dev, g_host;
static size_t g_used;
static cudaError_t g_sticky = cudaSuccess, g_last = cudaSuccess;
static thread_local int t_device;

static int s_devices() {
    const char *e = getenv("TD_CUDA_EMU_DEVICES");
    int n = e ? atoi(e) : 1;
    return n < 0 ? 0 : n > 16 ? 16 : n;
}
static size_t s_total() {
    const char *e = getenv("TD_CUDA_EMU_MEM_MB");
    size_t mb = e ? (size_t)strtoull(e, nullptr, 10) : 8192;
    return mb << 20;
}

static void s_fault(cudaError_t e, const char *fmt, ...) {
    if (cur_block && t_abort) return; /* a kernel's first fault is the one reported */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cuda-emu: device fault: %s\n", msg);
    std::lock_guard<std::mutex> lk(g_mu);
    if (g_sticky == cudaSuccess) g_sticky = e;
    g_last = e;
    if (cur_block) t_abort = true;
}

static cudaError_t s_ret(cudaError_t e) {
    std::lock_guard<std::mutex> lk(g_mu);
    if (e != cudaSuccess) g_last = e;
    return e != cudaSuccess ? e : g_sticky;
}

/* 1 if [p, p+n) lies inside one allocation of map m */
static bool s_inside(const std::map<uintptr_t, size_t> &m, const void *p, size_t n) {
    uintptr_t a = (uintptr_t)p;
    auto it = m.upper_bound(a);
    if (it == m.begin()) return false;
    --it;
    return a >= it->first && a - it->first <= it->second && n <= it->second - (a - it->first);
}
static bool s_is_dev(const void *p, size_t n) {
    std::lock_guard<std::mutex> lk(g_mu);
    return s_inside(g_dev, p, n);
}
static bool s_touches_dev(const void *p) {
    std::lock_guard<std::mutex> lk(g_mu);
    return s_inside(g_dev, p, 0);
}

/* --- kernels -------------------------------------------------------------------------------- */

static const char *s_state_name(int s) {
    return s == T_RUN ? "running" : s == T_WAIT_WARP ? "in a warp operation"
           : s == T_WAIT_BLOCK                       ? "in __syncthreads"
                                                     : "exited";
}

/* The order in which a scheduling pass resumes the block's threads: TD_CUDA_EMU_SCHEDULE=forward
 * (default: thread 0 first), reverse, or shuffle (a new random order every pass, seeded by
 * TD_CUDA_EMU_SEED). Every order is a schedule a GPU may run; a kernel whose result depends on it
 * reads shared or global memory that another thread writes without a barrier in between. */
static thread_local std::vector<int> t_order;
static thread_local uint64_t t_rng;
static int g_schedule = -1;
static int s_schedule() {
    int &mode = g_schedule;
    if (mode < 0) {
        const char *e = getenv("TD_CUDA_EMU_SCHEDULE");
        mode = e && !strcmp(e, "reverse") ? 1 : e && !strcmp(e, "shuffle") ? 2 : 0;
    }
    return mode;
}
static uint64_t s_rand() {
    if (!t_rng) {
        const char *e = getenv("TD_CUDA_EMU_SEED");
        t_rng = (e ? strtoull(e, nullptr, 10) : 0) * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    }
    t_rng ^= t_rng << 13, t_rng ^= t_rng >> 7, t_rng ^= t_rng << 17;
    return t_rng;
}
static void s_order(int n) {
    const int mode = s_schedule();
    t_order.resize(n);
    for (int k = 0; k < n; k++) t_order[k] = mode == 1 ? n - 1 - k : k;
    if (mode != 2) return;
    for (int k = n - 1; k > 0; k--) {
        const int j = (int)(s_rand() % (uint64_t)(k + 1));
        std::swap(t_order[k], t_order[j]);
    }
}

/* Runs one block to the end; false after a fault (reported). */
static bool s_run_block(int n) {
    for (int i = 0; i < n; i++) {
        thread_state *t = &t_threads[i];
        t->state = T_RUN;
        s_fiber_start(t);
    }
    const int nw = (n + 31) / 32;
    for (;;) {
        s_order(n);
        for (int k = 0; k < n; k++) {
            thread_state *t = &t_threads[t_order[k]];
            if (t->state == T_RUN) s_resume(t);
        }
        if (t_abort) return false;
        int done = 0, at_block = 0;
        for (int i = 0; i < n; i++) {
            done += t_threads[i].state == T_DONE;
            at_block += t_threads[i].state == T_WAIT_BLOCK;
        }
        if (done == n) return true;
        bool released = false;
        if (at_block && at_block + done == n) {
            if (done) {
                s_fault(cudaErrorLaunchFailure,
                        "%s: __syncthreads reached by %d threads while %d have exited (block %u,%u,%u)",
                        t_kernel, at_block, done, cur_block->bid.x, cur_block->bid.y,
                        cur_block->bid.z);
                return false;
            }
            for (int i = 0; i < n; i++) t_threads[i].state = T_RUN;
            continue;
        }
        for (int w = 0; w < nw; w++) {
            const int l0 = w * 32, nl = n - l0 < 32 ? n - l0 : 32;
            for (int l = 0; l < nl; l++) {
                thread_state *t = &t_threads[l0 + l];
                if (t->state != T_WAIT_WARP) continue;
                bool ready = true;
                for (int j = 0; j < 32 && ready; j++) {
                    if (!((t->wmask >> j) & 1u)) continue;
                    if (j >= nl) {
                        s_fault(cudaErrorLaunchFailure,
                                "%s: warp operation with mask 0x%08x names lane %d of a %d-lane warp",
                                t_kernel, t->wmask, j, nl);
                        return false;
                    }
                    thread_state *u = &t_threads[l0 + j];
                    if (u->state == T_DONE) {
                        s_fault(cudaErrorLaunchFailure,
                                "%s: warp operation (mask 0x%08x) waits for lane %d of warp %d, "
                                "which has exited (block %u)",
                                t_kernel, t->wmask, j, w, cur_block->bid.x);
                        return false;
                    }
                    if (u->state != T_WAIT_WARP || u->wmask != t->wmask) ready = false;
                    else if (u->wop != t->wop) {
                        s_fault(cudaErrorLaunchFailure,
                                "%s: lanes %d and %d of warp %d meet with mask 0x%08x in different "
                                "warp operations (%s and %s)",
                                t_kernel, l, j, w, t->wmask, s_warp_op_name[t->wop],
                                s_warp_op_name[u->wop]);
                        return false;
                    }
                }
                if (!ready) continue;
                for (int j = 0; j < 32; j++)
                    if ((t->wmask >> j) & 1u) {
                        t_threads[l0 + j].state = T_RUN;
                        t_warp_buf[l0 + j] = t_threads[l0 + j].wval;
                    }
                released = true;
            }
        }
        if (!released) {
            char what[512];
            int off = 0;
            for (int w = 0; w < nw && off < 400; w++) {
                const thread_state *a = &t_threads[w * 32];
                off += snprintf(what + off, sizeof what - off, " warp %d lane 0 %s;", w,
                                s_state_name(a->state));
            }
            s_fault(cudaErrorLaunchFailure,
                    "%s: deadlock in block %u,%u,%u (threads wait for others that never arrive):%s",
                    t_kernel, cur_block->bid.x, cur_block->bid.y, cur_block->bid.z, what);
            return false;
        }
    }
}

void run_kernel(const launch_cfg &c, const char *name, const std::function<void()> &body) {
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (g_sticky != cudaSuccess) { /* a faulted context runs nothing more */
            g_last = g_sticky;
            return;
        }
    }
    const dim3 g = c.grid, b = c.block;
    const unsigned long long nt = (unsigned long long)b.x * b.y * b.z;
    if (!g.x || !g.y || !g.z || !b.x || !b.y || !b.z || nt > 1024 || b.z > 64 ||
        g.x > 2147483647u || g.y > 65535 || g.z > 65535) {
        fprintf(stderr, "cuda-emu: %s: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n",
                name, g.x, g.y, g.z, b.x, b.y, b.z);
        std::lock_guard<std::mutex> lk(g_mu);
        g_last = cudaErrorInvalidConfiguration;
        return;
    }
    if (c.smem > 48 * 1024) {
        fprintf(stderr, "cuda-emu: %s: %zu bytes of dynamic shared memory (more than 48 KiB needs "
                        "cudaFuncSetAttribute)\n", name, c.smem);
        std::lock_guard<std::mutex> lk(g_mu);
        g_last = cudaErrorInvalidValue;
        return;
    }
    std::lock_guard<std::mutex> klk(g_kernel_mu);
    const int n = (int)nt;
    if ((int)t_threads.size() < n) {
        size_t old = t_threads.size();
        t_threads.resize(n);
        for (size_t i = old; i < (size_t)n; i++) {
            char *m = (char *)mmap(nullptr, STACK + GUARD, PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
            if (m == MAP_FAILED) {
                fprintf(stderr, "cuda-emu: cannot map a fiber stack\n");
                abort();
            }
            mprotect(m, GUARD, PROT_NONE); /* overflow faults instead of corrupting a neighbour */
            t_threads[i].stack = m + GUARD;
        }
    }
    for (int i = 0; i < n; i++) {
        thread_state *t = &t_threads[i];
        t->tid = uint3{(unsigned)(i % b.x), (unsigned)(i / b.x % b.y), (unsigned)(i / (b.x * b.y))};
        t->lane = (unsigned)(i & 31);
        t->warp = (unsigned)(i >> 5);
    }
    std::vector<unsigned char> smem(c.smem ? c.smem + 16 : 16);
    block_state bs;
    bs.bdim = b;
    bs.gdim = g;
    bs.dyn_smem = (void *)(((uintptr_t)smem.data() + 15) & ~(uintptr_t)15);
    t_body = &body;
    t_kernel = name;
    t_abort = false;
    cur_block = &bs;
    /* the blocks in the schedule's order too (forward: x fastest; reverse; shuffle: i -> (a i +
     * c) mod nb with a random a prime to nb), as a GPU may run them in any order */
    const uint64_t nb = (uint64_t)g.x * g.y * g.z;
    uint64_t ba = 1, bc = 0;
    if (s_schedule() == 2 && nb > 1) {
        do ba = 1 + s_rand() % (nb - 1);
        while (std::gcd(ba, nb) != 1);
        bc = s_rand() % nb;
    }
    for (uint64_t k = 0; k < nb; k++) {
        const uint64_t i = s_schedule() == 1   ? nb - 1 - k
                           : s_schedule() == 2 ? (uint64_t)(((unsigned __int128)ba * k + bc) % nb)
                                               : k;
        bs.bid = uint3{(unsigned)(i % g.x), (unsigned)(i / g.x % g.y), (unsigned)(i / g.x / g.y)};
        if (c.smem) memset(smem.data(), 0xff, smem.size()); /* uninitialised: NaN */
        s_poison_shared();
        if (!s_run_block(n)) {
            for (int j = 0; j < n; j++) t_threads[j].stale = true;
            break;
        }
    }
    cur_block = nullptr;
    cur_thread = nullptr;
    t_abort = false;
}

} // namespace tdemu

using namespace tdemu;

/* --- runtime API ---------------------------------------------------------------------------- */

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorUnknown: return "cudaErrorUnknown";
    }
    return "cudaErrorUnknown";
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorUnknown: break;
    }
    return "unknown error";
}

cudaError_t cudaGetLastError(void) {
    std::lock_guard<std::mutex> lk(g_mu);
    cudaError_t e = g_last;
    g_last = g_sticky; /* a sticky error stays */
    return e;
}
cudaError_t cudaPeekAtLastError(void) {
    std::lock_guard<std::mutex> lk(g_mu);
    return g_last;
}

cudaError_t cudaGetDeviceCount(int *n) {
    if (!n) return s_ret(cudaErrorInvalidValue);
    *n = s_devices();
    return *n ? cudaSuccess : s_ret(cudaErrorNoDevice);
}
cudaError_t cudaSetDevice(int d) {
    if (d < 0 || d >= s_devices()) return s_ret(cudaErrorInvalidDevice);
    t_device = d;
    return s_ret(cudaSuccess);
}
cudaError_t cudaGetDevice(int *d) {
    if (!d) return s_ret(cudaErrorInvalidValue);
    *d = t_device;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (!p) return s_ret(cudaErrorInvalidValue);
    if (d < 0 || d >= s_devices()) return s_ret(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "tandem CUDA emulator (CPU) #%d", d);
    p->totalGlobalMem = s_total();
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = p->maxGridSize[2] = 65535;
    p->multiProcessorCount = 4;
    p->maxThreadsPerMultiProcessor = 2048;
    p->major = 9, p->minor = 0;
    return cudaSuccess;
}
/* --- asynchrony with pinned host memory ----------------------------------------------------- */

/* Kernels and copies run when they are enqueued, except what the host could observe out of
 * order: a cudaMemcpyAsync into pinned (cudaMallocHost) memory lands there only when its stream
 * is synchronised (until then the range reads 0xff bytes), and one out of pinned memory must find
 * its source unchanged when its stream is synchronised (else the GPU might have copied either
 * value: reported as an error). Pageable copies are synchronous for the host, as in CUDA. */
struct pending_copy {
    void *host;
    size_t n;
    std::vector<unsigned char> data; /* device to host: the bytes to land */
    uint64_t hash;                   /* host to device: the source's hash at enqueue */
    bool to_host;
};
struct tdemu_stream {
    unsigned flags;
    std::vector<pending_copy> q;
};
struct tdemu_event {
    double t;
    cudaStream_t stream;
};
static std::mutex g_async_mu;
static tdemu_stream g_legacy{0, {}}; /* stream 0 */
static std::vector<tdemu_stream *> g_streams;

static uint64_t s_hash(const void *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    return h;
}
static bool s_is_pinned(const void *p, size_t n) {
    std::lock_guard<std::mutex> lk(g_mu);
    return s_inside(g_host, p, n);
}
/* completes the stream's pending copies (g_async_mu held) */
static void s_flush_locked(tdemu_stream *st) {
    for (auto &c : st->q) {
        if (c.to_host) memcpy(c.host, c.data.data(), c.n);
        else if (s_hash(c.host, c.n) != c.hash) {
            fprintf(stderr,
                    "cuda-emu: host race: the pinned source of a cudaMemcpyAsync (%zu bytes at %p) "
                    "changed before its stream was synchronised\n",
                    c.n, c.host);
            std::lock_guard<std::mutex> lk(g_mu);
            if (g_sticky == cudaSuccess) g_sticky = cudaErrorUnknown;
            g_last = g_sticky;
        }
    }
    st->q.clear();
}
static void s_flush(cudaStream_t s) {
    std::lock_guard<std::mutex> lk(g_async_mu);
    if (!s) s_flush_locked(&g_legacy);
    for (auto *st : g_streams) /* (an event's stream may have been destroyed since) */
        if (st == s) s_flush_locked(st);
}
/* every stream (all = true), or what a blocking call on the legacy stream waits for: the legacy
 * stream and the streams created without cudaStreamNonBlocking */
static void s_flush_all(bool all) {
    std::lock_guard<std::mutex> lk(g_async_mu);
    s_flush_locked(&g_legacy);
    for (auto *st : g_streams)
        if (all || !(st->flags & cudaStreamNonBlocking)) s_flush_locked(st);
}

cudaError_t cudaDeviceSynchronize(void) {
    s_flush_all(true);
    return s_ret(cudaSuccess);
}

cudaError_t cudaMalloc(void **p, size_t n) {
    if (!p) return s_ret(cudaErrorInvalidValue);
    *p = nullptr;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (g_sticky != cudaSuccess) return g_sticky;
        if (n > s_total() - g_used) {
            g_last = cudaErrorMemoryAllocation;
            return cudaErrorMemoryAllocation;
        }
    }
    void *m = nullptr;
    if (posix_memalign(&m, 256, n ? n : 1)) return s_ret(cudaErrorMemoryAllocation);
    memset(m, 0xff, n); /* uninitialised device memory reads as NaN */
    std::lock_guard<std::mutex> lk(g_mu);
    g_dev[(uintptr_t)m] = n;
    g_used += n;
    *p = m;
    return cudaSuccess;
}
/* cudaFree / cudaFreeHost (WHAT) of p, an allocation of table m (NOT: what else p is): both
 * synchronise the device first; freeing a device allocation gives its bytes back to g_used. */
static cudaError_t s_free_from(std::map<uintptr_t, size_t> &m, void *p, const char *what,
                               const char *not_one) {
    if (!p) return s_ret(cudaSuccess);
    s_flush_all(true);
    std::lock_guard<std::mutex> lk(g_mu);
    auto it = m.find((uintptr_t)p);
    if (it == m.end()) {
        fprintf(stderr, "cuda-emu: %s of %p, %s\n", what, p, not_one);
        g_last = cudaErrorInvalidValue;
        return cudaErrorInvalidValue;
    }
    if (&m == &g_dev) g_used -= it->second;
    m.erase(it);
    free(p);
    return g_sticky;
}
cudaError_t cudaFree(void *p) {
    return s_free_from(g_dev, p, "cudaFree", "not a device allocation");
}
cudaError_t cudaMallocHost(void **p, size_t n) {
    if (!p) return s_ret(cudaErrorInvalidValue);
    void *m = nullptr;
    if (posix_memalign(&m, 64, n ? n : 1)) return s_ret(cudaErrorMemoryAllocation);
    memset(m, 0xff, n);
    std::lock_guard<std::mutex> lk(g_mu);
    g_host[(uintptr_t)m] = n;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFreeHost(void *p) {
    return s_free_from(g_host, p, "cudaFreeHost", "not from cudaMallocHost");
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b) {
    std::lock_guard<std::mutex> lk(g_mu);
    if (free_b) *free_b = s_total() - g_used;
    if (total_b) *total_b = s_total();
    return g_sticky;
}

static cudaError_t s_copy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (g_sticky != cudaSuccess) return g_sticky;
    }
    if ((unsigned)kind > (unsigned)cudaMemcpyDefault) {
        fprintf(stderr, "cuda-emu: cudaMemcpy with kind %d, not a cudaMemcpyKind\n", (int)kind);
        return s_ret(cudaErrorInvalidMemcpyDirection);
    }
    if (!n) return cudaSuccess;
    if (!dst || !src) return s_ret(cudaErrorInvalidValue);
    const bool dd = s_is_dev(dst, n), sd = s_is_dev(src, n);
    bool ok;
    switch (kind) {
    case cudaMemcpyHostToDevice: ok = dd && !s_touches_dev(src); break;
    case cudaMemcpyDeviceToHost: ok = sd && !s_touches_dev(dst); break;
    case cudaMemcpyDeviceToDevice: ok = dd && sd; break;
    case cudaMemcpyHostToHost: ok = !s_touches_dev(dst) && !s_touches_dev(src); break;
    default: /* cudaMemcpyDefault: the pointers say where they are */
        ok = (dd || !s_touches_dev(dst)) && (sd || !s_touches_dev(src));
        break;
    }
    if (!ok) {
        fprintf(stderr, "cuda-emu: cudaMemcpy of %zu bytes %p -> %p (kind %d): a range is outside "
                        "any device allocation or on the wrong side\n", n, src, dst, (int)kind);
        return s_ret(cudaErrorInvalidValue);
    }
    const char *d = (const char *)dst, *s = (const char *)src;
    if ((d < s + n && s < d + n) && d != s) {
        fprintf(stderr, "cuda-emu: cudaMemcpy between overlapping ranges (undefined on a GPU)\n");
        return s_ret(cudaErrorInvalidValue);
    }
    memcpy(dst, src, n);
    return cudaSuccess;
}
/* blocking, on the legacy stream: waits for it and the blocking streams, not for work queued on a
 * cudaStreamNonBlocking stream */
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    s_flush_all(false);
    return s_copy(dst, src, n, kind);
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t s) {
    const bool to_host = n && dst && src && s_is_dev(src, n) && !s_touches_dev(dst);
    const bool from_pinned = n && dst && src && s_is_dev(dst, n) && s_is_pinned(src, n);
    const bool to_pinned = to_host && s_is_pinned(dst, n);
    if (to_host && !to_pinned) s_flush(s); /* to pageable memory: returns once the copy is done */
    cudaError_t e = s_copy(dst, src, n, kind);
    if (e != cudaSuccess || !(to_pinned || from_pinned)) return e;
    pending_copy c{dst, n, {}, 0, to_pinned};
    if (to_pinned) {
        c.data.assign((const unsigned char *)dst, (const unsigned char *)dst + n);
        memset(dst, 0xff, n); /* not there yet */
    } else {
        c.host = (void *)src;
        c.hash = s_hash(src, n);
    }
    std::lock_guard<std::mutex> lk(g_async_mu);
    (s ? s : &g_legacy)->q.push_back(std::move(c));
    return e;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    s_flush_all(false);
    return cudaMemsetAsync(p, v, n, nullptr);
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (g_sticky != cudaSuccess) return g_sticky; /* a faulted context runs nothing more */
    }
    if (!n) return s_ret(cudaSuccess);
    if (!s_is_dev(p, n)) {
        fprintf(stderr, "cuda-emu: cudaMemset of %zu bytes at %p, outside any device allocation\n",
                n, p);
        return s_ret(cudaErrorInvalidValue);
    }
    memset(p, v, n);
    return s_ret(cudaSuccess);
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    if (!s) return s_ret(cudaErrorInvalidValue);
    *s = new tdemu_stream{flags, {}};
    std::lock_guard<std::mutex> lk(g_async_mu);
    g_streams.push_back(*s);
    return s_ret(cudaSuccess);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return s_ret(cudaErrorInvalidResourceHandle);
    std::lock_guard<std::mutex> lk(g_async_mu);
    s_flush_locked(s); /* its work still completes */
    for (size_t i = 0; i < g_streams.size(); i++)
        if (g_streams[i] == s) g_streams.erase(g_streams.begin() + (long)i);
    delete s;
    return s_ret(cudaSuccess);
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    s_flush(s);
    return s_ret(cudaSuccess);
}

static double s_now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    if (!e) return s_ret(cudaErrorInvalidValue);
    *e = new tdemu_event{-1, nullptr};
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return s_ret(cudaErrorInvalidResourceHandle);
    e->t = s_now_ms();
    e->stream = s;
    return s_ret(cudaSuccess);
}
/* completes the event's stream (all of it: a superset of the work before the event) */
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    if (e) s_flush(e->stream);
    return s_ret(e ? cudaSuccess : cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    if (!ms || !a || !b || a->t < 0 || b->t < 0) return s_ret(cudaErrorInvalidResourceHandle);
    *ms = (float)(b->t - a->t);
    return s_ret(cudaSuccess);
}

/* --- cuBLAS --------------------------------------------------------------------------------- */

struct tdemu_blas {
    cudaStream_t stream;
    cublasMath_t math;
};
cublasStatus_t cublasCreate(cublasHandle_t *h) {
    if (!h) return CUBLAS_STATUS_INVALID_VALUE;
    *h = new tdemu_blas{nullptr, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = m;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

static size_t s_dt_size(cudaDataType_t t) {
    return t == CUDA_R_32F ? 4 : t == CUDA_R_64F ? 8 : t == CUDA_R_16F || t == CUDA_R_16BF ? 2 : 0;
}
/* how a tensor-core mode rounds FP32 inputs before the products */
enum { IN_EXACT, IN_TF32, IN_F16, IN_BF16 };
static float s_round_in(float x, int mode) {
    switch (mode) {
    case IN_TF32: { /* 10 mantissa bits, to nearest (ties away, as cvt.rna.tf32.f32) */
        unsigned u = __float_as_uint(x);
        if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & ~0x1fffu;
        return __uint_as_float(u);
    }
    case IN_F16: return __half2float(__float2half_rn(x));
    case IN_BF16: return __bfloat162float(__float2bfloat16_rn(x));
    }
    return x;
}
static double s_load(const void *p, cudaDataType_t t, size_t i, int in = IN_EXACT) {
    switch (t) {
    case CUDA_R_32F: return s_round_in(((const float *)p)[i], in);
    case CUDA_R_64F: return ((const double *)p)[i];
    case CUDA_R_16F: return __half2float(((const __half *)p)[i]);
    default: return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    }
}
static void s_store(void *p, cudaDataType_t t, size_t i, double v) {
    switch (t) {
    case CUDA_R_32F: ((float *)p)[i] = (float)v; break;
    case CUDA_R_64F: ((double *)p)[i] = v; break;
    case CUDA_R_16F: ((__half *)p)[i] = __float2half_rn((float)v); break;
    default: ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn((float)v); break;
    }
}

/* C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C, column-major, as the cuBLAS documentation
 * defines it; operands are checked to lie inside device allocations. Sums in double. */
static cublasStatus_t s_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                             int n, int k, double alpha, const void *A, cudaDataType_t at, int lda,
                             const void *B, cudaDataType_t bt, int ldb, double beta, void *C,
                             cudaDataType_t ct, int ldc, int in, const char *fn) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T && ta != CUBLAS_OP_C) ||
        (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T && tb != CUBLAS_OP_C) || m < 0 || n < 0 || k < 0 ||
        lda < (ta == CUBLAS_OP_N ? (m > 1 ? m : 1) : (k > 1 ? k : 1)) ||
        ldb < (tb == CUBLAS_OP_N ? (k > 1 ? k : 1) : (n > 1 ? n : 1)) || ldc < (m > 1 ? m : 1)) {
        fprintf(stderr, "cuda-emu: %s: invalid value (ta %d tb %d m %d n %d k %d lda %d ldb %d ldc %d)\n",
                fn, ta, tb, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    if (!m || !n) return CUBLAS_STATUS_SUCCESS;
    {
        std::lock_guard<std::mutex> lk(g_mu);
        if (g_sticky != cudaSuccess) return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    const size_t ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    const size_t br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    const size_t aext = k ? ((ac - 1) * (size_t)lda + ar) * s_dt_size(at) : 0;
    const size_t bext = k ? ((bc - 1) * (size_t)ldb + br) * s_dt_size(bt) : 0;
    const size_t cext = ((size_t)(n - 1) * ldc + m) * s_dt_size(ct);
    if ((aext && !s_is_dev(A, aext)) || (bext && !s_is_dev(B, bext)) || !s_is_dev(C, cext)) {
        s_fault(cudaErrorIllegalAddress,
                "%s: an operand reaches outside its device allocation (A %p %zu bytes, B %p %zu "
                "bytes, C %p %zu bytes; m %d n %d k %d lda %d ldb %d ldc %d)",
                fn, A, aext, B, bext, C, cext, m, n, k, lda, ldb, ldc);
        return CUBLAS_STATUS_EXECUTION_FAILED;
    }
    /* op(B) columns and op(A) rows as doubles, then plain dot products */
    std::vector<double> bcol((size_t)n * k), arow(k);
    for (int j = 0; j < n; j++)
        for (int p = 0; p < k; p++)
            bcol[(size_t)j * k + p] =
                s_load(B, bt, tb == CUBLAS_OP_N ? (size_t)j * ldb + p : (size_t)p * ldb + j, in);
    for (int i = 0; i < m; i++) {
        for (int p = 0; p < k; p++)
            arow[p] =
                s_load(A, at, ta == CUBLAS_OP_N ? (size_t)p * lda + i : (size_t)i * lda + p, in);
        for (int j = 0; j < n; j++) {
            const double *b = &bcol[(size_t)j * k];
            double s = 0;
            for (int p = 0; p < k; p++) s += arow[p] * b[p];
            const size_t ci = (size_t)j * ldc + i;
            s_store(C, ct, ci, alpha * s + (beta != 0 ? beta * s_load(C, ct, ci) : 0.0));
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    /* CUBLAS_TF32_TENSOR_OP_MATH lets SGEMM round its inputs to TF32 */
    const int in = h && h->math == CUBLAS_TF32_TENSOR_OP_MATH ? IN_TF32 : IN_EXACT;
    return s_gemm(h, ta, tb, m, n, k, *alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F, ldb, *beta, C,
                  CUDA_R_32F, ldc, in, "cublasSgemm");
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType_t at,
                            int lda, const void *B, cudaDataType_t bt, int ldb, const void *beta,
                            void *C, cudaDataType_t ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    if (!alpha || !beta) return CUBLAS_STATUS_INVALID_VALUE;
    /* the real-type combinations the cuBLAS documentation lists for FP32 compute: with
     * CUBLAS_COMPUTE_32F(_PEDANTIC) A = B in 32F, 16F or 16BF and C 32F or A's type; the
     * CUBLAS_COMPUTE_32F_FAST_* types take 32F operands only (and round them on the way in) */
    const bool fast = compute == CUBLAS_COMPUTE_32F_FAST_16F ||
                      compute == CUBLAS_COMPUTE_32F_FAST_16BF ||
                      compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    const bool types =
        fast ? at == CUDA_R_32F && bt == CUDA_R_32F && ct == CUDA_R_32F
             : (compute == CUBLAS_COMPUTE_32F || compute == CUBLAS_COMPUTE_32F_PEDANTIC) &&
                   at == bt && (at == CUDA_R_32F || at == CUDA_R_16F || at == CUDA_R_16BF) &&
                   (ct == CUDA_R_32F || ct == at);
    if (!types) {
        fprintf(stderr, "cuda-emu: cublasGemmEx: unsupported types (A %d B %d C %d compute %d)\n",
                at, bt, ct, compute);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    const int in = compute == CUBLAS_COMPUTE_32F_FAST_TF32   ? IN_TF32
                   : compute == CUBLAS_COMPUTE_32F_FAST_16F  ? IN_F16
                   : compute == CUBLAS_COMPUTE_32F_FAST_16BF ? IN_BF16
                   : compute == CUBLAS_COMPUTE_32F && at == CUDA_R_32F && h &&
                           h->math == CUBLAS_TF32_TENSOR_OP_MATH
                       ? IN_TF32
                       : IN_EXACT;
    return s_gemm(h, ta, tb, m, n, k, *(const float *)alpha, A, at, lda, B, bt, ldb,
                  *(const float *)beta, C, ct, ldc, in, "cublasGemmEx");
}

/* Clears the sticky error and frees every allocation: only for the emulator's own tests, which
 * provoke faults on purpose (a real CUDA context would have to be torn down). */
extern "C" void tdemu_reset_for_tests(void) {
    {
        std::lock_guard<std::mutex> lk(g_async_mu);
        g_legacy.q.clear();
        for (auto *st : g_streams) st->q.clear();
    }
    std::lock_guard<std::mutex> lk(g_mu);
    for (auto &a : g_dev) free((void *)a.first);
    g_dev.clear();
    g_used = 0;
    g_sticky = g_last = cudaSuccess;
}

/* Sets the schedule (0 forward, 1 reverse, 2 shuffle) over TD_CUDA_EMU_SCHEDULE: selftest only. */
extern "C" void tdemu_set_schedule_for_tests(int mode) { g_schedule = mode; }

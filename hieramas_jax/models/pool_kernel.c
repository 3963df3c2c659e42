/* The GCN fast path's per-query part on a cached shared pool, in C on the calling thread plus a small
 * pool of worker threads (hieramas_jax/models/native_pool.py compiles and calls it).
 *
 * Why: a cached B=1, K=50 call is 4 MFLOP. Through XLA it pays a dispatch, a hand-off to a worker thread
 * and the caller's wake-up (tens of microseconds each on a loaded machine) and runs on one core; here the
 * caller and spinning workers split it with no hand-off cost beyond an atomic store.
 *
 * The same function as gcn_fast.score_shared_pool, per (query b, graph k) pair:
 *   h = relu(role_term[k] + col_sum[k] * u[b])            u = query @ query_kernel (role_term has in_bias)
 *   per hidden layer l: h = relu(S_k^T (h W_l) + col_sum[k] * bias_l)    (the last one mean-pooled)
 *   logit = relu(pooled @ head_kernel + head_bias) . out_kernel + out_bias
 *
 * Shapes are compile-time constants (-D): NUM_ROLES, HIDDEN, MLP, NUM_LAYERS (hidden layers; 0 pools h).
 * Written with GCC/Clang vector extensions, so it builds for any target; -march=native picks the width.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if !defined(NUM_ROLES) || !defined(HIDDEN) || !defined(MLP) || !defined(NUM_LAYERS)
#error "compile with -DNUM_ROLES=.. -DHIDDEN=.. -DMLP=.. -DNUM_LAYERS=.."
#endif

/* Vector width in floats: the widest the target has that divides both HIDDEN and MLP. */
#if defined(__AVX512F__) && HIDDEN % 16 == 0 && MLP % 16 == 0
#define VW 16
#define VREGS 32
#elif (defined(__AVX__) || defined(__AVX512F__)) && HIDDEN % 8 == 0 && MLP % 8 == 0
#define VW 8
#define VREGS 16
#elif HIDDEN % 4 == 0 && MLP % 4 == 0
#define VW 4
#define VREGS 16
#else
#define VW 1
#define VREGS 16
#endif
typedef float vf __attribute__((vector_size(VW * 4), aligned(4)));
typedef int vi __attribute__((vector_size(VW * 4), aligned(4)));
#define HV (HIDDEN / VW) /* vectors per hidden row */
#define MV (MLP / VW)    /* vectors per head row */

/* Register blocking of the [rows, H] x [H, H] transform: COL_BLOCK vectors of ROW_BLOCK rows accumulate in
 * registers (half the register file), each W row loaded once per block of rows. */
#if HV % 4 == 0
#define COL_BLOCK 4
#elif HV % 3 == 0
#define COL_BLOCK 3
#elif HV % 2 == 0
#define COL_BLOCK 2
#else
#define COL_BLOCK 1
#endif
#define ROW_BLOCK_MAX (VREGS / 2 / COL_BLOCK)
#define ROW_BLOCK (ROW_BLOCK_MAX < 1 ? 1 : (ROW_BLOCK_MAX > 8 ? 8 : ROW_BLOCK_MAX))
#define ROWS_PADDED ((NUM_ROLES + ROW_BLOCK - 1) / ROW_BLOCK * ROW_BLOCK)

static inline vf vload(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf vrelu(vf v) { vf zero = {0}; vi keep = v > zero; return (vf)((vi)v & keep); }
static inline float vsum(vf v) { float s = 0; for (int i = 0; i < VW; i++) s += v[i]; return s; }

typedef struct {
  int64_t num_graphs;         /* K */
  int64_t query_dim;          /* D */
  const float *query_kernel;  /* [D, H] */
  const float *role_term;     /* [K, N, H]: S^T role_part + in_bias */
  const float *col_sum;       /* [K, N] */
  const float *s_t;           /* [K, N, N]: S^T, row j = the weights into role j */
  const float *layer_kernel;  /* [L, H, H] */
  const float *layer_bias;    /* [L, H] */
  const float *weights;       /* [N]: mean-pooling weights */
  const float *head_kernel;   /* [H, M]: projection and first head layer fused */
  const float *head_bias;     /* [M] */
  const float *out_kernel;    /* [M] */
  float out_bias;
} model_t;

/* z[ROWS_PADDED, H] = h[ROWS_PADDED, H] @ w[H, H] */
static void transform(const float *restrict h, const float *restrict w, float *restrict z) {
  for (int c0 = 0; c0 < HV; c0 += COL_BLOCK) {
    for (int r0 = 0; r0 < ROWS_PADDED; r0 += ROW_BLOCK) {
      vf acc[ROW_BLOCK][COL_BLOCK];
#pragma GCC unroll 64
      for (int r = 0; r < ROW_BLOCK; r++)
#pragma GCC unroll 64
        for (int c = 0; c < COL_BLOCK; c++) acc[r][c] = (vf){0};
      for (int k = 0; k < HIDDEN; k++) {
        vf wrow[COL_BLOCK];
#pragma GCC unroll 64
        for (int c = 0; c < COL_BLOCK; c++) wrow[c] = vload(w + k * HIDDEN + (c0 + c) * VW);
#pragma GCC unroll 64
        for (int r = 0; r < ROW_BLOCK; r++) {
          float a = h[(r0 + r) * HIDDEN + k];
#pragma GCC unroll 64
          for (int c = 0; c < COL_BLOCK; c++) acc[r][c] += a * wrow[c];
        }
      }
#pragma GCC unroll 64
      for (int r = 0; r < ROW_BLOCK; r++)
#pragma GCC unroll 64
        for (int c = 0; c < COL_BLOCK; c++) vstore(z + (r0 + r) * HIDDEN + (c0 + c) * VW, acc[r][c]);
    }
  }
}

static float score_pair(const model_t *m, int64_t k, const float *u) {
  /* Rows past NUM_ROLES are padding for the register blocking: zero, never read back. */
  float h[ROWS_PADDED * HIDDEN] __attribute__((aligned(64)));
  float z[ROWS_PADDED * HIDDEN] __attribute__((aligned(64)));
  const float *role_term = m->role_term + k * NUM_ROLES * HIDDEN;
  const float *col_sum = m->col_sum + k * NUM_ROLES;
  const float *s_t = m->s_t + k * NUM_ROLES * NUM_ROLES;
  for (int n = 0; n < NUM_ROLES; n++)
    for (int c = 0; c < HV; c++)
      vstore(h + n * HIDDEN + c * VW, vrelu(vload(role_term + n * HIDDEN + c * VW) + col_sum[n] * vload(u + c * VW)));
  if (ROWS_PADDED > NUM_ROLES) memset(h + NUM_ROLES * HIDDEN, 0, (ROWS_PADDED - NUM_ROLES) * HIDDEN * sizeof(float));
  vf pooled[HV];
  for (int c = 0; c < HV; c++) pooled[c] = (vf){0};
  if (NUM_LAYERS == 0)
    for (int j = 0; j < NUM_ROLES; j++)
      for (int c = 0; c < HV; c++) pooled[c] += m->weights[j] * vload(h + j * HIDDEN + c * VW);
  for (int l = 0; l < NUM_LAYERS; l++) {
    transform(h, m->layer_kernel + (int64_t)l * HIDDEN * HIDDEN, z);
    const float *bias = m->layer_bias + l * HIDDEN;
    for (int j = 0; j < NUM_ROLES; j++) {
      vf acc[HV];
      for (int c = 0; c < HV; c++) acc[c] = col_sum[j] * vload(bias + c * VW);
      for (int i = 0; i < NUM_ROLES; i++) {
        float s = s_t[j * NUM_ROLES + i];
        for (int c = 0; c < HV; c++) acc[c] += s * vload(z + i * HIDDEN + c * VW);
      }
      if (l == NUM_LAYERS - 1) {
        for (int c = 0; c < HV; c++) pooled[c] += m->weights[j] * vrelu(acc[c]);
      } else {
        for (int c = 0; c < HV; c++) vstore(h + j * HIDDEN + c * VW, vrelu(acc[c]));
      }
    }
  }
  float p[HIDDEN] __attribute__((aligned(64)));
  for (int c = 0; c < HV; c++) vstore(p + c * VW, pooled[c]);
  vf hidden[MV];
  for (int c = 0; c < MV; c++) hidden[c] = vload(m->head_bias + c * VW);
  for (int i = 0; i < HIDDEN; i++)
    for (int c = 0; c < MV; c++) hidden[c] += p[i] * vload(m->head_kernel + i * MLP + c * VW);
  vf logit = {0};
  for (int c = 0; c < MV; c++) logit += vrelu(hidden[c]) * vload(m->out_kernel + c * VW);
  return vsum(logit) + m->out_bias;
}

/* u[b, c0*VW : c1*VW] = query[b] @ query_kernel[:, those columns]: two accumulator sets break the FMA chain. */
static void project(const model_t *m, const float *q, float *u, int c0, int c1) {
  for (int c = c0; c < c1; c++) {
    vf even = {0}, odd = {0};
    int64_t d = 0;
    for (; d + 1 < m->query_dim; d += 2) {
      even += q[d] * vload(m->query_kernel + d * HIDDEN + c * VW);
      odd += q[d + 1] * vload(m->query_kernel + (d + 1) * HIDDEN + c * VW);
    }
    if (d < m->query_dim) even += q[d] * vload(m->query_kernel + d * HIDDEN + c * VW);
    vstore(u + c * VW, even + odd);
  }
}

/* ------------------------------------------------------------------------------------------------------
 * Workers. A call is two phases of units: the query projections, then the (query, graph) pairs. Each thread
 * starts with a contiguous range of each phase's units (the caller's first) and claims them from the front;
 * a thread done with its own range takes units from the back of the others'. So a late or slow thread (a
 * worker waking from sleep, a vCPU the host runs at half speed, a busy neighbour) costs the call only the unit
 * it holds: the caller waits for nobody's untouched share. Workers spin on a generation counter for a short
 * while after each call (back-to-back calls find them awake) and then sleep on a condition variable.
 * ------------------------------------------------------------------------------------------------------ */
#define MAX_THREADS 256
typedef struct {
  const model_t *m;
  const float *query;
  float *u;
  float *out;
  int64_t batch;
  int64_t proj_chunks;     /* projection units per query: 1 (whole queries) or HV (one column vector each) */
  int64_t query_unit_size; /* with whole queries, consecutive queries per unit: 1 unless they exceed UNIT_MASK */
  int64_t proj_units;
  int64_t pair_unit_size;  /* consecutive pairs per unit (graph-major order): 1 unless they exceed UNIT_MASK */
  int64_t pair_units;
} job_t;

/* A thread's range [next, end) of one phase's units, packed with the call's epoch (the generation's low bits)
 * in one word, so a claim made for a call that is over fails: epoch (20 bits) | next (22) | end (22). */
#define UNIT_BITS 22
#define UNIT_MASK ((1ull << UNIT_BITS) - 1)
#define EPOCH_MASK ((1ull << (64 - 2 * UNIT_BITS)) - 1)
typedef struct {
  _Atomic uint64_t word;
  char pad[64 - sizeof(uint64_t)];
} range_t;

static job_t g_job;
static range_t g_proj_ranges[MAX_THREADS] __attribute__((aligned(64)));
static range_t g_pair_ranges[MAX_THREADS] __attribute__((aligned(64)));
/* Units done in this call: each thread adds its count once per phase; a phase is over when they sum to its units. */
typedef struct {
  _Atomic int64_t value;
  char pad[64 - sizeof(int64_t)];
} counter_t;
static counter_t g_proj_done __attribute__((aligned(64))), g_pairs_done __attribute__((aligned(64)));
static atomic_uint g_generation;
static atomic_int g_sleepers;
static pthread_mutex_t g_sleep_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_wake = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t g_call_mu = PTHREAD_MUTEX_INITIALIZER; /* one call at a time */
static int g_threads = 0;    /* requested, caller included */
static int g_workers = 0;    /* running worker threads */
static int g_started = 0;
static unsigned g_start_generation = 0;
static double g_spin_s = 200e-6;

static uint64_t range_word(uint64_t epoch, int64_t next, int64_t end) {
  return (epoch << (2 * UNIT_BITS)) | ((uint64_t)next << UNIT_BITS) | (uint64_t)end;
}

/* The next unit of a range, claimed from its front (its owner) or its back (another thread); -1 when the range
 * is empty or belongs to another call. */
static int64_t claim(range_t *range, uint64_t epoch, int from_back) {
  uint64_t word = atomic_load_explicit(&range->word, memory_order_relaxed);
  for (;;) {
    const int64_t next = (int64_t)((word >> UNIT_BITS) & UNIT_MASK), end = (int64_t)(word & UNIT_MASK);
    if ((word >> (2 * UNIT_BITS)) != epoch || next >= end) return -1;
    const uint64_t claimed = from_back ? word - 1 : word + (1ull << UNIT_BITS);
    if (atomic_compare_exchange_weak(&range->word, &word, claimed)) return from_back ? end - 1 : next;
  }
}

/* Denormals flushed to zero while a part runs, as XLA's CPU runtime does: a pool whose activations reach
 * denormal values otherwise runs 1.5x slower (microcode assists), and scores then match XLA's. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
typedef unsigned int fp_state_t;
static fp_state_t flush_denormals(void) {
  const fp_state_t old = _mm_getcsr();
  _mm_setcsr(old | 0x8040); /* FTZ | DAZ */
  return old;
}
static void restore_fp(fp_state_t old) { _mm_setcsr(old); }
#elif defined(__aarch64__)
typedef uint64_t fp_state_t;
static fp_state_t flush_denormals(void) {
  fp_state_t old;
  __asm__ volatile("mrs %0, fpcr" : "=r"(old));
  const fp_state_t flushed = old | (1ull << 24); /* FZ */
  __asm__ volatile("msr fpcr, %0" : : "r"(flushed));
  return old;
}
static void restore_fp(fp_state_t old) { __asm__ volatile("msr fpcr, %0" : : "r"(old)); }
#else
typedef int fp_state_t;
static fp_state_t flush_denormals(void) { return 0; }
static void restore_fp(fp_state_t old) { (void)old; }
#endif

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void project_unit(int64_t unit) {
  const job_t *job = &g_job; /* read after the claim: its epoch says this call's job is in place */
  const int64_t dim = job->m->query_dim;
  if (job->proj_chunks > 1) {
    const int64_t b = unit / job->proj_chunks, c = unit % job->proj_chunks;
    project(job->m, job->query + b * dim, job->u + b * HIDDEN, (int)c, (int)c + 1);
    return;
  }
  const int64_t first = unit * job->query_unit_size;
  const int64_t last = first + job->query_unit_size < job->batch ? first + job->query_unit_size : job->batch;
  for (int64_t b = first; b < last; b++) project(job->m, job->query + b * dim, job->u + b * HIDDEN, 0, HV);
}

static void score_unit(int64_t unit) {
  const job_t *job = &g_job;
  const int64_t batch = job->batch, num_graphs = job->m->num_graphs, pairs = batch * num_graphs;
  const int64_t first = unit * job->pair_unit_size;
  const int64_t last = first + job->pair_unit_size < pairs ? first + job->pair_unit_size : pairs;
  for (int64_t p = first; p < last; p++) { /* graph-major: a graph's terms are read once for its queries */
    const int64_t k = p / batch, b = p % batch;
    job->out[b * num_graphs + k] = score_pair(job->m, k, job->u + b * HIDDEN);
  }
}

/* One phase on thread `self` of `threads`: its own range from the front, then the others' from the back.
 * Returns the units it ran. */
static int64_t run_phase(range_t *ranges, int self, int threads, uint64_t epoch, void (*run_unit)(int64_t)) {
  int64_t done = 0, unit;
  while ((unit = claim(&ranges[self], epoch, 0)) >= 0) {
    run_unit(unit);
    done++;
  }
  for (int i = 1; i < threads; i++) {
    range_t *other = &ranges[(self + i) % threads];
    while ((unit = claim(other, epoch, 1)) >= 0) {
      run_unit(unit);
      done++;
    }
  }
  return done;
}

/* Thread `self`'s part in the call of `generation` (the caller is thread 0). A worker that comes late finds a
 * later call's ranges (its claims fail) or the generation moved on (it stops waiting for the projections). */
static void run_call(int self, unsigned generation) {
  const fp_state_t fp_state = flush_denormals();
  const int threads = g_workers + 1;
  const uint64_t epoch = generation & EPOCH_MASK;
  const int64_t projected = run_phase(g_proj_ranges, self, threads, epoch, project_unit);
  if (projected > 0) atomic_fetch_add(&g_proj_done.value, projected);
  const int64_t proj_units = g_job.proj_units;
  while (atomic_load(&g_proj_done.value) < proj_units && atomic_load(&g_generation) == generation) cpu_relax();
  if (atomic_load(&g_generation) == generation) { /* else that call is over */
    const int64_t scored = run_phase(g_pair_ranges, self, threads, epoch, score_unit);
    if (scored > 0) atomic_fetch_add(&g_pairs_done.value, scored);
  }
  restore_fp(fp_state);
}

static void *worker_main(void *arg) {
  const int self = (int)(intptr_t)arg;
  unsigned seen = g_start_generation;
  for (;;) {
    double start = now_s();
    for (int spins = 1; atomic_load(&g_generation) == seen; spins++) {
      cpu_relax();
      if (spins % 256 == 0 && now_s() - start > g_spin_s) {
        pthread_mutex_lock(&g_sleep_mu);
        atomic_fetch_add(&g_sleepers, 1);
        while (atomic_load(&g_generation) == seen) pthread_cond_wait(&g_wake, &g_sleep_mu);
        atomic_fetch_sub(&g_sleepers, 1);
        pthread_mutex_unlock(&g_sleep_mu);
        start = now_s(); /* awake again: spin a while before sleeping */
      }
    }
    seen = atomic_load(&g_generation);
    run_call(self, seen);
  }
  return NULL;
}

static void start_workers(void) {
  g_started = 1;
  g_workers = 0;
  g_start_generation = atomic_load(&g_generation);
  for (int i = 1; i < g_threads && i < MAX_THREADS; i++) {
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (pthread_create(&thread, &attr, worker_main, (void *)(intptr_t)i) == 0) g_workers++;
    pthread_attr_destroy(&attr);
  }
}

/* fork(): the child has no workers; it starts its own on its first call. */
static void before_fork(void) { pthread_mutex_lock(&g_call_mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&g_call_mu); }
static void after_fork_child(void) {
  g_started = 0;
  g_workers = 0;
  atomic_store(&g_sleepers, 0);
  pthread_mutex_init(&g_sleep_mu, NULL);
  pthread_cond_init(&g_wake, NULL);
  pthread_mutex_unlock(&g_call_mu);
}

/* Threads (caller included) and the workers' spin time after a call; returns the thread count in use. */
int hieramas_configure(int threads, double spin_s) {
  static int registered = 0;
  pthread_mutex_lock(&g_call_mu);
  if (!registered) {
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    registered = 1;
  }
  if (!g_started) g_threads = threads < 1 ? 1 : (threads > MAX_THREADS ? MAX_THREADS : threads);
  g_spin_s = spin_s;
  const int in_use = g_started ? g_workers + 1 : g_threads;
  pthread_mutex_unlock(&g_call_mu);
  return in_use;
}

/* The projections u[B, H], grown to the largest batch seen (calls run one at a time under g_call_mu). */
static float *g_u = NULL;
static int64_t g_u_rows = 0;

/* Each thread's first range of `units`: contiguous shares for the first `parts` threads, none for the rest. */
static void split_units(range_t *ranges, int threads, int parts, uint64_t epoch, int64_t units) {
  for (int i = 0; i < threads; i++) {
    const int64_t first = i < parts ? units * i / parts : units, end = i < parts ? units * (i + 1) / parts : units;
    atomic_store(&ranges[i].word, range_word(epoch, first, end));
  }
}

/* Items (queries, pairs) per unit: 1, or as many as keep the units within a range word's UNIT_MASK. */
static int64_t unit_size(int64_t items) {
  return items > (int64_t)UNIT_MASK ? (items + (int64_t)UNIT_MASK - 1) / (int64_t)UNIT_MASK : 1;
}

/* Logits out[B, K] of queries [B, D]. Returns the number of threads given a share, or -1 if out of memory. */
static int hieramas_score(const model_t *m, const float *query, int64_t batch, float *out) {
  pthread_mutex_lock(&g_call_mu);
  if (batch > g_u_rows) {
    float *grown = aligned_alloc(64, (size_t)((batch * HIDDEN * sizeof(float) + 63) / 64 * 64));
    if (grown == NULL) {
      pthread_mutex_unlock(&g_call_mu);
      return -1;
    }
    free(g_u);
    g_u = grown;
    g_u_rows = batch;
  }
  if (!g_started) start_workers();
  const int threads = g_workers + 1;
  const int64_t pairs = batch * m->num_graphs;
  int parts = threads;
  if (pairs < 2 * (int64_t)parts) parts = pairs > 1 ? (int)(pairs / 2) : 1; /* at least 2 pairs a share */
  const int64_t proj_chunks = batch >= parts ? 1 : HV; /* fewer queries than shares: split their columns */
  const int64_t query_unit_size = unit_size(batch), pair_unit_size = unit_size(pairs);
  const int64_t proj_units = proj_chunks > 1 ? batch * proj_chunks : (batch + query_unit_size - 1) / query_unit_size;
  const int64_t pair_units = (pairs + pair_unit_size - 1) / pair_unit_size;
  const unsigned generation = atomic_load(&g_generation) + 1;
  const uint64_t epoch = generation & EPOCH_MASK;
  /* The job before the ranges that hand out its units: a thread that claims a unit (whatever generation it last
   * saw) reads this job. The last call's ranges are all claimed, so a late worker finds nothing meanwhile. */
  g_job = (job_t){m, query, g_u, out, batch, proj_chunks, query_unit_size, proj_units, pair_unit_size, pair_units};
  atomic_store(&g_proj_done.value, 0);
  atomic_store(&g_pairs_done.value, 0);
  split_units(g_proj_ranges, threads, parts, epoch, proj_units);
  split_units(g_pair_ranges, threads, parts, epoch, pair_units);
  atomic_store(&g_generation, generation);
  if (parts > 1 && atomic_load(&g_sleepers) > 0) {
    /* Sleeping workers are woken, not waited for: until one is up (a futex wake and, on a VM, the host's wake-up
     * of an idle vCPU: 0.1 to 1.5 ms on a 2-core VM, EXPERIMENTS.md 2026-12-04) the caller takes its share. */
    pthread_mutex_lock(&g_sleep_mu);
    pthread_cond_broadcast(&g_wake);
    pthread_mutex_unlock(&g_sleep_mu);
  }
  run_call(0, generation);
  while (atomic_load(&g_pairs_done.value) < pair_units) cpu_relax(); /* units that other threads hold */
  pthread_mutex_unlock(&g_call_mu);
  return parts;
}

/* ------------------------------------------------------------------------------------------------------
 * The entry point Python calls (through ctypes.PyDLL, so with the GIL held): it takes the query and output
 * objects themselves and reads them through the buffer protocol, which costs about 0.5 us for a jax array
 * where converting and staging it in Python cost about 3 us (a tenth of a B=1, K=50 call). Python's C API
 * is reached through pointers bound at load (hieramas_bind_python): the library needs neither Python.h nor
 * libpython to build or load. Py_buffer and the functions used are in the stable ABI (3.11 on).
 * ------------------------------------------------------------------------------------------------------ */
typedef struct {
  void *buf;
  void *obj;
  ptrdiff_t len;
  ptrdiff_t itemsize;
  int readonly;
  int ndim;
  char *format;
  ptrdiff_t *shape;
  ptrdiff_t *strides;
  ptrdiff_t *suboffsets;
  void *internal;
} py_buffer_t;
#define PYBUF_WRITABLE 0x0001
#define PYBUF_FORMAT 0x0004
#define PYBUF_C_CONTIGUOUS 0x0038 /* PyBUF_ND | PyBUF_STRIDES | C order */

static int (*py_get_buffer)(void *, py_buffer_t *, int);
static void (*py_release_buffer)(py_buffer_t *);
static void (*py_err_clear)(void);
static void *(*py_save_thread)(void);
static void (*py_restore_thread)(void *);

void hieramas_bind_python(void *get_buffer, void *release_buffer, void *err_clear, void *save_thread,
                          void *restore_thread) {
  py_get_buffer = (int (*)(void *, py_buffer_t *, int))get_buffer;
  py_release_buffer = (void (*)(py_buffer_t *))release_buffer;
  py_err_clear = (void (*)(void))err_clear;
  py_save_thread = (void *(*)(void))save_thread;
  py_restore_thread = (void (*)(void *))restore_thread;
}

/* A float32 buffer in this machine's byte order ("f", "=f", "@f"; "<f" on a little-endian machine). */
static int is_native_float32(const py_buffer_t *view) {
  const char *f = view->format;
  if (view->itemsize != 4 || f == NULL) return 0;
  if (f[0] == '@' || f[0] == '=') f++;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  else if (f[0] == '<') f++;
#endif
  return f[0] == 'f' && f[1] == '\0';
}

enum { SCORED = 0, NO_FLOAT32_BUFFER = 1, BAD_QUERY_SHAPE = 2, BAD_OUTPUT = 3, OUT_OF_MEMORY = 4 };

/* Scores query_obj [B, D] into out_obj [B, K] (a writable C-contiguous float32 array). Returns SCORED, or
 * NO_FLOAT32_BUFFER when the query has no single C-contiguous float32 buffer (the caller converts it and calls
 * again), or one of the errors above. The GIL is released while the kernel runs. */
int hieramas_score_objects(const model_t *m, void *query_obj, void *out_obj) {
  py_buffer_t query, out;
  if (py_get_buffer(query_obj, &query, PYBUF_C_CONTIGUOUS | PYBUF_FORMAT) != 0) {
    py_err_clear();
    return NO_FLOAT32_BUFFER;
  }
  int status = SCORED;
  if (!is_native_float32(&query)) status = NO_FLOAT32_BUFFER;
  else if (query.ndim != 2 || query.shape[1] != m->query_dim) status = BAD_QUERY_SHAPE;
  if (status != SCORED) {
    py_release_buffer(&query);
    return status;
  }
  if (py_get_buffer(out_obj, &out, PYBUF_C_CONTIGUOUS | PYBUF_FORMAT | PYBUF_WRITABLE) != 0) {
    py_err_clear();
    py_release_buffer(&query);
    return BAD_OUTPUT;
  }
  if (!is_native_float32(&out) || out.ndim != 2 || out.shape[0] != query.shape[0] || out.shape[1] != m->num_graphs) {
    status = BAD_OUTPUT;
  } else {
    void *thread_state = py_save_thread();
    if (hieramas_score(m, query.buf, query.shape[0], out.buf) < 0) status = OUT_OF_MEMORY;
    py_restore_thread(thread_state);
  }
  py_release_buffer(&out);
  py_release_buffer(&query);
  return status;
}

/* The constants this library was built with (native_pool.py checks them against the model). */
void hieramas_shape(int64_t *shape) {
  shape[0] = NUM_ROLES;
  shape[1] = HIDDEN;
  shape[2] = MLP;
  shape[3] = NUM_LAYERS;
  shape[4] = VW;
}

/* Working memory of a call of `batch` queries: each thread's activations (on its stack) and the projections. */
int64_t hieramas_scratch_bytes(int64_t batch) {
  const int64_t threads = g_started ? g_workers + 1 : g_threads;
  return threads * (2 * ROWS_PADDED * HIDDEN + HIDDEN) * (int64_t)sizeof(float) + batch * HIDDEN * (int64_t)sizeof(float);
}
